"""The two augmented views of each image a MoCo v3 run trains on, both from one decode (``task: moco_v3``).

The augmentations are BYOL's asymmetric pair as facebookresearch/moco-v3 builds them (``main_moco.py``
``augmentation1`` / ``augmentation2`` and ``moco/loader.py``, commit c349e6e), per view and in this order:

1. ``RandomResizedCrop(224, scale=(crop_min, 1.))`` (here ``data.two_views.crop_scale``, ``data.crop_ratio``,
   ``data.interpolation`` at the current ``data.train_resolution``);
2. ``RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)``: brightness, contrast, saturation and hue factors
   drawn as torchvision's ``ColorJitter.get_params`` draws them, applied in its random order;
3. ``RandomGrayscale(p=0.2)`` (three equal channels);
4. ``RandomApply([GaussianBlur([.1, 2.])], p=1.0)`` for view 1, ``p=0.1`` for view 2. The official blur is
   PIL's ``ImageFilter.GaussianBlur(radius=sigma)``, ``sigma ~ U(0.1, 2.0)``, whose radius is the standard
   deviation in pixels of the 224 px crop and which has no kernel size; here a Gaussian kernel of that sigma,
   scaled by the output size / 224 (a 112 px crop of the same content gets half the sigma, so progressive
   resizing does not strengthen the blur), truncated at 3 sigma (``2 * ceil(3 sigma) + 1`` taps, at most
   ``2 * size - 1``, the widest reflect padding allows);
5. view 2 only: ``RandomApply([Solarize()], p=0.2)``, PIL's ``ImageOps.solarize`` default threshold 128: every
   value >= 128 of 255 becomes 255 - value;
6. ``RandomHorizontalFlip()``.

What differs from the official PIL pipeline, and why it does not change the distribution:

* one decode serves both views: both crop boxes are drawn from the image header first (``get_params`` needs
  only the size), and the JPEG is decoded once at the largest DCT scale-down that leaves *both* boxes at least
  the output size (``data.fast_transforms.draft_factor`` for each, the smaller factor kept), so each crop is
  resized from at least as many pixels as the supervised fast path would use for it alone;
* crop and resize are ``data.fast_transforms.crop_resize`` (antialiased ``interpolate`` on uint8), the colour
  steps run on float32 pixels in [0, 1] with ``torchvision.transforms.v2.functional`` and are rounded back to
  uint8 once at the end (PIL rounds after every step; torchvision's uint8 kernels truncate after every step);
* every random draw comes from torch's CPU generator, which ``data.samples.LabelledImages`` seeds per sample
  from (seed, epoch, index) (``data.resumable_sampler``): a sample's two views are the same after an exact
  resume, whatever the worker count, and differ from epoch to epoch.

The output is one ``(2, 3, size, size)`` uint8 tensor, (view 1, view 2); a batch of them is ``(B, 2, 3, H, W)``,
which ``data.fast_transforms.NormalizeBatch`` normalises on the training device. ``resolution`` is the
``SharedResolution`` that ``data.fast_transforms.input_resolution`` and data-side progressive resizing find.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms.v2 import functional as v2_functional

from data.fast_transforms import TORCH_MODES, SharedResolution, crop_resize, decode_reduced, draft_factor
from recipes.errors import UsageError

# PIL's ImageOps.solarize default threshold (of 255), on pixels scaled to [0, 1].
SOLARIZE_THRESHOLD = 128 / 255
# The official blur sigmas are pixels of a 224 px crop.
REFERENCE_RESOLUTION = 224


class TwoViews:
    """Decode once, crop twice, augment each crop as its view asks: a ``(2, 3, size, size)`` uint8 tensor.

    Takes a PIL image opened but not yet decoded (``Image.open``) or an in-memory one (digits, synthetic).
    ``views`` is the recipe's ``data.two_views`` section (``recipes.schema.TwoViewsConfig``); values are copied,
    so the transform pickles to DataLoader workers without the recipe.
    """

    def __init__(
        self,
        resolution: SharedResolution,
        views: Any,
        ratio: Sequence[float],
        interpolation: str = "bilinear",
    ) -> None:
        check_two_view_settings(views)
        self.resolution = resolution
        self.scale = [float(s) for s in views.crop_scale]
        self.ratio = [float(r) for r in ratio]
        self.interpolation = interpolation
        self.mode = TORCH_MODES[interpolation]
        # torchvision's ColorJitter turns (0.4, 0.4, 0.2, 0.1) into its factor ranges ([0.6, 1.4], ...,
        # [-0.1, 0.1]; None for a 0); its get_params draws from them.
        jitter = transforms.ColorJitter(*[float(value) for value in views.color_jitter])
        self.jitter_ranges = (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
        self.color_jitter_p = float(views.color_jitter_p)
        self.grayscale_p = float(views.grayscale_p)
        self.blur_p = [float(p) for p in views.blur_p]
        self.blur_sigma = [float(s) for s in views.blur_sigma]
        self.solarize_p = [float(p) for p in views.solarize_p]
        self.horizontal_flip = bool(views.horizontal_flip)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        output = self.resolution.get()
        boxes = [transforms.RandomResizedCrop.get_params(image, self.scale, self.ratio) for _ in range(2)]
        factor = min(draft_factor(width, height, output) for _, _, height, width in boxes)
        pixels, scale_x, scale_y = decode_reduced(image, factor)
        views = []
        for view, (top, left, height, width) in enumerate(boxes):
            box = (left * scale_x, top * scale_y, width * scale_x, height * scale_y)
            views.append(self.augment(crop_resize(pixels, box, (output, output), self.mode), view))
        return torch.stack(views)

    def augment(self, crop: torch.Tensor, view: int) -> torch.Tensor:
        """One view's colour, blur, solarize and flip steps (``view`` 0 or 1) on a CHW uint8 crop."""
        pixels = v2_functional.to_dtype(crop, torch.float32, scale=True)
        if _chance(self.color_jitter_p):
            pixels = self._jitter(pixels)
        if _chance(self.grayscale_p):
            pixels = v2_functional.rgb_to_grayscale(pixels, num_output_channels=3)
        if _chance(self.blur_p[view]):
            low, high = self.blur_sigma
            sigma = float(torch.empty(()).uniform_(low, high)) * pixels.shape[-1] / REFERENCE_RESOLUTION
            kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * min(pixels.shape[-2:]) - 1)
            # One pass per axis: the same Gaussian (it is separable, reflect padding too) as torchvision's
            # 2-D kernel to float rounding, 2.4x faster at sigma 2 (13 taps) on one core.
            pixels = v2_functional.gaussian_blur(pixels, [kernel, 1], [sigma, sigma])
            pixels = v2_functional.gaussian_blur(pixels, [1, kernel], [sigma, sigma])
        if _chance(self.solarize_p[view]):
            pixels = v2_functional.solarize(pixels, threshold=SOLARIZE_THRESHOLD)
        if self.horizontal_flip and _chance(0.5):
            pixels = v2_functional.horizontal_flip(pixels)
        return pixels.mul(255).round_().clamp_(0, 255).to(torch.uint8)

    def _jitter(self, pixels: torch.Tensor) -> torch.Tensor:
        """torchvision's ColorJitter: the four adjustments in a random order, each with a random factor."""
        order, brightness, contrast, saturation, hue = transforms.ColorJitter.get_params(*self.jitter_ranges)
        for step in order.tolist():
            if step == 0 and brightness is not None:
                pixels = v2_functional.adjust_brightness(pixels, brightness)
            elif step == 1 and contrast is not None:
                pixels = v2_functional.adjust_contrast(pixels, contrast)
            elif step == 2 and saturation is not None:
                pixels = v2_functional.adjust_saturation(pixels, saturation)
            elif step == 3 and hue is not None:
                pixels = v2_functional.adjust_hue(pixels, hue)
        return pixels

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.resolution.get()}, scale={self.scale}, ratio={self.ratio}, "
            f"interpolation={self.interpolation}, blur_p={self.blur_p}, solarize_p={self.solarize_p})"
        )


def _chance(probability: float) -> bool:
    """True with ``probability`` (one draw from torch's generator, as torchvision's RandomApply makes)."""
    return bool(torch.rand(()) < probability)


def check_two_view_settings(views: Any) -> None:
    """Reject ``data.two_views`` values that would fail inside a worker or silently mean something else."""
    low, high = _numbers(views, "crop_scale", 2)
    if not 0 < low <= high <= 1:
        raise UsageError(
            f"data.two_views.crop_scale={[low, high]} must be two area fractions with 0 < min <= max <= 1 "
            "(MoCo v3 uses [0.08, 1.0]; its documented runs [0.2, 1.0])."
        )
    jitter = _numbers(views, "color_jitter", 4)
    if min(jitter) < 0 or jitter[3] > 0.5:
        raise UsageError(
            f"data.two_views.color_jitter={jitter} must be brightness, contrast, saturation >= 0 and a hue in "
            "[0, 0.5] (MoCo v3: [0.4, 0.4, 0.2, 0.1])."
        )
    for key in ("color_jitter_p", "grayscale_p"):
        if not 0 <= (value := float(getattr(views, key))) <= 1:
            raise UsageError(f"data.two_views.{key}={value} must be a probability in [0, 1].")
    for key in ("blur_p", "solarize_p"):
        values = _numbers(views, key, 2)
        if not all(0 <= value <= 1 for value in values):
            raise UsageError(
                f"data.two_views.{key}={values} must be two probabilities in [0, 1] (view 1, view 2)."
            )
    low, high = _numbers(views, "blur_sigma", 2)
    if not 0 < low <= high:
        raise UsageError(
            f"data.two_views.blur_sigma={[low, high]} must be two blur widths in pixels at 224 px with "
            "0 < min <= max (MoCo v3: [0.1, 2.0])."
        )


def _numbers(views: Any, key: str, count: int) -> list[float]:
    """A list setting of ``count`` numbers."""
    values = [float(value) for value in getattr(views, key)]
    if len(values) != count:
        raise UsageError(f"data.two_views.{key} must be {count} numbers, not {values}.")
    return values
