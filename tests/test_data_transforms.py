"""Transform presets of both pipelines: shapes, normalisation, the eval crop arithmetic, odd modes, Composer hooks.

The fast pipeline's specifics (reduced decode, agreement with torchvision's output) are in
test_data_fast_transforms.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from composer.algorithms.randaugment import RandAugmentTransform
from composer.utils import add_vision_dataset_transform
from omegaconf import OmegaConf
from PIL import Image
from torchvision import transforms

from data.fast_transforms import NormalizeBatch
from data.samples import LabelledImages, open_image
from data.transforms import ToRGB, eval_resize_size, eval_transform, train_transform
from recipes.errors import UsageError
from recipes.schema import DataConfig


def data_config(**overrides: object):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), overrides)


PIPELINES = ["fast", "torchvision"]


def normalised(tensor: torch.Tensor, data) -> torch.Tensor:
    """One image as the model sees it: the fast pipeline's uint8 normalised by its batch transform."""
    images, _ = NormalizeBatch(data.mean, data.std)((tensor.unsqueeze(0), torch.zeros(1)))
    return images[0]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_train_preset_gives_normalised_tensor_of_train_resolution(pipeline: str) -> None:
    data = data_config(train_resolution=48, pipeline=pipeline)
    image = Image.new("RGB", (120, 90), (255, 0, 128))
    tensor = normalised(train_transform(data)(image), data)
    assert tensor.shape == (3, 48, 48)
    assert tensor.dtype == torch.float32
    expected = [(value / 255 - m) / s for value, m, s in zip((255, 0, 128), data.mean, data.std, strict=True)]
    assert torch.allclose(tensor.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-3)


@pytest.mark.parametrize(
    ("resolution", "ratio", "resize"), [(224, 0.875, 256), (32, 0.875, 37), (160, 1.0, 160)]
)
def test_eval_resize_is_resolution_over_crop_ratio(resolution: int, ratio: float, resize: int) -> None:
    assert eval_resize_size(resolution, ratio) == resize
    preset = eval_transform(
        data_config(eval_resolution=resolution, eval_crop_ratio=ratio, pipeline="torchvision")
    )
    resize_step = next(step for step in preset.transforms if isinstance(step, transforms.Resize))
    assert resize_step.size == resize
    assert preset(Image.new("RGB", (500, 375))).shape == (3, resolution, resolution)


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize(
    ("mode", "colour"), [("CMYK", (200, 50, 10)), ("L", (90, 90, 90)), ("P", (204, 51, 0))]
)
def test_cmyk_greyscale_and_palette_images_decode_to_rgb(
    tmp_path: Path, mode: str, colour: tuple, pipeline: str
) -> None:
    path = tmp_path / f"{mode}.{'png' if mode == 'P' else 'jpg'}"
    Image.new("RGB", (40, 30), (200, 50, 10)).convert(mode, dither=Image.Dither.NONE).save(path)
    image = open_image(str(path))
    assert image.mode == mode
    decoded = ToRGB()(open_image(str(path)))
    assert decoded.mode == "RGB"
    assert max(abs(a - b) for a, b in zip(decoded.getpixel((5, 5)), colour, strict=True)) <= 3
    data = data_config(
        train_resolution=16, eval_resolution=16, pipeline=pipeline, mean=[0, 0, 0], std=[1, 1, 1]
    )
    for preset in (train_transform(data), eval_transform(data)):
        pixels = normalised(preset(open_image(str(path))), data) * 255
        assert pixels.shape == (3, 16, 16)
        assert (pixels.mean(dim=(1, 2)) - torch.tensor(colour)).abs().max() <= 4


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_without_flip_the_same_crop_gives_the_same_tensor(pipeline: str) -> None:
    preset = train_transform(data_config(train_resolution=24, horizontal_flip=False, pipeline=pipeline))
    assert not any(isinstance(step, transforms.RandomHorizontalFlip) for step in preset.transforms)
    image = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    torch.manual_seed(3)
    first = preset(image)
    torch.manual_seed(3)
    assert torch.equal(first, preset(image))


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_flip_on_adds_a_flip_step(pipeline: str) -> None:
    preset = train_transform(data_config(horizontal_flip=True, pipeline=pipeline))
    assert any(isinstance(step, transforms.RandomHorizontalFlip) for step in preset.transforms)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_composer_randaugment_inserts_before_to_tensor_and_still_runs(pipeline: str) -> None:
    preset = train_transform(data_config(train_resolution=16, pipeline=pipeline))
    dataset = LabelledImages([(0, 0)], lambda _: Image.new("RGB", (20, 20), (9, 99, 199)), ["a"], preset)
    add_vision_dataset_transform(dataset, RandAugmentTransform(), is_tensor_transform=False)
    steps = dataset.transform.transforms
    to_tensor = next(i for i, step in enumerate(steps) if isinstance(step, transforms.ToTensor))
    assert isinstance(steps[to_tensor - 1], RandAugmentTransform)
    tensor, label = dataset[0]
    assert tensor.shape == (3, 16, 16)
    assert tensor.dtype == (torch.uint8 if pipeline == "fast" else torch.float32)
    assert label == 0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"crop_scale": [0.5]}, "data.crop_scale"),
        ({"crop_scale": [0.9, 0.2]}, "data.crop_scale"),
        ({"eval_crop_ratio": 1.5}, "data.eval_crop_ratio"),
        ({"std": [0.2, 0.2]}, "data.std"),
    ],
)
def test_bad_transform_settings_name_their_key(override: dict, key: str) -> None:
    with pytest.raises(UsageError, match=key.replace(".", r"\.")):
        train_transform(data_config(**override))
