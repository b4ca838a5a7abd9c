"""Loader wiring: the source registry, batch sizes over processes, DataLoader settings, reproducible order,
resumable epochs with per-sample augmentation seeds, workers that leave SIGTERM to the trainer, and uint8 images
normalised per microbatch on the device, under the algorithms that act on batches."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from composer import Trainer
from composer.algorithms import ColOut, CutMix, MixUp, ProgressiveResizing
from composer.algorithms.randaugment import RandAugmentTransform
from composer.core import Algorithm, Callback, DataSpec, State
from composer.devices import DeviceCPU
from composer.loggers import Logger
from composer.models import ComposerClassifier
from composer.utils import add_vision_dataset_transform, dist
from omegaconf import OmegaConf
from torch.utils.data import DistributedSampler
from torchvision.datasets import VisionDataset

from data import SOURCES, build_data
from data.fast_transforms import NormalizeBatch
from data.loaders import start_workers
from data.resumable_sampler import ResumableSampler, SampleKey, sample_seed, skips_seen_batches
from recipes.errors import UsageError
from recipes.schema import IMAGENET_MEAN, IMAGENET_STD, DataSource, RecipeConfig
from tools.planning import batches_per_epoch


def synthetic_recipe(**overrides: object):
    """Synthetic data at 8 px: a full build takes milliseconds."""
    data = {
        "source": "synthetic",
        "num_classes": 4,
        "synthetic_train_samples": 16,
        "synthetic_val_samples": 8,
    }
    data.update({"train_resolution": 8, "eval_resolution": 8, "num_workers": 0})
    data.update(overrides.pop("data", {}))
    return OmegaConf.merge(
        OmegaConf.structured(RecipeConfig), {"global_batch_size": 4, "data": data, **overrides}
    )


def fake_world(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Pretend to be rank 0 of ``size`` processes (the sampler only needs the numbers)."""
    monkeypatch.setattr(dist, "get_world_size", lambda: size)
    monkeypatch.setattr(dist, "get_global_rank", lambda: 0)


def test_registry_has_a_builder_for_every_source_the_schema_names() -> None:
    assert set(SOURCES) == set(DataSource)
    assert {str(name) for name in SOURCES} == {
        "digits",
        "imagefolder",
        "ilsvrc",
        "hf",
        "synthetic",
        "streaming",
        "tiny_imagenet",
    }


def test_batch_is_split_over_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_world(monkeypatch, 2)
    bundle = build_data(synthetic_recipe(global_batch_size=8, eval_batch_size=4))
    assert bundle.train.dataloader.batch_size == 4
    assert bundle.val.dataloader.batch_size == 2
    assert isinstance(bundle.train.dataloader.sampler, DistributedSampler)
    assert bundle.train.dataloader.sampler.num_replicas == 2
    assert len(bundle.train.dataloader) == 2  # 16 images, 8 per process, batches of 4
    assert bundle.train_size == 16


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"global_batch_size": 4}, r"global_batch_size=4 does not divide over 3 processes.*multiple of 3"),
        (
            {"global_batch_size": 6, "eval_batch_size": 8},
            r"eval_batch_size=8 does not divide over 3 processes",
        ),
    ],
)
def test_indivisible_batch_names_both_numbers(
    monkeypatch: pytest.MonkeyPatch, overrides: dict, message: str
) -> None:
    fake_world(monkeypatch, 3)
    with pytest.raises(UsageError, match=message):
        build_data(synthetic_recipe(**overrides))


def test_training_set_smaller_than_a_batch_is_an_error_not_an_empty_epoch() -> None:
    with pytest.raises(
        UsageError, match=r"training set has 16 images, fewer than one batch of global_batch_size=32"
    ):
        build_data(synthetic_recipe(global_batch_size=32))
    assert (
        len(build_data(synthetic_recipe(global_batch_size=32, data={"drop_last": False})).train.dataloader)
        == 1
    )


def test_worker_settings_apply_only_with_workers() -> None:
    loader = build_data(synthetic_recipe(data={"num_workers": 2, "prefetch_factor": 3})).train.dataloader
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor) == (2, True, 3)
    assert loader.pin_memory is False  # no CUDA here
    loader = build_data(synthetic_recipe()).train.dataloader
    assert (loader.persistent_workers, loader.prefetch_factor) == (False, None)


def test_same_seed_same_order_other_seed_other_order() -> None:
    def first_epoch_labels(seed: int) -> list[int]:
        loader = build_data(synthetic_recipe(seed=seed, data={"num_classes": 16})).train.dataloader
        return [label for _, labels in loader for label in labels.tolist()]

    assert first_epoch_labels(1) == first_epoch_labels(1)
    assert first_epoch_labels(1) != first_epoch_labels(2)


def test_subset_applies_before_loading() -> None:
    bundle = build_data(synthetic_recipe(data={"subset_size": "8", "max_classes": 2}))
    assert (bundle.num_classes, bundle.class_names) == (2, ["class_0", "class_1"])
    assert (bundle.train_size, bundle.val_size) == (8, 4)


def test_train_dataset_takes_composer_randaugment() -> None:
    dataset = build_data(synthetic_recipe()).train.dataloader.dataset
    assert isinstance(dataset, VisionDataset)
    add_vision_dataset_transform(dataset, RandAugmentTransform(), is_tensor_transform=False)
    image, label = dataset[5]
    assert image.shape == (3, 8, 8)
    assert label == 1


def test_cache_dir_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data import digits

    written = []
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(
        digits, "write_digits", lambda folder, *args: written.append(folder) or _tiny_digits(folder)
    )
    build_data(synthetic_recipe(data={"source": "digits", "cache_dir": "~/cache"}))
    assert str(written[0]).startswith(str(tmp_path / "cache"))


def _tiny_digits(folder: Path) -> None:
    """Two classes of four images per split, standing in for the real digits write."""
    from PIL import Image

    for split in ("train", "val"):
        for digit in ("0", "1"):
            (folder / split / digit).mkdir(parents=True)
            for index in range(4):
                Image.new("RGB", (8, 8)).save(folder / split / digit / f"{index}.jpg")


def augmenting_recipe(**data: object):
    """Synthetic images with ImageNet's crop scale and flips, so every read draws random numbers."""
    return synthetic_recipe(data={"crop_scale": [0.08, 1.0], "horizontal_flip": True, **data})


def epoch_batches(loader, epoch: int) -> list[torch.Tensor]:
    """Every image batch of one epoch, as Composer iterates it (set_epoch, then a pass)."""
    loader.sampler.set_epoch(epoch)
    return [images for images, _ in loader]


def test_a_resumed_epoch_starts_after_the_seen_samples_once() -> None:
    loader = build_data(synthetic_recipe()).train.dataloader
    sampler = loader.sampler
    assert isinstance(sampler, ResumableSampler) and skips_seen_batches(loader)
    sampler.set_epoch(3)
    whole = [int(index) for index in sampler]
    sampler.start_epoch_at(3, 8)
    assert [int(index) for index in sampler] == whole[8:]
    assert [int(index) for index in sampler] == whole  # the next pass is whole again
    sampler.start_epoch_at(2, 8)  # meant for another epoch: ignored
    assert [int(index) for index in sampler] == whole
    assert (
        len(sampler) == 16 and len(loader) == 4
    )  # Composer counts an epoch's batches against the whole share


def test_a_sample_looks_the_same_whatever_the_worker_count_or_the_skip() -> None:
    # Workers that end with the epoch: a persistent one left to the garbage collector holds up the next test 5 s.
    bundles = [build_data(augmenting_recipe(num_workers=n, persistent_workers=False)) for n in (0, 1)]
    for bundle in bundles:  # Composer's RandAugment draws from numpy
        add_vision_dataset_transform(bundle.train.dataloader.dataset, RandAugmentTransform(), False)
    in_main, in_worker = (epoch_batches(bundle.train.dataloader, 1) for bundle in bundles)
    assert all(torch.equal(a, b) for a, b in zip(in_main, in_worker, strict=True))
    loader = bundles[0].train.dataloader
    loader.sampler.start_epoch_at(1, 4)  # skip the first batch
    resumed = epoch_batches(loader, 1)
    assert len(resumed) == 3 and all(torch.equal(a, b) for a, b in zip(resumed, in_main[1:], strict=True))


def test_every_epoch_augments_a_sample_anew() -> None:
    dataset = build_data(augmenting_recipe()).train.dataloader.dataset
    first, again, next_epoch = (dataset[SampleKey(5, sample_seed(17, epoch, 5))][0] for epoch in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, next_epoch)


def test_processes_read_different_samples_so_they_augment_differently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    keys = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_global_rank", lambda rank=rank: rank)
        sampler = build_data(synthetic_recipe(global_batch_size=8)).train.dataloader.sampler
        keys.append({(int(key), key.seed) for key in sampler})
    indices = [{index for index, _ in share} for share in keys]
    seeds = [{seed for _, seed in share} for share in keys]
    assert not indices[0] & indices[1] and not seeds[0] & seeds[1]


def test_loading_in_the_main_process_leaves_the_training_rng_where_it_was() -> None:
    loader = build_data(augmenting_recipe()).train.dataloader
    np.random.seed(1)
    np.random.standard_normal()  # leaves numpy's cached second gaussian pending, as MixUp's beta draws do
    expected = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    epoch_batches(loader, 0)
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    assert torch.equal(torch_state, expected[0]) and python_state == expected[2]
    assert all(np.array_equal(a, b) for a, b in zip(numpy_state, expected[1], strict=True))


def test_a_worker_ignores_an_outside_sigterm_and_stops_when_its_parent_asks() -> None:
    loader = build_data(synthetic_recipe(data={"num_workers": 1})).train.dataloader
    batches = iter(loader)
    next(batches)
    worker = batches._workers[0]
    # From another process, as systemd or Slurm signal every process of the job.
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert worker.is_alive()
    assert len(list(batches)) == len(loader) - 1  # and the epoch goes on
    worker.terminate()  # what the DataLoader does to a worker that does not stop by itself
    worker.join(timeout=10)
    assert worker.exitcode == 0


# where the fast pipeline's uint8 images become normalised floats (data.fast_transforms explains the choice)


class InputProbe(Callback):
    """Records the batch as the algorithms leave it: after the data loader, and as the model gets it."""

    def __init__(self) -> None:
        self.loaded: list[torch.Tensor] = []
        self.forward_inputs: list[torch.Tensor] = []

    def after_dataloader(self, state: State, logger: Logger) -> None:
        self.loaded.append(state.batch[0].clone())

    def before_forward(self, state: State, logger: Logger) -> None:
        self.forward_inputs.append(state.batch[0].clone())


def tiny_classifier(num_classes: int) -> ComposerClassifier:
    """A few-parameter network: what these tests look at is the input, not the model."""
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, num_classes),
    )
    return ComposerClassifier(network, num_classes=num_classes)


def inputs_seen(spec: DataSpec, algorithms: list[Algorithm], microbatch: int | None = None) -> InputProbe:
    """Two seeded training steps of ``spec`` with ``algorithms``; what the probe saw."""
    probe = InputProbe()
    trainer = Trainer(
        model=tiny_classifier(4),
        train_dataloader=spec,
        max_duration="2ba",
        algorithms=algorithms,
        callbacks=[probe],
        device="cpu",
        device_train_microbatch_size=microbatch,
        progress_bar=False,
        seed=0,
    )
    trainer.fit()
    trainer.close()
    return probe


def test_uint8_batches_are_split_and_moved_then_normalised_per_microbatch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moved: list[torch.dtype] = []
    to_device = DeviceCPU.batch_to_device

    def recording(self: DeviceCPU, batch: Any) -> Any:
        moved.append(batch[0].dtype)
        return to_device(self, batch)

    monkeypatch.setattr(DeviceCPU, "batch_to_device", recording)
    bundle = build_data(synthetic_recipe(data={"train_resolution": 16}))
    probe = inputs_seen(bundle.train, [], microbatch=2)
    assert [images.dtype for images in probe.loaded] == [torch.uint8] * 2
    assert moved[:4] == [torch.uint8] * 4  # two microbatches of each batch, copied as uint8
    assert [tuple(images.shape) for images in probe.forward_inputs] == [(2, 3, 16, 16)] * 4
    # Each microbatch is the normalisation of its half of the uint8 batch, to the bit.
    normalise = NormalizeBatch(IMAGENET_MEAN, IMAGENET_STD)
    for index, images in enumerate(probe.forward_inputs):
        whole, _ = normalise((probe.loaded[index // 2], torch.zeros(4)))
        assert torch.equal(images, whole[index % 2 * 2 : index % 2 * 2 + 2])


@pytest.mark.parametrize(
    "algorithm",
    [
        lambda: MixUp(alpha=1.0),
        lambda: CutMix(alpha=1.0),
        lambda: ColOut(p_row=0.25, p_col=0.25),
        lambda: ProgressiveResizing(mode="resize", initial_scale=0.5, delay_fraction=0.5),
        lambda: ProgressiveResizing(mode="crop", initial_scale=0.5, delay_fraction=0.5),
    ],
    ids=["mixup", "cutmix", "colout", "progressive_resizing-resize", "progressive_resizing-crop"],
)
def test_batch_algorithms_give_the_model_what_they_give_it_on_images_normalised_first(
    algorithm: Callable[[], Algorithm],
) -> None:
    """MixUp and CutMix mix the normalised microbatch; ColOut and ProgressiveResizing select pixels of the uint8
    batch, which commutes with normalising: the model's inputs equal those of the same run normalised first."""
    bundle = build_data(synthetic_recipe(data={"train_resolution": 16}))
    ours = inputs_seen(bundle.train, [algorithm()])
    normalised_first = DataSpec(
        bundle.train.dataloader, batch_transforms=NormalizeBatch(IMAGENET_MEAN, IMAGENET_STD)
    )
    reference = inputs_seen(normalised_first, [algorithm()])
    assert ours.loaded[0].dtype == torch.uint8
    assert reference.loaded[0].dtype == torch.float32
    assert len(ours.forward_inputs) == len(reference.forward_inputs) == 2
    normalise = NormalizeBatch(IMAGENET_MEAN, IMAGENET_STD)
    for mine, expected, loaded in zip(
        ours.forward_inputs, reference.forward_inputs, ours.loaded, strict=True
    ):
        assert mine.dtype == torch.float32 and mine.min() < 0 < mine.max()
        assert torch.equal(mine, expected)
        # The algorithm did act: smaller images (ColOut, resizing), or mixed ones (MixUp, CutMix).
        assert mine.shape != (4, 3, 16, 16) or not torch.equal(mine, normalise((loaded, None))[0])


def test_repeated_augmentation_deals_each_image_n_times_over_the_processes_as_rasampler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torchvision's RASampler order (references/classification/sampler.py): the epoch's shuffled indices, each
    4 times in a row, dealt round-robin, cut to the dataset rounded down to 256 over the processes. On 2
    processes both hold each image twice, and all 4 copies have their own seed (their own crop)."""
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    dataset, epoch, shares = list(range(600)), 3, []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_global_rank", lambda rank=rank: rank)
        sampler = ResumableSampler(dataset, shuffle=True, drop_last=True, seed=17, repeats=4)
        sampler.set_epoch(epoch)
        shares.append(list(sampler))
        assert len(sampler) == len(shares[-1]) == 512 // 2
        assert batches_per_epoch(600, 2, 8, True, 4) == len(sampler) // 8  # the planner counts the same
    order = torch.randperm(600, generator=torch.Generator().manual_seed(17 + epoch)).tolist()
    for share in shares:
        assert [int(key) for key in share] == [index for index in order[:128] for _ in range(2)]
    copies = [key.seed for share in shares for key in share if int(key) == order[0]]
    assert len(copies) == 4 and len(set(copies)) == 4
    # A resumed epoch skips what this process trained, copies included.
    sampler.start_epoch_at(epoch, 10)
    assert [(int(key), key.seed) for key in sampler] == [(int(key), key.seed) for key in shares[1][10:]]


def test_repeated_copies_of_an_image_are_cropped_differently_in_one_batch() -> None:
    """One process, 4 repeats, batch 4: each batch is one image four times, each copy its own crop and flip."""
    recipe = augmenting_recipe(repeated_augmentation=4, synthetic_train_samples=300)
    loader = build_data(recipe).train.dataloader
    assert len(loader) == 256 // 4  # 300 images round down to 256 an epoch
    loader.sampler.set_epoch(0)
    images, labels = next(iter(loader))
    assert len(set(labels.tolist())) == 1
    assert len({image.numpy().tobytes() for image in images}) == 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"repeated_augmentation": 0}, "data.repeated_augmentation=0 must be the number of copies"),
        ({"repeated_augmentation": 4, "source": "streaming"}, "data.source=streaming has none"),
        ({"repeated_augmentation": 4}, "multiple of 256 images .* 16 images leave fewer than one batch"),
    ],
)
def test_bad_repeated_augmentation_names_the_key_and_the_fix(data: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_data(synthetic_recipe(data=data))


def test_started_validation_workers_exist_before_the_first_pass_and_lose_no_batch() -> None:
    """``start_workers`` forks the validation workers before training (so not from the grown process at the first
    evaluation), and the evaluation that follows still reads every image once, in order."""
    config = synthetic_recipe(data={"num_workers": 1, "persistent_workers": True}, eval_batch_size=3)
    loader = build_data(config).val.dataloader
    assert loader._iterator is None  # a DataLoader forks its workers on its first iter()
    start_workers(None)  # a run without a k-NN bank
    start_workers(DataSpec(loader))
    workers = loader._iterator._workers
    assert len(workers) == 1 and workers[0].is_alive()
    expected = [
        labels.tolist() for _, labels in build_data(synthetic_recipe(eval_batch_size=3)).val.dataloader
    ]
    assert [labels.tolist() for _, labels in loader] == expected
    assert loader._iterator._workers == workers  # the same workers, persistent
    loader._iterator._shutdown_workers()  # not left to the garbage collector, which holds up the next test
