"""MoCo v3's two views: BYOL's asymmetric augmentations at the configured rates, one decode per image, the same
views after a resume, and (B, 2, 3, R, R) batches from every source, normalised on the device and resized by
data-side progressive resizing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import simplejpeg
import torch
from omegaconf import OmegaConf
from PIL import Image
from test_data_hf import imagenet_like, write_hub_layout
from torchvision import transforms

from data import build_data
from data.fast_transforms import (
    NormalizeBatch,
    SharedResolution,
    crop_resize,
    decode_reduced,
    input_resolution,
)
from data.resumable_sampler import SampleKey, sample_seed, seeded
from data.samples import LabelledImages, open_image
from data.transforms import train_transform
from data.two_views import TwoViews
from recipes.errors import UsageError
from recipes.schema import IMAGENET_MEAN, IMAGENET_STD, DataConfig, RecipeConfig
from tools.measurements import one_thread

SIZE = 32
DRAWS = 600
# Every colour step off: each test turns on the ones it measures.
PLAIN = {"color_jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": [0.0, 0.0], "solarize_p": [0.0, 0.0]}


def two_views(size: int = SIZE, whole_image: bool = False, **views: object) -> TwoViews:
    """The two-view transform of a recipe's data section with ``data.two_views`` overrides; ``whole_image``
    crops the whole (square) image, unflipped, so an unaugmented view is the image itself."""
    data: dict[str, Any] = {"train_resolution": size, "two_views": views}
    if whole_image:
        data["crop_ratio"] = [1.0, 1.0]
        views.setdefault("crop_scale", [1.0, 1.0])
        views.setdefault("horizontal_flip", False)
    transform = train_transform(OmegaConf.merge(OmegaConf.structured(DataConfig), data), "moco_v3")
    assert isinstance(transform, TwoViews)
    return transform


def draw(transform: TwoViews, image: Image.Image, count: int = DRAWS, epoch: int = 0) -> torch.Tensor:
    """``count`` samples' views of ``image``, each seeded as the sampler seeds sample ``i`` of ``epoch``.

    On one thread, as in a DataLoader worker: on two busy cores torch's threads make these tiny images 10x slower.
    """
    outputs = []
    with one_thread():
        for index in range(count):
            with seeded(sample_seed(0, epoch, index)):
                outputs.append(transform(image.copy()))
    return torch.stack(outputs)  # (count, 2, 3, H, W)


def checkerboard(size: int = SIZE) -> Image.Image:
    """A one-pixel checkerboard of bright greys (230 and 255): any blur of sigma >= 1 px flattens it, and
    solarizing (>= 128 inverted) turns it dark."""
    pattern = np.indices((size, size)).sum(axis=0) % 2
    return Image.fromarray(np.repeat((230 + 25 * pattern).astype(np.uint8)[..., None], 3, axis=2))


def colourful(size: int = SIZE) -> Image.Image:
    """Smooth colour gradients: greyscale and colour jitter both change it visibly."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    pixels = np.stack([60 + 150 * x, 200 - 120 * y, 90 + 60 * x * y], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def photo_jpeg(path: Path, size: tuple[int, int] = (256, 256), seed: int = 0) -> Path:
    """Textured colour noise saved as a JPEG, like a photo for the decoder."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    channels = [128 + 90 * np.sin(x / 19 + c) * np.cos(y / 13 - c) for c in range(3)]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 8, (size[1], size[0], 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def rate(flags: torch.Tensor) -> float:
    return flags.float().mean().item()


# the views themselves


def test_two_views_of_one_image_are_two_different_uint8_crops(tmp_path: Path) -> None:
    image = open_image(str(photo_jpeg(tmp_path / "photo.jpg")))
    with seeded(sample_seed(0, 0, 0)):
        views = two_views()(image)
    assert views.shape == (2, 3, SIZE, SIZE)
    assert views.dtype == torch.uint8
    assert (views[0].float() - views[1].float()).abs().mean() > 10


@pytest.mark.parametrize(("blur_p", "solarize_p"), [([1.0, 0.1], [0.0, 0.2]), ([0.5, 0.0], [0.3, 0.6])])
def test_blur_and_solarize_follow_each_views_probabilities(blur_p: list, solarize_p: list) -> None:
    # blur_sigma is in pixels at 224 px: [7, 14] is 1-2 px at 32 px, enough to flatten the checkerboard.
    settings = {**PLAIN, "blur_p": blur_p, "solarize_p": solarize_p, "blur_sigma": [7.0, 14.0]}
    views = draw(two_views(whole_image=True, **settings), checkerboard()).float()
    sharpness = (views[..., 1:] - views[..., :-1]).abs().mean(dim=(2, 3, 4))  # (draws, 2)
    blurred, solarized = sharpness < 5, views.mean(dim=(2, 3, 4)) < 128
    assert torch.all((sharpness < 5) | (sharpness > 20))  # every draw is clearly one or the other
    for view in (0, 1):
        for flags, probability in ((blurred, blur_p), (solarized, solarize_p)):
            if probability[view] in (0.0, 1.0):
                assert rate(flags[:, view]) == probability[view]
            else:
                assert rate(flags[:, view]) == pytest.approx(probability[view], abs=0.05)


def test_default_views_are_always_blurred_and_never_solarized_then_sometimes_solarized() -> None:
    # The recipe's own sigmas (0.1-2 px at 224 px): drawn at 224 px, a blur of sigma >= 0.5 px is visible.
    views = draw(two_views(size=224, whole_image=True, **{**PLAIN, "blur_p": [1.0, 0.1], "solarize_p": [0.0, 0.2]}),
                 checkerboard(224), count=200).float()  # fmt: skip
    sharpness = (views[..., 1:] - views[..., :-1]).abs().mean(dim=(2, 3, 4))
    # Sigma uniform in [0.1, 2]: about (2 - 0.5) / 1.9 = 79 % of view 1's blurs flatten the pattern visibly.
    assert rate(sharpness[:, 0] < 20) == pytest.approx(0.79, abs=0.08)
    assert rate(sharpness[:, 1] < 20) < 0.15
    solarized = views.mean(dim=(2, 3, 4)) < 128
    assert rate(solarized[:, 0]) == 0.0
    assert rate(solarized[:, 1]) == pytest.approx(0.2, abs=0.05)


@pytest.mark.parametrize("grayscale_p", [0.2, 0.6])
def test_grayscale_and_colour_jitter_follow_their_probabilities(grayscale_p: float) -> None:
    image = colourful()
    original = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float()
    grey = draw(two_views(whole_image=True, **{**PLAIN, "grayscale_p": grayscale_p}), image).float()
    equal_channels = (grey.amax(dim=2) - grey.amin(dim=2)).amax(dim=(2, 3)) <= 1  # (draws, 2)
    assert rate(equal_channels) == pytest.approx(grayscale_p, abs=0.05)
    jittered = draw(two_views(whole_image=True, **{**PLAIN, "color_jitter_p": 0.8}), image).float()
    changed = (jittered - original).abs().amax(dim=(2, 3, 4)) > 2
    assert rate(changed) == pytest.approx(0.8, abs=0.05)


def test_blur_sigma_scales_with_the_output_size() -> None:
    # sigma 0.9 px at 224 px flattens the 1-px checkerboard; scaled to 32 px it is 0.13 px and leaves it sharp
    # (unscaled, the 32 px view would be blurred as hard relative to its content as 6.3 px at 224 px).
    settings = {**PLAIN, "blur_p": [1.0, 1.0], "blur_sigma": [0.9, 0.9]}
    for size, expected_sharp in ((224, False), (32, True)):
        views = draw(two_views(size=size, whole_image=True, **settings), checkerboard(size), count=4).float()
        sharpness = (views[..., 1:] - views[..., :-1]).abs().mean()
        assert (sharpness > 20) == expected_sharp, size


def test_same_sample_key_gives_the_same_views_and_other_epochs_differ(tmp_path: Path) -> None:
    paths = [str(photo_jpeg(tmp_path / f"{index}.jpg", seed=index)) for index in range(4)]
    dataset = LabelledImages([(path, 0) for path in paths], open_image, ["a"], two_views())

    def views(epoch: int, index: int) -> torch.Tensor:
        return dataset[SampleKey(index, sample_seed(7, epoch, index))][0]

    first = views(epoch=3, index=2)
    views(epoch=3, index=0)  # other samples read in between (another worker, a skipped part of an epoch)
    assert torch.equal(views(epoch=3, index=2), first)
    assert not torch.equal(views(epoch=4, index=2), first)


def test_each_image_is_decoded_once_at_a_scale_large_enough_for_both_crops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decode = simplejpeg.decode_jpeg
    factors: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> np.ndarray:
        factors.append(kwargs["min_factor"])
        return decode(*args, **kwargs)

    monkeypatch.setattr(simplejpeg, "decode_jpeg", counted)
    transform = two_views(size=32, crop_scale=[0.3, 1.0])
    path = str(photo_jpeg(tmp_path / "photo.jpg"))
    for index in range(20):
        with seeded(sample_seed(0, 0, index)):
            transform(open_image(path))
    assert len(factors) == 20
    assert max(factors) > 1  # 32 px crops of a 256 px image decode at reduced scale


def test_one_decode_keeps_the_smaller_crop_as_sharp_as_its_own_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A whole-image box (a 1/8 decode would do for it at 32 px) and a 40 px box (needs the full decode).
    boxes = iter([(0, 0, 256, 256), (100, 120, 40, 40)])
    monkeypatch.setattr(transforms.RandomResizedCrop, "get_params", staticmethod(lambda *_: next(boxes)))
    path = str(photo_jpeg(tmp_path / "photo.jpg"))
    views = two_views(size=32, **{**PLAIN, "horizontal_flip": False})(open_image(path))
    full, _, _ = decode_reduced(open_image(path), 1)
    assert torch.equal(views[1], crop_resize(full, (120, 100, 40, 40), (32, 32), "bilinear"))


# wiring


def recipe(tmp_path: Path, **data: object) -> Any:
    """A moco_v3 recipe with small batches and images, loading in the main process."""
    settings = {"num_workers": 0, "train_resolution": 16, "eval_resolution": 16, "cache_dir": str(tmp_path)}
    return OmegaConf.merge(
        OmegaConf.structured(RecipeConfig),
        {"task": "moco_v3", "global_batch_size": 4, "eval_batch_size": 4, "data": {**settings, **data}},
    )


def image_folder(root: Path) -> Path:
    """ROOT/{train,val}/<class>/*.jpg: three small JPEGs per class and split."""
    for split in ("train", "val"):
        for label in range(2):
            for index in range(3):
                photo_jpeg(root / split / f"class{label}" / f"{index}.jpg", (40, 30), seed=label * 10 + index)
    return root


@pytest.fixture
def hub_parquet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """test_data_hf's imagenet-1k stand-in in the hub's Parquet layout (streamable), datasets' cache in tmp."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    return write_hub_layout(tmp_path / "parquet", imagenet_like(), {"train": 2, "validation": 1, "test": 1})


SOURCES = {
    "digits": lambda tmp_path, request: {"source": "digits"},
    "imagefolder": lambda tmp_path, request: {"source": "imagefolder", "path": str(image_folder(tmp_path / "f"))},
    "synthetic": lambda tmp_path, request: {"source": "synthetic", "num_classes": 2, "synthetic_train_samples": 8},
    "hf": lambda tmp_path, request: {"source": "hf", "path": str(request.getfixturevalue("hub_parquet")),
                                     "val_split": "validation"},
    "hf_streaming": lambda tmp_path, request: {"source": "hf", "path": str(request.getfixturevalue("hub_parquet")),
                                               "val_split": "validation", "hf_streaming": True},
}  # fmt: skip


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_yields_two_view_batches_normalised_on_the_device(
    source: str, tmp_path: Path, request: pytest.FixtureRequest, digits_cache: Path
) -> None:
    settings = SOURCES[source](tmp_path, request)
    cfg = recipe(digits_cache if source == "digits" else tmp_path, **settings)
    bundle = build_data(cfg)
    images, labels = next(iter(bundle.train.dataloader))
    assert images.shape == (4, 2, 3, 16, 16)
    assert images.dtype == torch.uint8
    assert labels.shape == (4,)
    normalised, _ = bundle.train.microbatch_transforms((images, labels))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert normalised.dtype == torch.float32
    torch.testing.assert_close(normalised, (images.float() / 255 - mean) / std)
    # Validation stays one view per image (the k-NN monitor's features).
    assert next(iter(bundle.val.dataloader))[0].shape == (4, 3, 16, 16)


def test_progressive_resizing_resizes_both_views(tmp_path: Path) -> None:
    bundle = build_data(recipe(tmp_path, source="synthetic", num_classes=2, synthetic_train_samples=8))
    resolution = input_resolution(bundle.train.dataloader.dataset)
    assert isinstance(resolution, SharedResolution)
    resolution.set(8)
    assert next(iter(bundle.train.dataloader))[0].shape == (4, 2, 3, 8, 8)


def test_normalise_batch_normalises_each_channel_of_both_views() -> None:
    images = torch.zeros(2, 2, 3, 4, 4, dtype=torch.uint8)
    images[:, :, 1] = 255
    normalised, _ = NormalizeBatch([0.5, 0.25, 0.0], [0.5, 0.25, 1.0])((images, torch.zeros(2)))
    assert normalised.shape == (2, 2, 3, 4, 4)
    assert torch.equal(normalised[:, :, :, 0, 0], torch.tensor([-1.0, 3.0, 0.0]).expand(2, 2, 3))


def test_torchvision_pipeline_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"data.pipeline=torchvision .*task=moco_v3.*Set data.pipeline=fast"):
        build_data(recipe(tmp_path, source="synthetic", pipeline="torchvision"))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"blur_p": [1.0]}, r"data.two_views.blur_p must be 2 numbers"),
        ({"solarize_p": [0.0, 1.2]}, r"data.two_views.solarize_p=\[0.0, 1.2\] must be two probabilities"),
        ({"grayscale_p": -0.1}, r"data.two_views.grayscale_p=-0.1 must be a probability"),
        ({"color_jitter": [0.4, 0.4, 0.2, 0.7]}, r"data.two_views.color_jitter=.*hue in \[0, 0.5\]"),
        ({"blur_sigma": [2.0, 0.1]}, r"data.two_views.blur_sigma=\[2.0, 0.1\] must be two blur widths"),
        ({"crop_scale": [0.0, 1.0]}, r"data.two_views.crop_scale=\[0.0, 1.0\] must be two area fractions"),
    ],
)
def test_bad_two_view_settings_name_the_key(setting: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        two_views(**setting)
