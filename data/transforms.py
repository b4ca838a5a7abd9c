"""Train and eval transform presets, as in torchvision's references/classification/presets.py.

Both presets are a ``torchvision.transforms.Compose`` holding a ``ToTensor``: Composer's RandAugment (and other
PIL augmentations) insert themselves just before ``ToTensor`` (``composer.utils.add_vision_dataset_transform``).
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from recipes.errors import UsageError

INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


class ToRGB:
    """Any PIL mode (greyscale, CMYK, palette) to RGB: ImageNet holds a few greyscale and CMYK JPEGs."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def eval_resize_size(resolution: int, crop_ratio: float) -> int:
    """Short side before the center crop: 224 / 0.875 = 256, the classic ImageNet eval resize."""
    return round(resolution / crop_ratio)


def train_transform(data: Any) -> transforms.Compose:
    """RandomResizedCrop (+ flip), then tensor and normalisation."""
    check_transform_settings(data)
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


def eval_transform(data: Any) -> transforms.Compose:
    """Resize the short side to resolution / eval_crop_ratio, center-crop the resolution, tensor, normalise."""
    check_transform_settings(data)
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
