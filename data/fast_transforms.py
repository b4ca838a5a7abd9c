"""The fast decode path (``data.pipeline=fast``): reduced-size JPEG decode, then one crop-and-resize, uint8 out.

Measured on 2 cores (bench/data_pipeline.py), torchvision's RandomResizedCrop + flip + ToTensor + Normalize on PIL
spends more time after decoding a 500x375 JPEG than decoding it. This path removes most of that work while
keeping the augmentation's semantics (the same crop distribution, the same antialiased bilinear resize):

* the crop box is drawn from the image header (``RandomResizedCrop.get_params`` needs only the size), so
  when the box is at least twice the output size libjpeg-turbo decodes at 1/2, 1/4 or 1/8 scale (DCT scaling,
  through simplejpeg, the fastest JPEG decoder measured here) and the resize has less to shrink;
* crop and resize are one antialiased ``torch.nn.functional.interpolate`` on the uint8 pixels, PyTorch's
  vectorised port of PIL's resize algorithm (from pillow-simd), about 3x faster than stock Pillow's;
* images leave the worker as uint8 tensors: a quarter of the float bytes through shared memory and to the GPU,
  and ``NormalizeBatch`` converts and normalises them on the training device.

Where the normalisation runs is a Composer hook choice (``composer/trainer/trainer.py``, 0.32.1). Per training
batch: ``batch_transforms`` (l. 2440), ``Event.AFTER_DATALOADER`` (l. 2444), ``split_batch`` into microbatches
(l. 2674), then per microbatch ``batch_to_device`` and ``microbatch_transforms`` (l. 2846-2847) and
``Event.BEFORE_FORWARD``; evaluation runs the same order (l. 3387-3414). ``NormalizeBatch`` is the loaders'
``microbatch_transforms``, so the uint8 batch is what Composer splits and copies to the device, and each
microbatch is turned into floats there, just before the forward pass. What the recipe's algorithms see:

* MixUp and CutMix act at ``BEFORE_FORWARD`` (``mixup.py`` ``match``, ``cutmix.py`` ``match``), after
  ``microbatch_transforms``: they mix normalised floats on the device, as they do with the torchvision pipeline;
* ColOut (``batch=True``) and Composer's ProgressiveResizing act at ``AFTER_DATALOADER``, on the uint8 batch
  still on the CPU. Both only select pixels: ColOut drops rows and columns by index, ProgressiveResizing crops
  or resizes with ``mode='nearest'`` (``progressive_resizing.py`` ``_make_resize``), and selecting pixels
  commutes with a per-pixel, per-channel affine normalisation, so the normalised inputs are the same values as
  normalising first; the smaller batch is also what crosses to the GPU;
* ``data_progressive_resizing`` sets the crop size in the workers, ChannelsLast converts the model at ``INIT``,
  RandAugment runs in the dataset: none of them sees the batch.

Normalising in ``batch_transforms`` instead would hand ``AFTER_DATALOADER`` floats, but copy four times the
bytes to the GPU, or (moving the batch there itself first, as this project once did) convert the whole batch
before Composer splits it and run ColOut and ProgressiveResizing on four times the bytes. After the
microbatches Composer puts the whole batch back in ``state.batch`` (l. 2859), so at ``AFTER_TRAIN_BATCH`` and
``BATCH_END`` it holds the uint8 images, which cannot be NaN or infinite.

Composer's RandAugment, which inserts itself before ``ToTensor``, still works: ``ToUint8Tensor`` (a ``ToTensor``)
turns what it returns back into uint8.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as functional
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as tv_functional

from data.bad_images import ImageDecodeError

# np.asarray(PIL image) is a read-only view of a bytes copy; it is only read from (interpolate writes a new tensor).
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

# torch's antialiased uint8 resize kernels for the recipe's interpolation names (PIL NEAREST samples pixel
# centres, which is torch's "nearest-exact").
TORCH_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}
# libjpeg's DCT scaling offers 1/2, 1/4 and 1/8.
DRAFT_FACTORS = (8, 4, 2)


class SharedResolution:
    """An output size shared between the main process and the DataLoader workers, persistent ones included.

    The value lives in shared memory (a torch tensor moved there), so an algorithm in the main process can change
    it between epochs and workers started earlier read the new value on their next image.
    """

    def __init__(self, pixels: int) -> None:
        self._value = torch.tensor([pixels], dtype=torch.int32).share_memory_()

    def get(self) -> int:
        """The current side length in pixels."""
        return int(self._value[0])

    def set(self, pixels: int) -> None:
        """Change the side length for every image produced from now on."""
        if pixels < 1:
            raise ValueError(f"a resolution must be at least 1 pixel, not {pixels}")
        self._value[0] = pixels

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get()})"


def draft_factor(box_width: float, box_height: float, output: int) -> int:
    """The largest DCT scale-down (8, 4, 2 or 1) that still leaves the crop box at least ``output`` pixels."""
    for factor in DRAFT_FACTORS:
        if box_width >= output * factor and box_height >= output * factor:
            return factor
    return 1


def decode_reduced(image: Image.Image, factor: int) -> tuple[torch.Tensor, float, float]:
    """Decode ``image`` to RGB pixels (CHW uint8), at 1/``factor`` scale when it is a not-yet-decoded JPEG.

    JPEGs are decoded by libjpeg-turbo through simplejpeg, with DCT scaling for ``factor`` > 1: the fastest
    decoder measured, at full and at reduced scale (bench/data_pipeline.py). PIL decodes every other format and
    any JPEG simplejpeg declines (CMYK, corrupt or truncated data), with its own DCT scaling (``draft``). Returns
    the pixels and the x and y scales applied (libjpeg rounds sizes up). Failures become ``ImageDecodeError``, so
    the dataset can tell a bad file from a bug in a transform.
    """
    width, height = image.size
    try:
        if image.format == "JPEG" and image.tile:
            if (pixels := _decode_jpeg_turbo(image, factor)) is not None:
                return pixels, pixels.shape[2] / width, pixels.shape[1] / height
            if factor > 1:
                image.draft("RGB", (width // factor, height // factor))
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(str(error)) from error
    return pixels, pixels.shape[2] / width, pixels.shape[1] / height


def _decode_jpeg_turbo(image: Image.Image, factor: int) -> torch.Tensor | None:
    """The JPEG behind a lazily opened PIL image, decoded at 1/``factor`` scale by simplejpeg (a CHW view of HWC
    pixels); None where it declines (CMYK, corrupt or truncated data), so PIL decodes it or names the error."""
    source = getattr(image, "fp", None)
    if source is None:
        return None
    source.seek(0)
    encoded = source.read()
    source.seek(0)
    width, height = image.size
    try:
        pixels = simplejpeg.decode_jpeg(
            encoded,
            colorspace="RGB",
            min_factor=factor,
            min_width=width // factor,
            min_height=height // factor,
        )
    except ValueError:
        return None
    return torch.from_numpy(pixels).permute(2, 0, 1)


def crop_resize(
    pixels: torch.Tensor, box: tuple[float, float, float, float], size: tuple[int, int], mode: str
) -> torch.Tensor:
    """Crop ``box`` (left, top, width, height in ``pixels`` coordinates) and resize it to ``size`` (h, w)."""
    height, width = pixels.shape[1:]
    left = min(max(round(box[0]), 0), width - 1)
    top = min(max(round(box[1]), 0), height - 1)
    right = min(max(round(box[0] + box[2]), left + 1), width)
    bottom = min(max(round(box[1] + box[3]), top + 1), height)
    # Channels-last (HWC) input takes PyTorch's vectorised uint8 kernel (5-15 % faster than the planar one, copy
    # of the crop included); the result is a CHW view of HWC memory, which collation stacks like any tensor.
    crop = pixels[:, top:bottom, left:right].unsqueeze(0).contiguous(memory_format=torch.channels_last)
    antialias = mode != "nearest-exact"
    return functional.interpolate(crop, size=size, mode=mode, antialias=antialias)[0]


class DecodeRandomResizedCrop:
    """torchvision's RandomResizedCrop, drawn from the header and decoded at the smallest sufficient scale.

    Takes a PIL image opened but not yet decoded (``Image.open``), returns the resized RGB crop as a CHW uint8
    tensor.
    ``resolution`` is a ``SharedResolution`` so data-side progressive resizing can change it between epochs.
    """

    def __init__(
        self,
        resolution: SharedResolution,
        scale: Sequence[float],
        ratio: Sequence[float],
        interpolation: str = "bilinear",
    ) -> None:
        self.resolution = resolution
        self.scale = [float(s) for s in scale]
        self.ratio = [float(r) for r in ratio]
        self.interpolation = interpolation
        self.mode = TORCH_MODES[interpolation]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        output = self.resolution.get()
        top, left, height, width = transforms.RandomResizedCrop.get_params(image, self.scale, self.ratio)
        pixels, scale_x, scale_y = decode_reduced(image, draft_factor(width, height, output))
        box = (left * scale_x, top * scale_y, width * scale_x, height * scale_y)
        return crop_resize(pixels, box, (output, output), self.mode)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.resolution.get()}, scale={self.scale}, ratio={self.ratio}, "
            f"interpolation={self.interpolation})"
        )


class DecodeCenterCrop:
    """torchvision's Resize(resolution / crop_ratio) + CenterCrop(resolution), on the fast decode path.

    The steps are torchvision's own (resize the whole image so its short side is ``round(resolution /
    crop_ratio)``, then take the central square with torchvision's rounding), so reported accuracy is comparable
    with torchvision-based evaluation; only the decoder (reduced scale when the short side is at least twice the
    resized one) and the resize kernel (PyTorch's port of PIL's) differ.
    """

    def __init__(self, resolution: int, crop_ratio: float, interpolation: str = "bilinear") -> None:
        self.resolution = resolution
        self.crop_ratio = crop_ratio
        self.interpolation = interpolation
        self.mode = TORCH_MODES[interpolation]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        short = round(self.resolution / self.crop_ratio)
        # torchvision's _compute_resized_output_size: the long side is truncated, not rounded.
        if width <= height:
            size = (int(short * height / width), short)
        else:
            size = (short, int(short * width / height))
        pixels, _, _ = decode_reduced(image, draft_factor(min(width, height), min(width, height), short))
        resized = crop_resize(pixels, (0, 0, pixels.shape[2], pixels.shape[1]), size, self.mode)
        top = round((size[0] - self.resolution) / 2.0)
        left = round((size[1] - self.resolution) / 2.0)
        return resized[:, top : top + self.resolution, left : left + self.resolution].contiguous()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.resolution}, crop_ratio={self.crop_ratio}, "
            f"interpolation={self.interpolation})"
        )


class ToUint8Tensor(transforms.ToTensor):
    """The image as a CHW uint8 tensor, not scaled to floats (``NormalizeBatch`` does that per batch).

    It subclasses ``ToTensor`` only so that Composer's ``add_vision_dataset_transform`` (used by RandAugment)
    finds the tensor boundary and inserts PIL augmentations before it. Those hand back a PIL image or, given a
    tensor, a float tensor in [0, 1] (Composer's ``image_as_type``); both come out as uint8 again.
    """

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            return tv_functional.pil_to_tensor(image.convert("RGB") if image.mode != "RGB" else image)
        if image.dtype == torch.uint8:
            return image
        return image.mul(255).round_().clamp_(0, 255).to(torch.uint8)


class NormalizeBatch:
    """A Composer ``microbatch_transforms`` step: uint8 images to normalised floats, where the batch already is.

    Composer has moved the microbatch to the training device before calling it (why this hook: the module
    docstring), so the conversion runs on the GPU. Images are ``(B, 3, H, W)``, or ``(B, 2, 3, H, W)`` for the
    two views of a contrastive run (``data.two_views``): the channel axis is third from the end in both. Float
    images (the torchvision pipeline, normalised in the workers) pass through unchanged.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = [float(m) * 255 for m in mean]
        self.std = [float(s) * 255 for s in std]

    def __call__(self, batch: Any) -> Any:
        images, targets = batch
        if images.dtype != torch.uint8:  # already floats (the torchvision pipeline): nothing to do
            return batch
        mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
        return images.float().sub_(mean).div_(std), targets


def input_resolution(dataset: Any) -> SharedResolution | None:
    """The ``SharedResolution`` a dataset's train transform reads, or None (the torchvision pipeline).

    The transform is a ``Compose`` holding a ``DecodeRandomResizedCrop`` (supervised) or is itself the
    ``data.two_views.TwoViews`` of a contrastive run; either holds it as ``resolution``. Found by that
    attribute, because ``data.two_views`` builds on this module and cannot be imported here.
    """
    transform = getattr(dataset, "transform", None)
    for step in getattr(transform, "transforms", [transform]):
        if isinstance(resolution := getattr(step, "resolution", None), SharedResolution):
            return resolution
    return None
