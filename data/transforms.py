"""Train and eval transform presets, as in torchvision's references/classification/presets.py.

``data.pipeline`` picks one of two presets with the same augmentation semantics:

* ``fast`` (``data.fast_transforms``): reduced-size JPEG decode, one crop-and-resize, uint8 tensors out, and
  ``microbatch_transform`` normalises each microbatch on the training device;
* ``torchvision``: torchvision's RandomResizedCrop / Resize + CenterCrop, ToTensor and Normalize on the CPU.

A contrastive run (``task: moco_v3``) trains on two views of each image instead (``data.two_views.TwoViews``),
on the fast decode path only.

Every preset is a ``torchvision.transforms.Compose`` holding a ``ToTensor`` (or a subclass): Composer's RandAugment
(and other PIL augmentations) insert themselves just before it (``composer.utils.add_vision_dataset_transform``).

The recipe's own augmentations (``data.color_jitter``, ``data.auto_augment``, ``data.random_erasing``) are
torchvision's transforms, in the places torchvision's references/classification/presets.py puts them
(``ClassificationPresetTrain``, pytorch/vision commit 080836e): the policy after crop and flip, on the image before
``PILToTensor``, with the recipe's interpolation; RandomErasing last, on the normalised floats (value 0). ColorJitter,
which the reference lacks, follows the policy, as timm's ``transforms_imagenet_train`` orders the two. Both
pipelines use the same transform objects, so they draw the same ops and magnitudes from the same torch generator
(seeded per sample, ``data.resumable_sampler``); the fast path runs them in the worker after its crop-and-resize
(``fast_augmentations``, ``fast_erasing`` say how).
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
# torchvision references/classification's --auto-augment names (presets.py, without augmix), each a builder taking
# the interpolation and data.ra_magnitude.
AUTO_AUGMENT_POLICIES = {
    "ta_wide": lambda interpolation, _: transforms.TrivialAugmentWide(interpolation=interpolation),
    "ra": lambda interpolation, magnitude: transforms.RandAugment(
        interpolation=interpolation, magnitude=magnitude
    ),
    **{
        policy.value: lambda interpolation, _, policy=policy: transforms.AutoAugment(policy, interpolation)
        for policy in transforms.AutoAugmentPolicy
    },
}
# RandAugment's magnitude indexes 31 bins (torchvision's num_magnitude_bins default).
RA_MAGNITUDES = range(31)
# data.auto_augment names starting so are timm's RandAugment strings (``rand-m6-mstd0.5-inc1``, ResNet strikes back).
TIMM_RAND_AUGMENT = "rand"


def auto_augment_policy(data: Any, interpolation: InterpolationMode) -> Any:
    """``data.auto_augment``'s policy: torchvision's by name, or timm's RandAugment from its config string.

    timm's is built as its ``transforms_imagenet_train`` builds it: translations up to 45 % of the training
    resolution, fills in the mean colour, warps with the recipe's interpolation. Its ops draw from Python's
    ``random``, which the per-sample seed covers as it covers torch's (``data.resumable_sampler.seeded``).
    """
    name = str(data.auto_augment)
    if not name.startswith(TIMM_RAND_AUGMENT):
        return AUTO_AUGMENT_POLICIES[name](interpolation, data.ra_magnitude)
    from timm.data.auto_augment import rand_augment_transform  # timm loads only for its own policies

    hparams = {
        "translate_const": int(data.train_resolution * 0.45),
        "img_mean": tuple(min(255, round(255 * float(mean))) for mean in data.mean),
        "interpolation": _PIL_INTERPOLATIONS[str(data.interpolation)],
    }
    return rand_augment_transform(name, hparams)


_PIL_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
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
        return transforms.Compose(
            [*fast_steps, *fast_augmentations(data), ToUint8Tensor(), *fast_erasing(data)]
        )
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
    steps += augmentations(data, INTERPOLATIONS[data.interpolation])
    steps += [transforms.ToTensor(), transforms.Normalize(list(data.mean), list(data.std))]
    if data.random_erasing > 0:
        steps.append(transforms.RandomErasing(p=data.random_erasing, value=0))
    return transforms.Compose(steps)


def augmentations(data: Any, interpolation: InterpolationMode) -> list[Any]:
    """The recipe's auto-augment policy, then its ColorJitter: torchvision's transforms, for PIL or uint8 images."""
    steps: list[Any] = []
    if data.auto_augment is not None:
        steps.append(auto_augment_policy(data, interpolation))
    if data.color_jitter is not None:
        steps.append(transforms.ColorJitter(*[float(value) for value in data.color_jitter]))
    return steps


def fast_augmentations(data: Any) -> list[Any]:
    """``augmentations`` for the fast path's uint8 CHW crops (after the crop-and-resize, in the worker).

    An auto-augment policy runs on a PIL image of the crop (``ToPILImage``, one copy of the channels-last
    pixels), and ``ToUint8Tensor`` turns the result back into uint8: measured at 224 px on one thread,
    TrivialAugmentWide takes 1.5 ms that way, round trip included, against 3.1 ms on the uint8 tensor (v2: 2.4 ms),
    because PIL's warps, sharpness, solarize and equalize are several times faster than the tensor kernels. The
    policy then also runs PIL's kernels, as torchvision's pipeline and reference do, and warps with the recipe's
    interpolation (tensor warps have no bicubic). ColorJitter takes whatever the step before hands it (a
    tensor without a policy: torchvision's tensor and PIL jitter cost the same).
    """
    steps = augmentations(data, INTERPOLATIONS[data.interpolation])
    if data.auto_augment is not None:
        steps.insert(0, transforms.ToPILImage())
    return steps


def fast_erasing(data: Any) -> list[Any]:
    """torchvision's RandomErasing on the fast path's uint8 images, after every other step, filled with the mean.

    The reference erases the normalised floats to 0, and ``(round(255 * mean) - 255 * mean) / (255 * std)`` is
    within 0.01 of 0, so filling with the mean in uint8 gives the model the same input up to uint8 rounding. It
    runs in the worker, not on the device after ``NormalizeBatch``: there its draws would come from the training
    process's RNG, not from the sample's seed, and a resumed or streamed run would erase other boxes. It follows
    ``ToUint8Tensor`` so Composer's RandAugment, which inserts itself before that, cannot recolour the box.
    """
    if data.random_erasing == 0:
        return []
    fill = [round(255 * float(mean)) for mean in data.mean]
    return [transforms.RandomErasing(p=data.random_erasing, value=fill)]


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
    check_augmentation_settings(data)


def check_augmentation_settings(data: Any) -> None:
    """Reject ``data.color_jitter``, ``data.auto_augment``, ``data.ra_magnitude`` and ``data.random_erasing``
    values torchvision (or timm) would refuse only inside a worker, or take to mean something else."""
    if data.color_jitter is not None:
        jitter = [float(value) for value in data.color_jitter]
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise UsageError(
                f"data.color_jitter={jitter} must be four numbers: brightness, contrast, saturation >= 0 and a "
                "hue in [0, 0.5] (e.g. [0.4, 0.4, 0.4, 0.0]), or null for none."
            )
    if data.auto_augment is not None and str(data.auto_augment).startswith(TIMM_RAND_AUGMENT):
        _check_timm_rand_augment(data)
    elif data.auto_augment is not None and data.auto_augment not in AUTO_AUGMENT_POLICIES:
        raise UsageError(
            f"data.auto_augment={data.auto_augment} is not one of {', '.join(AUTO_AUGMENT_POLICIES)} "
            "(torchvision references/classification's --auto-augment names), a timm RandAugment string such as "
            "rand-m9-mstd0.5-inc1, or null for none."
        )
    if data.ra_magnitude not in RA_MAGNITUDES:
        raise UsageError(
            f"data.ra_magnitude={data.ra_magnitude} must be an integer from 0 to 30 (RandAugment's 31 magnitude "
            "bins; torchvision's reference uses 9)."
        )
    if not 0 <= data.random_erasing <= 1:
        raise UsageError(
            f"data.random_erasing={data.random_erasing} must be a probability in [0, 1] (0: off; torchvision's "
            "recipes use 0.1 or 0.25)."
        )


def _check_timm_rand_augment(data: Any) -> None:
    """Build timm's RandAugment once up front: timm asserts on a section it does not know, inside a worker."""
    try:
        auto_augment_policy(data, INTERPOLATIONS[data.interpolation])
    except (AssertionError, ValueError, KeyError) as error:
        raise UsageError(
            f"data.auto_augment={data.auto_augment} is not a timm RandAugment string: 'rand' then dash-separated "
            "sections m<magnitude>, n<ops>, p<probability>, mstd<magnitude std>, mmax<max>, inc<0|1>, "
            f"t<transform set> (e.g. rand-m6-mstd0.5-inc1, ResNet strikes back's) ({str(error) or type(error).__name__})."
        ) from error


def _pair(data: Any, key: str) -> tuple[float, float]:
    """A two-number [min, max] setting."""
    values = list(getattr(data, key))
    if len(values) != 2:
        raise UsageError(f"data.{key} must be two numbers [min, max], not {values}.")
    return float(values[0]), float(values[1])
