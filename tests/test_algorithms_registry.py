"""Every algorithm a recipe can name really changes the model or batch when switched on; all but one are Composer's.

The exception, data_progressive_resizing (Composer lacks it), has its own test file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from composer import Trainer
from composer.core import Callback, State, Time
from composer.loggers import Logger
from composer.models import ComposerClassifier
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms
from torchvision.datasets import VisionDataset

from algorithms.registry import ALGORITHMS, build_algorithms, validate_recipe_algorithms
from model import build_model
from recipes.errors import UsageError
from recipes.schema import ModelConfig
from training.preflight import load_run_recipe

NUM_CLASSES = 4


class Probe(Callback):
    """Records what the batch and model look like at the events the algorithms act on."""

    def __init__(self) -> None:
        self.input_shapes: list[tuple[int, ...]] = []
        self.loss_targets: list[torch.Tensor] = []
        self.eval_targets: list[torch.Tensor] = []
        self.grad_norms: list[float] = []
        self.weights_before_eval: list[torch.Tensor] = []
        self.weights_in_eval: list[torch.Tensor] = []

    def before_forward(self, state: State, logger: Logger) -> None:
        self.input_shapes.append(tuple(state.batch[0].shape))

    def before_loss(self, state: State, logger: Logger) -> None:
        self.loss_targets.append(state.batch[1].detach().clone())

    def after_train_batch(self, state: State, logger: Logger) -> None:
        grads = [p.grad.norm() for p in state.model.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))

    def eval_start(self, state: State, logger: Logger) -> None:
        self.weights_in_eval.append(state.model.module.fc.weight.detach().clone())

    def eval_before_forward(self, state: State, logger: Logger) -> None:
        self.eval_targets.append(state.batch[1].detach().clone())


class PilImages(VisionDataset):
    """A few random PIL images, so Composer's image-space RandAugment can be applied."""

    def __init__(self, count: int = 8, size: int = 32) -> None:
        super().__init__(root="", transform=transforms.Compose([transforms.ToTensor()]))
        rng = np.random.default_rng(0)
        self.images = [
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)
        ]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(self.images[index]), index % NUM_CLASSES


def tensor_loader(count: int = 8, size: int = 32) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, 3, size, size, generator=generator)
    labels = torch.arange(count) % NUM_CLASSES
    return DataLoader(TensorDataset(images, labels), batch_size=4)


def train_briefly(algorithms: dict[str, Any], loader: DataLoader | None = None, duration: str = "2ba"):
    """Two batches of ResNet-50 at 32 px with the given recipe algorithms, then an eval."""
    probe = Probe()
    model = build_model(OmegaConf.structured(ModelConfig), NUM_CLASSES)
    trainer = Trainer(
        model=model,
        train_dataloader=loader or tensor_loader(),
        eval_dataloader=tensor_loader(4),
        max_duration=duration,
        algorithms=build_algorithms(OmegaConf.create(algorithms), global_batch_size=4),
        callbacks=[probe],
        device="cpu",
        progress_bar=False,
        seed=0,
    )
    trainer.fit()
    return trainer, probe


def test_registry_holds_composer_classes() -> None:
    composers = {
        "blurpool", "channels_last", "ema", "swa", "mixup", "cutmix", "randaugment", "label_smoothing",
        "stochastic_depth", "progressive_resizing", "sam", "colout", "gradient_clipping", "augmix", "cutout",
        "selective_backprop", "squeeze_excite", "layer_freezing", "factorize", "weight_standardization",
    }  # fmt: skip
    # ghost_batchnorm is Composer's subclassed (algorithms/ghost_batchnorm.py: eval takes any batch size);
    # mixup_or_cutmix holds Composer's MixUp and CutMix.
    assert set(ALGORITHMS) == composers | {"data_progressive_resizing", "ghost_batchnorm", "mixup_or_cutmix"}
    assert all(ALGORITHMS[name].__module__.startswith("composer.algorithms") for name in composers)


class MixedInputs(Probe):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def before_forward(self, state: State, logger: Logger) -> None:
        self.inputs.append(state.batch[0].detach().clone())


def test_mixup_or_cutmix_mixes_each_batch_one_way_never_both() -> None:
    """Per batch, CutMix leaves the same pixels untouched in every image (outside its box) and MixUp blends every
    pixel of each image paired with another; over 10 batches both occur, and no batch is both."""
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4) % NUM_CLASSES
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    probe = MixedInputs()
    built = build_algorithms(
        # MixUp's alpha 1 (its weight uniform in [0, 0.5]) so that no blend is too faint to change a float.
        OmegaConf.create({"mixup_or_cutmix": {"mixup_alpha": 1.0, "cutmix_alpha": 1.0}}),
        global_batch_size=4,
    )
    trainer = Trainer(
        model=build_model(OmegaConf.structured(ModelConfig(name="resnet18")), NUM_CLASSES),
        train_dataloader=loader,
        max_duration="10ba",
        algorithms=built,
        callbacks=[probe],
        device="cpu",
        progress_bar=False,
        seed=0,
    )
    trainer.fit()
    kinds = []
    for mixed, targets in zip(probe.inputs, probe.loss_targets, strict=True):
        changed = (mixed != images).any(dim=1)  # image, row, column
        untouched_everywhere = ~changed.any(dim=0)
        if untouched_everywhere.any():  # CutMix: outside its box no image changed, so MixUp did not run
            box = ~untouched_everywhere
            rows, columns = box.any(dim=1), box.any(dim=0)
            assert torch.equal(box, rows[:, None] & columns[None, :])  # one rectangle, shared by the batch
            kinds.append("cutmix")
        else:  # MixUp: an image paired with another is blended at every pixel (one paired with itself
            # changes only by rounding)
            assert changed.flatten(1).all(dim=1).any()
            kinds.append("mixup")
        assert torch.allclose(targets.sum(dim=1), torch.ones(4))  # soft targets for the loss
    assert set(kinds) == {"cutmix", "mixup"}, kinds
    with pytest.raises(UsageError, match=r"mixup_or_cutmix.*also enables algorithms.mixup.*mixup=null"):
        validate_recipe_algorithms(
            OmegaConf.create(
                {"algorithms": {"mixup_or_cutmix": {}, "mixup": {"alpha": 0.2}}, "data": {"pipeline": "fast"}}
            )
        )


def test_null_switches_an_algorithm_off() -> None:
    built = build_algorithms(
        OmegaConf.create({"blurpool": None, "mixup": {"alpha": 0.3}}), global_batch_size=4
    )
    assert built[0].alpha == 0.3


def test_missing_required_argument_is_named() -> None:
    with pytest.raises(UsageError, match=r"gradient_clipping.*clipping_threshold, clipping_type"):
        build_algorithms(OmegaConf.create({"gradient_clipping": {}}), global_batch_size=4)


def test_blurpool_replaces_convs_and_maxpool() -> None:
    from composer.algorithms.blurpool import BlurConv2d, BlurMaxPool2d

    trainer, _ = train_briefly({"blurpool": {}})
    kinds = {type(m) for m in trainer.state.model.modules()}
    assert BlurConv2d in kinds and BlurMaxPool2d in kinds


def test_channels_last_changes_memory_format() -> None:
    trainer, _ = train_briefly({"channels_last": {}})
    weight = trainer.state.model.module.conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_ema_evaluates_averaged_weights() -> None:
    trainer, probe = train_briefly({"ema": {"half_life": "10ba"}}, duration="3ba")
    ema = trainer.state.algorithms[0]
    assert ema.ema_started
    training_weights = trainer.state.model.module.fc.weight
    assert not torch.allclose(probe.weights_in_eval[-1], training_weights)


def test_swa_replaces_model_with_average() -> None:
    # swa_end at the very end, so the final model is the average (a real recipe ends earlier for BN's sake).
    swa = {"swa_start": "0.25dur", "swa_end": "1.0dur", "update_interval": "1ba"}
    trainer, _ = train_briefly({"swa": swa}, duration="4ba")
    swa = trainer.state.algorithms[0]
    assert swa.swa_started and swa.swa_completed
    averaged = swa.swa_model.module.state_dict()["module.fc.weight"]
    assert torch.equal(averaged, trainer.state.model.module.fc.weight.detach())


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mixing_with_label_smoothing_keeps_targets_summing_to_one_and_evaluates_hard(name: str) -> None:
    _, probe = train_briefly({name: {"alpha": 1.0}, "label_smoothing": {"smoothing": 0.1}})
    for targets in probe.loss_targets:
        assert targets.shape == (4, NUM_CLASSES) and targets.dtype.is_floating_point
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
        assert targets.min() >= 0.1 / NUM_CLASSES - 1e-6
    assert probe.eval_targets and all(t.dtype == torch.int64 and t.ndim == 1 for t in probe.eval_targets)


def test_label_smoothing_softens_targets() -> None:
    _, probe = train_briefly({"label_smoothing": {"smoothing": 0.2}})
    assert probe.loss_targets[0].max() == pytest.approx(0.8 + 0.2 / NUM_CLASSES)


def test_randaugment_inserts_into_dataset_transform() -> None:
    from composer.algorithms.randaugment import RandAugmentTransform

    dataset = PilImages()
    train_briefly({"randaugment": {"severity": 9, "depth": 2}}, loader=DataLoader(dataset, batch_size=4))
    kinds = [type(t) for t in dataset.transform.transforms]
    assert kinds.index(RandAugmentTransform) < kinds.index(transforms.ToTensor)


def test_stochastic_depth_targets_torchvision_bottlenecks() -> None:
    trainer, _ = train_briefly({"stochastic_depth": {"drop_rate": 0.5, "stochastic_method": "sample"}})
    blocks = [m for m in trainer.state.model.modules() if type(m).__name__ == "Bottleneck"]
    assert blocks and all(hasattr(b, "drop_rate") for b in blocks)
    assert max(b.drop_rate for b in blocks) == pytest.approx(0.5)


def test_progressive_resizing_shrinks_early_batches() -> None:
    _, probe = train_briefly(
        {"progressive_resizing": {"initial_scale": 0.5, "delay_fraction": 0.0, "finetune_fraction": 0.0}}
    )
    assert probe.input_shapes[0][-1] == 16


class ForwardPasses(Callback):
    """The weights each training forward pass runs with, by the number of steps taken before it."""

    def __init__(self) -> None:
        self.weights_by_step: dict[int, list[torch.Tensor]] = {}

    def before_forward(self, state: State, logger: Logger) -> None:
        weight = state.model.module[1].weight.detach().clone()
        self.weights_by_step.setdefault(int(state.timestamp.batch), []).append(weight)


@pytest.mark.parametrize("interval", [3, "12sp"])  # Composer's steps, or samples at the batch of 4
def test_sam_climbs_before_the_step_every_interval_steps_and_only_then(interval: int | str) -> None:
    """On every third step SAM runs a second forward (and backward) pass, at weights it moved away from the
    step's start (uphill along the first pass's gradient); the other steps are plain, one pass each."""
    passes = ForwardPasses()
    model = ComposerClassifier(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, NUM_CLASSES)), NUM_CLASSES
    )
    trainer = Trainer(
        model=model,
        train_dataloader=tensor_loader(count=24, size=4),
        max_duration="6ba",
        algorithms=build_algorithms(
            OmegaConf.create({"sam": {"rho": 0.5, "interval": interval}}), global_batch_size=4
        ),
        callbacks=[passes],
        device="cpu",
        progress_bar=False,
        seed=0,
    )
    trainer.fit()
    weights = passes.weights_by_step
    assert [len(weights[step]) for step in range(6)] == [1, 1, 2, 1, 1, 2]
    for step in (2, 5):  # the ascent: the second pass runs away from the weights the step started at
        start, climbed = weights[step]
        assert not torch.allclose(start, climbed)


def test_colout_drops_rows_and_columns() -> None:
    _, probe = train_briefly({"colout": {"p_row": 0.25, "p_col": 0.25, "resize_target": False}})
    assert probe.input_shapes[0][-2:] == (24, 24)


def test_gradient_clipping_bounds_gradient_norm() -> None:
    _, probe = train_briefly({"gradient_clipping": {"clipping_type": "norm", "clipping_threshold": 0.01}})
    assert max(probe.grad_norms) <= 0.01 + 1e-4


# The registry validates the recipe's algorithms section when a recipe is loaded for a run.
def test_unknown_algorithm_lists_known() -> None:
    with pytest.raises(UsageError, match=r"algorithms\.blurpol.*Did you mean 'blurpool'.*Known algorithms"):
        load_run_recipe("smoke", ["algorithms.blurpol={}"])


def test_unknown_algorithm_argument_suggests() -> None:
    with pytest.raises(UsageError, match=r"algorithms\.mixup\.alpah.*Did you mean 'alpha'"):
        load_run_recipe("smoke", ["algorithms.mixup.alpah=0.2"])


def test_swa_units_checked_before_run() -> None:
    with pytest.raises(UsageError, match=r"swa_start.*'dur' or 'ep'"):
        load_run_recipe("smoke", ["algorithms.swa.swa_start=100ba"])


# Composer counts EMA's and SAM's settings in batches; written in samples they mean the same images at any batch.
MOSAIC_EMA = {"half_life": "204800sp", "update_interval": "40960sp"}  # Mosaic's 100ba and 20ba at batch 2048


@pytest.mark.parametrize("global_batch_size", [1024, 256])
def test_settings_in_samples_are_the_same_images_at_any_batch(global_batch_size: int) -> None:
    ema, sam = build_algorithms(
        OmegaConf.create({"ema": MOSAIC_EMA, "sam": {"interval": "20480sp"}}),
        global_batch_size=global_batch_size,
    )
    assert ema.half_life == Time(204800 // global_batch_size, "ba")  # 200 steps at 1024, 800 at 256
    assert ema.update_interval == Time(40960 // global_batch_size, "ba")
    assert ema.smoothing == pytest.approx(2 ** (-40 / 200))  # the same decay per image, whatever the batch
    assert sam.interval == 20480 // global_batch_size


def test_a_sample_count_between_steps_lasts_until_the_step_that_reaches_it() -> None:
    (ema,) = build_algorithms(OmegaConf.create({"ema": {"half_life": "204800sp"}}), global_batch_size=768)
    assert ema.half_life == Time(267, "ba")  # 266.7 steps: the one rule of recipes.durations rounds up
    assert ema.update_interval == Time(1, "ba")  # Composer's default, in the converted half-life's unit


def test_composers_own_units_stay_as_written() -> None:
    ema, sam = build_algorithms(
        OmegaConf.create({"ema": {"half_life": "2ep", "update_interval": "1ep"}, "sam": {"interval": 10}}),
        global_batch_size=256,
    )
    assert (ema.half_life, ema.update_interval, sam.interval) == (Time(2, "ep"), Time(1, "ep"), 10)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithms.ema.half_life=204800spx", r"algorithms\.ema\.half_life"),
        ("algorithms.ema.update_interval=0.1dur", r"algorithms\.ema\.update_interval"),
        (
            "algorithms.ema.half_life=2ep algorithms.ema.update_interval=40960sp",
            r"algorithms\.ema\.half_life.*both count epochs or both count steps",
        ),
        ("algorithms.sam.interval=10ep", r"algorithms\.sam\.interval.*20480sp"),
        ("algorithms.sam.interval=twenty", r"algorithms\.sam\.interval"),
    ],
)
def test_malformed_batch_counted_settings_are_named_when_the_recipe_loads(override: str, key: str) -> None:
    with pytest.raises(UsageError, match=key):
        load_run_recipe("smoke", override.split())


@pytest.mark.parametrize(
    "algorithms",
    [
        # CutMix and MixUp both on every batch (the Tiny ImageNet study), then smoothed.
        {"cutmix": {"alpha": 1.0}, "mixup": {"alpha": 0.2}, "label_smoothing": {"smoothing": 0.1}},
        {"label_smoothing": {"smoothing": 0.1}, "mixup": {"alpha": 0.2}},  # Mosaic's Medium order
        {"mixup_or_cutmix": {}, "label_smoothing": {"smoothing": 0.1}},  # torchvision's V2 order
    ],
    ids=["cutmix+mixup+smoothing", "smoothing+mixup", "mixup_or_cutmix+smoothing"],
)
def test_every_training_target_sums_to_one_whatever_mixes_and_smooths_it(algorithms: dict[str, Any]) -> None:
    """Each image's target is a distribution over the classes after every mixing and smoothing combination."""
    _, probe = train_briefly(algorithms)
    for targets in probe.loss_targets:
        assert targets.min() >= 0
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(targets)), atol=1e-6, rtol=0)


def test_composers_target_check_warns_on_float_rounding_alone() -> None:
    """Why train.py hides Composer's "less than 1 total probability" warning: three images whose targets are
    each exactly a distribution (to float32) already trip it, as smoothed and mixed targets do by rounding."""
    from composer.loss import soft_cross_entropy

    targets = torch.full((3, 3), 1 / 3)
    assert float(targets.sum()) < 3
    with pytest.warns(UserWarning, match="less than 1 total probability"):
        soft_cross_entropy(torch.zeros(3, 3), targets)
