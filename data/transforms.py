"""Train and eval transform presets, as in torchvision's references/classification/presets.py.

``data.pipeline`` picks one of two presets with the same augmentation semantics:

* ``fast`` (``data.fast_transforms``): reduced-size JPEG decode, one crop-and-resize, uint8 tensors out, and
  ``microbatch_transform`` normalises each microbatch on the training device;
* ``torchvision``: torchvision's RandomResizedCrop / Resize + CenterCrop, ToTensor and Normalize on the CPU.

A contrastive run (``task: moco_v3``) trains on two views of each image instead (``data.two_views.TwoViews``),
on the fast decode path only.

Every preset is a ``torchvision.transforms.Compose`` holding a ``ToTensor`` (or a subclass): Composer's RandAugment
(and other PIL augmentations) insert themselves just before it (``composer.utils.add_vision_dataset_transform``).
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from data.bad_images import DECODE_ERRORS, ImageDecodeError
from data.fast_transforms import (
    DecodeCenterCrop,
    DecodeRandomResizedCrop,
    NormalizeBatch,
    SharedResolution,
    ToUint8Tensor,
)
from data.two_views import TwoViews
from recipes.errors import UsageError

INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


class ToRGB:
    """Decode, and any PIL mode (greyscale, CMYK, palette) to RGB: ImageNet holds greyscale and CMYK JPEGs."""

    def __call__(self, image: Image.Image) -> Image.Image:
        try:
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")
        except DECODE_ERRORS as error:
            raise ImageDecodeError(str(error)) from error

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def eval_resize_size(resolution: int, crop_ratio: float) -> int:
    """Short side before the center crop: 224 / 0.875 = 256, the classic ImageNet eval resize."""
    return round(resolution / crop_ratio)


def train_transform(data: Any, task: str = "supervised") -> transforms.Compose | TwoViews:
    """RandomResizedCrop (+ flip), then a tensor (uint8 for the fast pipeline, normalised floats otherwise); for
    ``task`` moco_v3 the two augmented views of each image, one ``(2, 3, H, W)`` uint8 tensor."""
    check_transform_settings(data)
    if task == "moco_v3":
        return two_view_transform(data)
    if data.pipeline == "fast":
        fast_steps: list[Any] = [
            DecodeRandomResizedCrop(
                SharedResolution(data.train_resolution), data.crop_scale, data.crop_ratio, data.interpolation
            )
        ]
        if data.horizontal_flip:
            fast_steps.append(transforms.RandomHorizontalFlip())
        return transforms.Compose([*fast_steps, ToUint8Tensor()])
    steps: list[Any] = [
        ToRGB(),
        transforms.RandomResizedCrop(
            data.train_resolution,
            scale=tuple(data.crop_scale),
            ratio=tuple(data.crop_ratio),
            interpolation=INTERPOLATIONS[data.interpolation],
            antialias=True,
        ),
    ]
    if data.horizontal_flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(list(data.mean), list(data.std))]
    return transforms.Compose(steps)


def two_view_transform(data: Any) -> TwoViews:
    """MoCo v3's two views (``data.two_views``) at ``data.train_resolution``, decoded once on the fast path.

    Only the fast pipeline: every data source works with it, and a PIL copy of the two-view augmentations for
    ``data.pipeline=torchvision`` would be a second implementation of every step to keep in step, whose float
    pairs would also cross shared memory and go to the device at four times the bytes.
    """
    if data.pipeline != "fast":
        raise UsageError(
            f"data.pipeline={data.pipeline} cannot build the two views of task=moco_v3: they are built on the "
            "fast decode path only. Set data.pipeline=fast (every data.source works with it)."
        )
    return TwoViews(
        SharedResolution(data.train_resolution), data.two_views, data.crop_ratio, data.interpolation
    )


def eval_transform(data: Any) -> transforms.Compose:
    """Resize the short side to resolution / eval_crop_ratio, center-crop the resolution, tensor (normalised)."""
    check_transform_settings(data)
    if data.pipeline == "fast":
        crop = DecodeCenterCrop(data.eval_resolution, data.eval_crop_ratio, data.interpolation)
        return transforms.Compose([crop, ToUint8Tensor()])
    return transforms.Compose(
        [
            ToRGB(),
            transforms.Resize(
                eval_resize_size(data.eval_resolution, data.eval_crop_ratio),
                interpolation=INTERPOLATIONS[data.interpolation],
                antialias=True,
            ),
            transforms.CenterCrop(data.eval_resolution),
            transforms.ToTensor(),
            transforms.Normalize(list(data.mean), list(data.std)),
        ]
    )


def microbatch_transform(data: Any) -> NormalizeBatch:
    """Composer ``microbatch_transforms`` for both loaders: the fast pipeline's uint8 images normalised on the
    device, after Composer has split the batch and moved it there (``data.fast_transforms`` says why there)."""
    return NormalizeBatch(data.mean, data.std)


def check_transform_settings(data: Any) -> None:
    """Reject settings torchvision would accept silently or fail on much later, inside a worker."""
    for key in ("train_resolution", "eval_resolution"):
        if (resolution := getattr(data, key)) < 1:
            raise UsageError(f"data.{key} must be a positive number of pixels, not {resolution}.")
    low, high = _pair(data, "crop_scale")
    if not 0 < low <= high <= 1:
        raise UsageError(
            f"data.crop_scale={[low, high]} must be two area fractions with 0 < min <= max <= 1."
        )
    low, high = _pair(data, "crop_ratio")
    if not 0 < low <= high:
        raise UsageError(f"data.crop_ratio={[low, high]} must be two aspect ratios with 0 < min <= max.")
    if not 0 < data.eval_crop_ratio <= 1:
        raise UsageError(
            f"data.eval_crop_ratio={data.eval_crop_ratio} must be in (0, 1]; 0.875 is the usual."
        )
    if data.interpolation not in INTERPOLATIONS:
        raise UsageError(
            f"data.interpolation={data.interpolation} is not one of {', '.join(INTERPOLATIONS)}."
        )
    for key in ("mean", "std"):
        if len(values := list(getattr(data, key))) != 3:
            raise UsageError(f"data.{key} needs one value per RGB channel (3), not {values}.")
    if min(data.std) <= 0:
        raise UsageError(f"data.std={list(data.std)} must be positive: images are divided by it.")


def _pair(data: Any, key: str) -> tuple[float, float]:
    """A two-number [min, max] setting."""
    values = list(getattr(data, key))
    if len(values) != 2:
        raise UsageError(f"data.{key} must be two numbers [min, max], not {values}.")
    return float(values[0]), float(values[1])
