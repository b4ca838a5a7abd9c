"""data.color_jitter, data.auto_augment (torchvision's policies and timm's RandAugment strings) and
data.random_erasing: they change training images and never eval images,
both pipelines draw the same augmentation for the same seed, the fast path's erased box is what torchvision's
reference feeds the model, and a sample's augmented pixels follow its (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from data.fast_transforms import NormalizeBatch
from data.resumable_sampler import SampleKey, sample_seed, seeded
from data.samples import LabelledImages
from data.transforms import AUTO_AUGMENT_POLICIES, auto_augment_policy, eval_transform, train_transform
from recipes.errors import UsageError
from recipes.schema import DataConfig

PIPELINES = ["fast", "torchvision"]
JITTER = [0.4, 0.4, 0.4, 0.1]
AUGMENTATIONS = [
    {"color_jitter": JITTER},
    {"auto_augment": "ta_wide"},
    {"auto_augment": "ra"},
    {"auto_augment": "imagenet"},
    {"auto_augment": "rand-m6-mstd0.5-inc1"},  # timm's, as ResNet strikes back A3
    {"random_erasing": 1.0},
]
SEEDS = range(12)


def data_config(pipeline: str, **overrides: object):
    settings = {"pipeline": pipeline, "train_resolution": 24, "eval_resolution": 24} | overrides
    return OmegaConf.merge(OmegaConf.structured(DataConfig), settings)


def photo(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Smooth colour gradients with a little noise: every op (warps, colour, equalize) has something to change."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    channels = [
        128 + 90 * np.sin(x / 9 + c) * np.cos(y / 7 - c) + rng.normal(0, 4, x.shape) for c in range(3)
    ]
    return Image.fromarray(np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8))


def model_input(data, image: Image.Image, seed: int, transform=None) -> torch.Tensor:
    """What the model sees for ``image`` under ``seed`` (torch's, numpy's and Python's generators seeded, as the
    loader seeds each sample): normalised floats (the fast path normalised as on the device by NormalizeBatch)."""
    with seeded(seed):
        tensor = (transform or train_transform(data))(image.copy())
    if tensor.dtype == torch.uint8:
        tensor = NormalizeBatch(data.mean, data.std)((tensor.unsqueeze(0), None))[0][0]
    return tensor


def levels(data, tensor: torch.Tensor) -> torch.Tensor:
    """Normalised floats back on the 0-255 scale, to compare pipelines in pixel levels."""
    std = torch.tensor(list(data.std)).view(3, 1, 1)
    mean = torch.tensor(list(data.mean)).view(3, 1, 1)
    return (tensor * std + mean) * 255


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("augmentation", AUGMENTATIONS, ids=lambda a: "-".join(map(str, a.items())))
def test_each_key_changes_training_images_and_not_eval_images(pipeline: str, augmentation: dict) -> None:
    plain, augmented = data_config(pipeline), data_config(pipeline, **augmentation)
    image = photo()
    plain_train, augmented_train = train_transform(plain), train_transform(augmented)
    # The augmentations follow crop and flip, so the same seed gives the same crop with and without them.
    changed = [
        not torch.equal(
            model_input(plain, image, seed, plain_train), model_input(augmented, image, seed, augmented_train)
        )
        for seed in SEEDS
    ]
    # TrivialAugmentWide and AutoAugment may draw the identity (or a no-op at this image) for a few seeds; timm's
    # RandAugment applies each of its 2 ops with probability 0.5, so it leaves about a quarter of images as they are.
    timm = str(augmentation.get("auto_augment", "")).startswith("rand-")
    assert sum(changed) >= (len(SEEDS) // 2 if timm else len(SEEDS) - 3), changed
    torch.manual_seed(0)
    plain_eval = eval_transform(plain)(image.copy())
    torch.manual_seed(1)
    assert torch.equal(eval_transform(augmented)(image.copy()), plain_eval)


@pytest.mark.parametrize("augmentation", AUGMENTATIONS, ids=lambda a: "-".join(map(str, a.items())))
def test_both_pipelines_draw_the_same_augmentation_for_the_same_seed(augmentation: dict) -> None:
    """The same transforms and the same torch draws: both pipelines pick the same op, magnitude and box, so the
    images agree to a level or so (the crops are resized by different kernels, and a solarize or posterize
    threshold can turn that into more on a few images), where another seed's differ by tens of levels."""
    fast, reference = data_config("fast", **augmentation), data_config("torchvision", **augmentation)
    fast_train, reference_train = train_transform(fast), train_transform(reference)
    image = photo()
    differences = [
        (
            levels(fast, model_input(fast, image, seed, fast_train))
            - levels(reference, model_input(reference, image, seed, reference_train))
        )
        .abs()
        .mean()
        .item()
        for seed in SEEDS
    ]
    assert np.median(differences) < 1 and max(differences) < 12, differences
    other_seed = levels(fast, model_input(fast, image, 0, fast_train)) - levels(
        reference, model_input(reference, image, 100, reference_train)
    )
    assert other_seed.abs().mean() > 12


def test_fast_erasing_feeds_the_model_what_torchvisions_reference_does() -> None:
    """The reference erases the normalised floats to 0; the fast path fills the mean in uint8 before
    NormalizeBatch: the same box, and zero to within uint8 rounding (half a level over 255 * std)."""
    fast = data_config("fast", random_erasing=1.0)
    reference = data_config("torchvision", random_erasing=1.0)
    image = photo()
    tolerance = 0.5 / (255 * min(fast.std)) + 1e-6
    for seed in range(5):
        reference_input = model_input(reference, image, seed)
        erased = (reference_input == 0).all(dim=0)
        assert erased.sum() > 0
        fast_input = model_input(fast, image, seed)
        assert fast_input[:, erased].abs().max() <= tolerance
        assert (fast_input[:, ~erased].abs() > tolerance).any(dim=0).float().mean() > 0.9


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_erasing_probability_is_honoured_over_many_images(pipeline: str) -> None:
    probability, draws = 0.25, 200
    plain = train_transform(data_config(pipeline, train_resolution=16))
    erasing = train_transform(data_config(pipeline, train_resolution=16, random_erasing=probability))
    image = photo(size=(20, 20))
    erased = 0
    for seed in range(draws):
        torch.manual_seed(seed)
        before = plain(image.copy())
        torch.manual_seed(seed)  # erasing is the last step: the crop and flip before it are the same draws
        erased += not torch.equal(before, erasing(image.copy()))
    expected, spread = probability * draws, (draws * probability * (1 - probability)) ** 0.5
    assert abs(erased - expected) <= 4 * spread, erased


def test_timm_rand_augment_is_timms_own_as_its_imagenet_training_transform_builds_it() -> None:
    """The same ops, magnitudes, fill and interpolation as timm's create_transform (ResNet strikes back's train
    transform) at the recipe's resolution and mean: the same Python draws give the same image."""
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment

    data = data_config("torchvision", auto_augment="rand-m6-mstd0.5-inc1", train_resolution=160)
    data.interpolation = "bicubic"
    ours = auto_augment_policy(data, None)
    timms = next(
        step
        for step in create_transform(
            160, is_training=True, auto_augment="rand-m6-mstd0.5-inc1", interpolation="bicubic"
        ).transforms
        if isinstance(step, RandAugment)
    )

    # Op by op, every setting (a few draws need not reach the translations, whose range is the resolution's).
    def settings(policy: RandAugment) -> list[tuple]:
        return [
            (op.name, op.prob, op.magnitude, op.magnitude_std, op.magnitude_max, op.hparams, op.kwargs)
            for op in policy.ops
        ]

    assert (ours.num_layers, ours.choice_weights) == (timms.num_layers, timms.choice_weights)
    assert settings(ours) == settings(timms)
    image = photo(size=(160, 160))
    outputs = []
    for policy in (ours, timms):
        with seeded(3):
            outputs.append([np.asarray(policy(image.copy())) for _ in range(8)])
    assert all(np.array_equal(a, b) for a, b in zip(*outputs, strict=True))
    assert sum(not np.array_equal(np.asarray(image), out) for out in outputs[0]) >= 6


@pytest.mark.parametrize("policy", ["ta_wide", "rand-m9-mstd0.5-inc1"])
def test_fast_path_augmented_pixels_follow_the_sample_seed(policy: str) -> None:
    """A resumed or streamed run re-draws a sample's augmentation from (seed, epoch, index): the same pixels
    whatever came before it, other pixels in another epoch (timm's policy draws from Python's random)."""
    data = data_config("fast", color_jitter=JITTER, auto_augment=policy, random_erasing=0.5)
    dataset = LabelledImages(
        [(index, index % 2) for index in range(4)], photo, ["even", "odd"], train_transform(data)
    )

    def key(epoch: int, index: int) -> SampleKey:
        return SampleKey(index, sample_seed(17, epoch, index))

    first, _ = dataset[key(0, 2)]
    for index in (0, 1, 3):  # other samples in between, as a worker after a skip would read them
        dataset[key(0, index)]
    torch.manual_seed(1234)  # the worker's own generator state does not matter
    again, _ = dataset[key(0, 2)]
    assert torch.equal(first, again)
    assert sum(not torch.equal(first, dataset[key(epoch, 2)][0]) for epoch in range(1, 6)) == 5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"auto_augment": "trivial"},
            "data.auto_augment=trivial is not one of " + ", ".join(AUTO_AUGMENT_POLICIES),
        ),
        ({"color_jitter": [0.4, 0.4]}, r"data.color_jitter=\[0.4, 0.4\] must be four numbers"),
        ({"color_jitter": [0.4, 0.4, 0.4, 0.7]}, "hue in"),
        ({"random_erasing": 1.5}, "data.random_erasing=1.5 must be a probability"),
        ({"auto_augment": "rand-m6-q1"}, "data.auto_augment=rand-m6-q1 is not a timm RandAugment string"),
        ({"auto_augment": "ra", "ra_magnitude": 31}, "data.ra_magnitude=31 must be an integer from 0 to 30"),
    ],
)
def test_bad_augmentation_settings_name_their_key_and_the_fix(override: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        train_transform(data_config("fast", **override))
