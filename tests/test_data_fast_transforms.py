"""The fast pipeline: it agrees with torchvision's transforms, decodes JPEGs at reduced scale only when that loses
nothing, hands uint8 to the device, and lets the main process change the training size in running workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from data.bad_images import ImageDecodeError
from data.fast_transforms import (
    DecodeCenterCrop,
    DecodeRandomResizedCrop,
    NormalizeBatch,
    SharedResolution,
    ToUint8Tensor,
    decode_reduced,
    draft_factor,
)
from data.samples import LabelledImages, open_image
from recipes.schema import IMAGENET_MEAN, IMAGENET_STD


def photo_like_jpeg(path: Path, size: tuple[int, int] = (320, 240), seed: int = 0, noise: float = 8) -> Path:
    """Smooth gradients with texture and noise: resampling differences show, unlike in flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    channels = [
        128 + 90 * np.sin(x / 23 + c) * np.cos(y / 17 - c) + rng.normal(0, noise, (size[1], size[0]))
        for c in range(3)
    ]
    pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=92)
    return path


def torchvision_pixels(image: Image.Image) -> torch.Tensor:
    return transforms.functional.pil_to_tensor(image).float()


@pytest.mark.parametrize(
    ("box", "output", "factor"),
    [
        ((300, 300), 224, 1),
        ((448, 460), 224, 2),
        ((447, 600), 224, 1),
        ((300, 280), 128, 2),
        ((520, 600), 64, 8),
    ],
)
def test_draft_factor_keeps_the_crop_at_least_the_output_size(box: tuple, output: int, factor: int) -> None:
    assert draft_factor(*box, output) == factor


def test_random_resized_crop_matches_torchvision_for_the_same_box(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = photo_like_jpeg(tmp_path / "photo.jpg")
    for box in [
        (10, 20, 150, 200),
        (0, 0, 240, 320),
    ]:  # (top, left, height, width): full scale, then 1/2 draft
        monkeypatch.setattr(transforms.RandomResizedCrop, "get_params", staticmethod(lambda *_, b=box: b))
        ours = DecodeRandomResizedCrop(SharedResolution(96), [0.08, 1.0], [0.75, 1.33])(open_image(str(path)))
        reference = transforms.RandomResizedCrop(96, antialias=True)(Image.open(path).convert("RGB"))
        assert ours.dtype == torch.uint8 and ours.shape == (3, 96, 96)
        assert (ours.float() - torchvision_pixels(reference)).abs().mean() < 3.0


def test_center_crop_is_torchvisions_resize_then_center_crop(tmp_path: Path) -> None:
    path = photo_like_jpeg(tmp_path / "photo.jpg")
    for resolution in (160, 64, 37):  # 64 px decodes at reduced scale; 37 has an odd crop offset
        reference = transforms.Compose(
            [transforms.Resize(round(resolution / 0.875), antialias=True), transforms.CenterCrop(resolution)]
        )(Image.open(path).convert("RGB"))
        ours = DecodeCenterCrop(resolution, 0.875)(open_image(str(path)))
        assert ours.shape == (3, resolution, resolution)
        tolerance = 1.0 if resolution != 64 else 3.0  # the reduced-scale decode filters a little differently
        assert (ours.float() - torchvision_pixels(reference)).abs().mean() < tolerance


def test_large_crops_are_decoded_at_reduced_scale_small_ones_in_full(tmp_path: Path) -> None:
    path = photo_like_jpeg(tmp_path / "photo.jpg")
    full, scale_x, scale_y = decode_reduced(open_image(str(path)), 1)
    half, half_x, half_y = decode_reduced(open_image(str(path)), 2)
    assert full.shape == (3, 240, 320) and (scale_x, scale_y) == (1.0, 1.0)
    assert half.shape == (3, 120, 160) and (half_x, half_y) == (0.5, 0.5)
    reference = torchvision_pixels(Image.open(path).convert("RGB"))
    assert (full.float() - reference).abs().mean() < 1.0  # torchvision's libjpeg-turbo decode equals PIL's
    shrunk = transforms.functional.resize(reference, [120, 160], antialias=True)
    assert (half.float() - shrunk).abs().mean() < 3.0


def test_non_jpeg_and_odd_modes_take_the_pil_path(tmp_path: Path) -> None:
    png = tmp_path / "named.JPEG"  # a PNG named .JPEG, as ImageNet holds one
    Image.new("LA", (50, 40), (90, 200)).save(png, format="PNG")
    pixels, _, _ = decode_reduced(open_image(str(png)), 2)
    assert pixels.shape == (3, 40, 50)  # not a JPEG: no draft, greyscale+alpha to RGB
    assert pixels[:, 0, 0].tolist() == [90, 90, 90]


def test_a_truncated_jpeg_is_a_decode_error_not_a_crash(tmp_path: Path) -> None:
    path = photo_like_jpeg(tmp_path / "photo.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_reduced(open_image(str(truncated)), 1)


def test_uint8_batches_normalise_like_to_tensor_and_normalize() -> None:
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    normalised, labels = NormalizeBatch(IMAGENET_MEAN, IMAGENET_STD)((images, torch.arange(4)))
    reference = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(images.float() / 255)
    assert torch.allclose(normalised, reference, atol=1e-5)
    assert labels.tolist() == [0, 1, 2, 3]
    floats = torch.rand(2, 3, 4, 4)
    assert NormalizeBatch(IMAGENET_MEAN, IMAGENET_STD)((floats, labels))[0] is floats  # torchvision pipeline


def test_to_uint8_tensor_takes_pil_and_randaugments_float_output_back_to_uint8() -> None:
    pixels = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    to_uint8 = ToUint8Tensor()
    assert isinstance(to_uint8, transforms.ToTensor)  # where Composer inserts PIL augmentations
    assert torch.equal(to_uint8(transforms.functional.to_pil_image(pixels)), pixels)
    assert torch.equal(to_uint8(pixels.float() / 255), pixels)
    assert to_uint8(pixels) is pixels


def test_persistent_workers_see_a_resolution_changed_between_epochs() -> None:
    resolution = SharedResolution(32)
    crop = DecodeRandomResizedCrop(resolution, [0.5, 1.0], [0.75, 1.33])
    images = [(index, 0) for index in range(4)]
    dataset = LabelledImages(images, lambda _: Image.new("RGB", (64, 48), (1, 2, 3)), ["a"], crop)
    loader = DataLoader(dataset, batch_size=2, num_workers=1, persistent_workers=True)
    assert {tuple(batch.shape[2:]) for batch, _ in loader} == {(32, 32)}
    resolution.set(16)
    assert {tuple(batch.shape[2:]) for batch, _ in loader} == {(16, 16)}
