"""Data-side progressive resizing: Composer's schedule, applied by the loader at epoch starts, checked up front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from composer import Trainer
from composer.algorithms import ProgressiveResizing
from composer.core import Callback, State
from composer.loggers import InMemoryLogger, Logger
from composer.models import ComposerClassifier
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from algorithms.data_progressive_resizing import DataProgressiveResizing, pinned_size, scale_at
from algorithms.registry import build_algorithms
from data import build_data
from recipes.errors import UsageError
from recipes.schema import RecipeConfig
from training.preflight import load_run_recipe


class BatchSizes(Callback):
    """Records the image size of every training batch, per epoch."""

    def __init__(self) -> None:
        self.sizes: list[set[int]] = []

    def epoch_start(self, state: State, logger: Logger) -> None:
        self.sizes.append(set())

    def after_dataloader(self, state: State, logger: Logger) -> None:
        self.sizes[-1].add(state.batch[0].shape[-1])


class StepSizes(Callback):
    """The elapsed fraction of training and the image size at each training batch, after the algorithms of
    Event.AFTER_DATALOADER (Composer's ProgressiveResizing among them) ran; and the scale Composer logged."""

    def __init__(self) -> None:
        self.elapsed: list[float] = []
        self.sizes: list[int] = []
        self.scales: list[float] = []

    def after_dataloader(self, state: State, logger: Logger) -> None:
        elapsed = state.get_elapsed_duration()
        assert elapsed is not None
        self.elapsed.append(elapsed.value)
        self.sizes.append(state.batch[0].shape[-1])


def tiny_classifier(num_classes: int) -> ComposerClassifier:
    """Any image size in, ``num_classes`` scores out: the schedule is the point, not the network."""
    layers = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, num_classes)
    )
    return ComposerClassifier(layers, num_classes)


def run_composers(arguments: dict[str, Any], train_dataloader: Any, max_duration: str) -> StepSizes:
    """Composer's own ProgressiveResizing, built from the recipe arguments, run over ``max_duration``."""
    (algorithm,) = build_algorithms({"progressive_resizing": arguments}, global_batch_size=2)
    assert isinstance(algorithm, ProgressiveResizing)
    sizes, logged = StepSizes(), InMemoryLogger()
    trainer = Trainer(
        model=tiny_classifier(4),
        train_dataloader=train_dataloader,
        max_duration=max_duration,
        algorithms=[algorithm],
        callbacks=[sizes],
        loggers=[logged],
        device="cpu",
        progress_bar=False,
    )
    trainer.fit()
    trainer.close()
    sizes.scales = [scale for _, scale in logged.data["progressive_resizing/scale_factor"]]
    return sizes


@pytest.mark.parametrize(
    ("arguments", "width"),
    [
        ({}, 32),  # Composer's defaults: 0.5 until half-way, full size for the last fifth
        ({"initial_scale": 0.25, "delay_fraction": 0.1, "finetune_fraction": 0.3, "size_increment": 8}, 32),
        ({"initial_scale": 0.6, "delay_fraction": 0.0, "finetune_fraction": 0.0}, 32),
        # 40 x 0.5 / 8 = 2.5 increments, a tie: Composer's round() goes to the even 2 (16 px), not 3 (24 px).
        ({"initial_scale": 0.5, "delay_fraction": 0.5, "finetune_fraction": 0.0, "size_increment": 8}, 40),
    ],
)
def test_schedule_is_composers(arguments: dict[str, Any], width: int) -> None:
    """At every step of 20, the scale and the pinned size ours computes for the elapsed fraction are the ones
    Composer's ProgressiveResizing, run with the same arguments, logs and resizes a batch of ``width`` px to."""
    images = torch.rand(40, 3, width, width)
    loader = DataLoader(TensorDataset(images, torch.zeros(40, dtype=torch.long)), batch_size=2)
    composers = run_composers(arguments, loader, "20ba")
    ours = DataProgressiveResizing(**arguments)
    schedule = (ours.initial_scale, ours.delay_fraction, ours.finetune_fraction)
    assert composers.elapsed == [step / 20 for step in range(20)]
    scales = [scale_at(elapsed, *schedule) for elapsed in composers.elapsed]
    assert scales == pytest.approx(composers.scales)
    assert [pinned_size(width, scale, ours.size_increment) for scale in scales] == composers.sizes
    assert len(set(composers.sizes)) > 2  # the ramp is inside the run, not only its two ends


def test_sizes_are_pinned_to_the_increment() -> None:
    assert pinned_size(176, 0.5, 4) == 88
    assert pinned_size(224, 0.6, 32) == 128
    assert pinned_size(32, 0.01, 4) == 4


@pytest.mark.parametrize("workers", [0, 1])
def test_the_loader_produces_the_scheduled_size_each_epoch(workers: int) -> None:
    config = OmegaConf.merge(
        OmegaConf.structured(RecipeConfig),
        {
            "global_batch_size": 8,
            "data": {
                "source": "synthetic", "num_classes": 4, "synthetic_train_samples": 16, "synthetic_val_samples": 8,
                "train_resolution": 32, "eval_resolution": 32, "num_workers": workers, "persistent_workers": True,
            },
        },
    )  # fmt: skip
    data = build_data(config)
    sizes = BatchSizes()
    trainer = Trainer(
        model=tiny_classifier(data.num_classes),
        train_dataloader=data.train,
        max_duration="4ep",
        algorithms=[DataProgressiveResizing(initial_scale=0.5, delay_fraction=0.25, finetune_fraction=0.25)],
        callbacks=[sizes],
        device="cpu",
        progress_bar=False,
    )
    trainer.fit()
    # Epoch starts at 0, 0.25, 0.5, 0.75 of training: scales 0.5, 0.5, 0.75, 1.0 of 32 px. Every batch of an
    # epoch has one size, and persistent workers follow the change.
    assert sizes.sizes == [{16}, {16}, {24}, {32}]
    trainer.close()


def test_it_needs_the_fast_pipeline() -> None:
    with pytest.raises(UsageError, match=r"data\.pipeline=fast"):
        load_run_recipe("smoke", ["data.pipeline=torchvision", "algorithms.data_progressive_resizing={}"])


def test_it_excludes_composers_progressive_resizing() -> None:
    with pytest.raises(UsageError, match="keep one"):
        load_run_recipe(
            "smoke", ["algorithms.data_progressive_resizing={}", "algorithms.progressive_resizing={}"]
        )


def test_bad_arguments_name_the_recipe_key() -> None:
    with pytest.raises(UsageError, match=r"algorithms\.data_progressive_resizing.*initial_scale"):
        build_algorithms({"data_progressive_resizing": {"initial_scale": 1.5}}, global_batch_size=8)


def tiny_fast_pipeline() -> Any:
    """The fast pipeline's synthetic 32 px images, 8 for training in batches of 4."""
    config = OmegaConf.merge(
        OmegaConf.structured(RecipeConfig),
        {
            "global_batch_size": 4,
            "data": {
                "source": "synthetic", "num_classes": 4, "synthetic_train_samples": 8, "synthetic_val_samples": 4,
                "train_resolution": 32, "eval_resolution": 32, "num_workers": 0,
            },
        },
    )  # fmt: skip
    return build_data(config).train


def test_same_arguments_as_composers_version() -> None:
    """A recipe switches between the two by renaming the key: the same arguments give, in each epoch of a
    4-epoch run of the fast pipeline, the size Composer's version resizes that epoch's batches to."""
    arguments = {
        "initial_scale": 0.5,
        "delay_fraction": 0.25,
        "finetune_fraction": 0.25,
        "size_increment": 12,
    }
    (data_side,) = build_algorithms({"data_progressive_resizing": arguments}, global_batch_size=4)
    ours = BatchSizes()
    trainer = Trainer(
        model=tiny_classifier(4),
        train_dataloader=tiny_fast_pipeline(),
        max_duration="4ep",
        algorithms=[data_side],
        callbacks=[ours],
        device="cpu",
        progress_bar=False,
    )
    trainer.fit()
    trainer.close()
    composers = run_composers(arguments, tiny_fast_pipeline(), "4ep")
    by_epoch = [set(composers.sizes[epoch * 2 : epoch * 2 + 2]) for epoch in range(4)]
    # 12 px steps: 0.5 and 0.75 of 32 px pin to 12 and 24, full size stays 32.
    assert ours.sizes == by_epoch == [{12}, {12}, {24}, {32}]


def test_a_run_resumed_mid_epoch_trains_the_rest_of_it_at_that_epochs_size(tmp_path: Path) -> None:
    """Resumed after the first batch of epoch 3 of 4, the next batch has the size scheduled for epoch 3 (no
    epoch starts there), not the loader's full size."""
    arguments = {"initial_scale": 0.5, "delay_fraction": 0.25, "finetune_fraction": 0.25}

    def trainer(**checkpoints: Any) -> tuple[Trainer, StepSizes]:
        sizes = StepSizes()
        built = Trainer(
            model=tiny_classifier(4),
            train_dataloader=tiny_fast_pipeline(),
            max_duration="4ep",
            algorithms=build_algorithms({"data_progressive_resizing": arguments}, global_batch_size=4),
            callbacks=[sizes],
            device="cpu",
            progress_bar=False,
            **checkpoints,
        )
        return built, sizes

    whole, uninterrupted = trainer(save_folder=str(tmp_path), save_interval="5ba")
    whole.fit()
    whole.close()
    resumed, after_resuming = trainer(load_path=str(tmp_path / "ep2-ba5-rank0.pt"))
    resumed.fit()
    assert uninterrupted.sizes == [16, 16, 16, 16, 24, 24, 32, 32]
    assert after_resuming.sizes == uninterrupted.sizes[5:]
