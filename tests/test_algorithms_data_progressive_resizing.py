"""Data-side progressive resizing: Composer's schedule, applied by the loader at epoch starts, checked up front."""

from __future__ import annotations

import pytest
from composer import Trainer
from composer.algorithms import ProgressiveResizing
from composer.core import Callback, Event, State
from composer.loggers import Logger
from omegaconf import OmegaConf

from algorithms.data_progressive_resizing import DataProgressiveResizing, pinned_size, scale_at
from algorithms.registry import build_algorithms
from data import build_data
from model import build_model
from recipes.errors import UsageError
from recipes.schema import ModelConfig, RecipeConfig
from training.preflight import load_run_recipe


class BatchSizes(Callback):
    """Records the image size of every training batch, per epoch."""

    def __init__(self) -> None:
        self.sizes: list[set[int]] = []

    def epoch_start(self, state: State, logger: Logger) -> None:
        self.sizes.append(set())

    def after_dataloader(self, state: State, logger: Logger) -> None:
        self.sizes[-1].add(state.batch[0].shape[-1])


@pytest.mark.parametrize(
    ("elapsed", "expected"), [(0.0, 0.5), (0.5, 0.5), (0.65, 0.75), (0.8, 1.0), (0.95, 1.0)]
)
def test_schedule_is_composers(elapsed: float, expected: float) -> None:
    assert scale_at(elapsed, 0.5, delay_fraction=0.5, finetune_fraction=0.2) == pytest.approx(expected)


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
        model=build_model(OmegaConf.structured(ModelConfig(name="resnet18")), data.num_classes),
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


def test_same_arguments_as_composers_version() -> None:
    # A recipe switches between the two by renaming the key; mode and resize_targets only apply to batches.
    import inspect

    ours = set(inspect.signature(DataProgressiveResizing).parameters)
    composers = set(inspect.signature(ProgressiveResizing).parameters) - {"mode", "resize_targets"}
    assert ours == composers - {"input_key", "target_key"}
    assert DataProgressiveResizing().match(Event.EPOCH_START, None)  # type: ignore[arg-type]
    assert DataProgressiveResizing().match(Event.FIT_START, None)  # type: ignore[arg-type]  # mid-epoch resume
