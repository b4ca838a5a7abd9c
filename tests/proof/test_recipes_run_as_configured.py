"""Every recipe runs as it is written: only the data (a generated JPEG folder with the recipe's class count), the
duration (a few batches) and the batch (one a CPU trains in seconds) are replaced. Resolution, algorithms, loss,
init, optimizer, schedule shape, precision (through its CPU fallback) and microbatching stay the recipe's, and
the test checks that what the recipe promises took effect in the run it trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from composer.algorithms import EMA, SAM
from composer.algorithms.blurpool.blurpool_layers import BlurConv2d, BlurMaxPool2d
from composer.algorithms.sam.sam import SAMOptimizer
from composer.core import Callback, State, Time, TimeUnit
from composer.loggers import Logger

import evaluate
import train
from algorithms.registry import enabled_algorithms
from data import tiny_imagenet
from data.resumable_sampler import REPEATED_EPOCH_MULTIPLE
from data.synthetic import SyntheticImages
from model import LOSSES, moco_backbone_state, moco_initial_loss
from recipes.loading import available_recipes
from recipes.studies import load_study
from tools.ablate import run_overrides
from training import trainer
from training.optimization import LARS
from training.preflight import load_run_recipe
from training.weights import extract_model_state, read_checkpoint

BATCH = 8
# Training images in the subset: two batches an epoch, so the per-epoch settings (data-side progressive
# resizing) change within the run.
TRAIN_IMAGES = 2 * BATCH
EPOCHS = 3
# A repeated-augmentation recipe's epoch is its images rounded down to a multiple of 256 (RASampler's rule): it
# trains on 256 images, for as many steps as the others, and its epoch is 256 / BATCH batches long.
REPEATED_IMAGES = REPEATED_EPOCH_MULTIPLE


# The optimizer class each optimizer.name trains with (Composer's, torch's, timm's, this project's LARS).
OPTIMIZER_CLASSES = {
    "decoupled_sgdw": "DecoupledSGDW", "decoupled_adamw": "DecoupledAdamW", "lars": LARS.__name__, "sgd": "SGD",
    "lamb": "Lamb",
}  # fmt: skip


class Probe(Callback):
    """Records what the run really did: each batch's image side, and at the end the model, optimizer and
    algorithms Composer trained with."""

    def __init__(self) -> None:
        self.sides: list[int] = []
        self.end: dict[str, Any] = {}

    def before_forward(self, state: State, logger: Logger) -> None:
        self.sides.append(int(state.batch[0].shape[-1]))

    def fit_end(self, state: State, logger: Logger) -> None:
        network = state.model.module
        convolution = network.conv1 if not isinstance(network.conv1, BlurConv2d) else network.conv1.conv
        ema = next((algorithm for algorithm in state.algorithms if isinstance(algorithm, EMA)), None)
        sam = next((algorithm for algorithm in state.algorithms if isinstance(algorithm, SAM)), None)
        self.end = {
            "blur_layers": sum(
                isinstance(module, BlurConv2d | BlurMaxPool2d) for module in network.modules()
            ),
            "weights_channels_last": convolution.weight.is_contiguous(memory_format=torch.channels_last),
            "loss": getattr(state.model, "_loss_fn", None),
            "optimizer": state.optimizers[0],
            "ema": ema,
            "ema_differs": None
            if ema is None
            else any(
                not torch.equal(parameter, ema.ema_model.named_parameters_dict[name])
                for name, parameter in state.model.named_parameters()
                if name in ema.ema_model.named_parameters_dict
            ),
            "ema_started": None if ema is None else ema.ema_started,
            "sam_interval": None if sam is None else sam.interval,
            "flip_tta": getattr(state.model, "flip_tta", False),
            "repeats": getattr(state.train_dataloader.sampler, "repeats", None),
            "epoch_batches": len(state.train_dataloader),
        }


def class_count(name: str) -> int:
    """The classes the recipe trains: model.num_classes, data.max_classes, or its data source's."""
    config = load_run_recipe(name)
    if config.model.num_classes:
        return int(config.model.num_classes)
    if config.data.max_classes:
        return int(config.data.max_classes)
    return {"digits": 10, "tiny_imagenet": tiny_imagenet.NUM_CLASSES}.get(str(config.data.source), 1000)


def generated_folder(name: str, image_folders: dict[int, Path]) -> list[str]:
    """The recipe's data swapped for the generated JPEG folder with its class count (every image eligible) and
    validation on one batch of it."""
    return [
        "data.source=imagefolder", f"data.path={image_folders[class_count(name)]}", "data.train_split=train",
        "data.val_split=val", "data.max_classes=null", "data.max_samples_per_class=null",
        f"data.val_subset_size={BATCH}", f"eval_batch_size={BATCH}",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """A generated ImageFolder per class count the recipes need: 48 px JPEGs, at least one per class and split."""
    folders = {}
    for classes in sorted({class_count(name) for name in available_recipes()}):
        root = tmp_path_factory.mktemp(f"images-{classes}")
        per_class = {"train": -(-TRAIN_IMAGES // classes), "val": 1}  # enough for the training subset
        for split, count in per_class.items():
            images = SyntheticImages(seed=0, split=split, size=48, num_classes=classes)
            for index in range(classes * count):
                folder = root / split / f"class_{images.label(index):04d}"
                folder.mkdir(parents=True, exist_ok=True)
                images(index).save(folder / f"{index}.jpg", quality=90)
        folders[classes] = root
    return folders


SUPERVISED = [name for name in available_recipes() if load_run_recipe(name).task == "supervised"]
PRETRAINING = [name for name in available_recipes() if load_run_recipe(name).task == "moco_v3"]


@pytest.mark.parametrize("name", SUPERVISED)
def test_recipe_runs_as_configured_and_its_algorithms_take_effect(
    name: str,
    tmp_path: Path,
    image_folders: dict[int, Path],
    monkeypatch: pytest.MonkeyPatch,
    record_property: Any,
) -> None:
    probe = Probe()
    standard = trainer.build_callbacks
    monkeypatch.setattr(trainer, "build_callbacks", lambda device: [*standard(device), probe])
    classes = class_count(name)
    repeats = load_run_recipe(name).data.repeated_augmentation
    images, steps = (REPEATED_IMAGES, "6ba") if repeats > 1 else (TRAIN_IMAGES, f"{EPOCHS}ep")
    overrides = [
        # The data: a generated folder with the recipe's classes, a class-balanced subset of it.
        *generated_folder(name, image_folders), f"data.cache_dir={tmp_path / 'cache'}",
        f"data.subset_size={images}", "data.num_workers=0",
        # The duration and the batch.
        f"max_duration={steps}", f"eval_interval={steps}", f"save_interval={steps}",
        f"global_batch_size={BATCH}",
        # Where the run writes.
        f"save_folder={tmp_path / 'run'}", "save_overwrite=true", "autoresume=false", "logging.progress_bar=false",
    ]  # fmt: skip
    assert train.main([name, *overrides]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    config = load_run_recipe(name, overrides)
    enabled = enabled_algorithms(config.algorithms)

    assert summary["steps"] == EPOCHS * TRAIN_IMAGES // BATCH and summary["num_classes"] == classes
    assert probe.end["repeats"] == repeats
    assert (
        probe.end["epoch_batches"] == images // BATCH
    )  # RASampler's epoch: 256 images, each 1 / repeats of it
    assert summary["device"] == "cpu" and summary["precision"] == "fp32"  # the stated CPU fallback
    assert (tmp_path / "run" / "latest-rank0.pt").exists()
    full = config.data.train_resolution
    if "data_progressive_resizing" in enabled or "progressive_resizing" in enabled:
        assert probe.sides[0] < full and probe.sides == sorted(probe.sides), probe.sides
    else:
        assert set(probe.sides) == {full}, probe.sides
    if "blurpool" in enabled:
        assert probe.end["blur_layers"] > 0
    else:
        assert probe.end["blur_layers"] == 0
    if "channels_last" in enabled:
        assert probe.end["weights_channels_last"]
    if "ema" in enabled:
        # An EMA that starts after this short run (torchvision V2's, at epoch 5) has not started, and the run
        # evaluated, and says it evaluated, the training weights.
        start = Time.from_timestring(str(enabled["ema"].get("ema_start", "0.0dur")))
        started = not (start.unit == TimeUnit.EPOCH and start.value >= EPOCHS)
        assert probe.end["ema"] is not None and probe.end["ema_started"] == started
        if started:  # the average trails the trained weights
            assert probe.end["ema_differs"]
        assert summary["weights_evaluated"] == ("ema" if started else "raw")
    if "sam" in enabled:
        assert isinstance(probe.end["optimizer"], SAMOptimizer)
        interval = str(enabled["sam"]["interval"])
        if interval.endswith("sp"):  # the recipe's images per SAM step, at this batch
            assert probe.end["sam_interval"] == -(-int(interval.removesuffix("sp")) // BATCH)
    assert probe.end["loss"] is LOSSES[config.model.loss], probe.end["loss"]
    assert probe.end["flip_tta"] == config.model.flip_tta
    optimizer = probe.end["optimizer"]
    trained_by = optimizer.base_optimizer if isinstance(optimizer, SAMOptimizer) else optimizer
    assert type(trained_by).__name__ == OPTIMIZER_CLASSES[config.optimizer.name], type(trained_by)
    record_property(
        "figure",
        f"{name} as configured: {summary['steps']} steps of {type(trained_by).__name__}, {classes} classes, sides "
        f"{sorted(set(probe.sides))} px, algorithms {', '.join(sorted(enabled)) or 'none'}",
    )


class PretrainingProbe(Callback):
    """Records a MoCo v3 run: each batch's shape and dtype as the forward sees it, the first loss, and the
    momentum encoder at the start and the end."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: set[torch.dtype] = set()
        self.losses: list[float] = []
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, Any] = {}

    def fit_start(self, state: State, logger: Logger) -> None:
        self.start = {k: v.clone() for k, v in state.model.momentum_encoder.named_parameters()}

    def before_forward(self, state: State, logger: Logger) -> None:
        self.shapes.append(tuple(state.batch[0].shape))
        self.dtypes.add(state.batch[0].dtype)

    def after_loss(self, state: State, logger: Logger) -> None:
        self.losses.append(float(state.loss))

    def fit_end(self, state: State, logger: Logger) -> None:
        model = state.model
        self.end = {
            "optimizer": state.optimizers[0],
            # Parameters only: the BatchNorm statistics of both encoders change in any forward.
            "momentum_state": {k: v.clone() for k, v in model.momentum_encoder.named_parameters()},
            "base_state": {k: v.clone() for k, v in model.base_encoder.named_parameters()},
            "trainable": {id(p) for group in state.optimizers[0].param_groups for p in group["params"]},
            "momentum_parameters": {id(p) for p in model.momentum_encoder.parameters()},
            "weights_channels_last": model.base_encoder.conv1.weight.is_contiguous(
                memory_format=torch.channels_last
            ),
        }


@pytest.mark.parametrize("name", PRETRAINING)
def test_pretraining_recipe_runs_as_configured(
    name: str,
    tmp_path: Path,
    digits_cache: Path,
    image_folders: dict[int, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only the number of images, the duration and the batch change: the two views at the recipe's resolution,
    LARS at the recipe's LR, the loss starting where MoCo's objective predicts, and a momentum encoder that moved
    (on its own, not through the optimizer); the checkpoint's backbone is a torchvision ResNet-50's."""
    probe = PretrainingProbe()
    standard = trainer.build_callbacks
    monkeypatch.setattr(trainer, "build_callbacks", lambda device: [*standard(device), probe])
    overrides = [
        f"data.cache_dir={digits_cache}", f"data.subset_size={TRAIN_IMAGES}", "data.num_workers=0",
        f"max_duration={EPOCHS}ep", f"save_interval={EPOCHS}ep", f"global_batch_size={BATCH}",
        f"save_folder={tmp_path / 'run'}", "save_overwrite=true", "autoresume=false", "logging.progress_bar=false",
    ]  # fmt: skip
    config = load_run_recipe(name)
    if config.data.source != "digits":
        overrides += generated_folder(name, image_folders)
    # The recipe's microbatch is its whole per-device batch (splitting would change MoCo's negatives): made small.
    if isinstance(config.device_train_microbatch_size, int):
        overrides.append(f"device_train_microbatch_size={BATCH}")
    assert train.main([name, *overrides]) == 0
    config = load_run_recipe(name, overrides)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    side = config.data.train_resolution

    assert summary["steps"] == EPOCHS * TRAIN_IMAGES // BATCH and "val/acc1" not in summary
    assert set(probe.shapes) == {(BATCH, 2, 3, side, side)} and probe.dtypes == {torch.float32}
    assert probe.losses[0] == pytest.approx(
        moco_initial_loss(BATCH, config.moco.queue_size, config.moco.temperature, config.moco.loss_reduction),
        rel=0.05,
    )
    optimizer = probe.end["optimizer"]
    assert isinstance(optimizer, LARS) == (config.optimizer.name == "lars")
    assert not probe.end["trainable"] & probe.end["momentum_parameters"]  # the optimizer never sees it
    moved = [k for k, v in probe.end["momentum_state"].items() if not torch.equal(v, probe.start[k])]
    assert moved and any(
        not torch.equal(probe.end["momentum_state"][k], probe.end["base_state"][k]) for k in moved
    )
    if "channels_last" in enabled_algorithms(config.algorithms):
        assert probe.end["weights_channels_last"]

    state = extract_model_state(read_checkpoint(tmp_path / "run" / "latest-rank0.pt"))
    assert any(key.startswith("momentum_encoder.") for key in state)
    network = torchvision.models.get_model(config.model.name, weights=None)
    missing, unexpected = network.load_state_dict(moco_backbone_state(state), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    # evaluate.py says what the checkpoint is instead of a key mismatch.
    assert evaluate.main(["--checkpoint", str(tmp_path / "run" / "latest-rank0.pt")]) == 2
    assert "self-supervised pretraining" in capsys.readouterr().err


PROBES = [name for name in available_recipes() if load_run_recipe(name).task == "linear_probe"]


@pytest.mark.parametrize("name", PROBES)
def test_probe_recipe_runs_as_configured_on_a_pretrained_backbone(
    name: str,
    tmp_path: Path,
    digits_cache: Path,
    image_folders: dict[int, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A few steps of moco_v3_smoke as written give the backbone; the probe recipe, with only the images, duration,
    batch and backbone path changed, trains fc alone at its stated LR and its checkpoint reproduces in evaluate.py."""
    small = [f"data.cache_dir={digits_cache}", f"data.subset_size={TRAIN_IMAGES}", "data.num_workers=0"]
    small += [
        f"global_batch_size={BATCH}",
        "save_overwrite=true",
        "autoresume=false",
        "logging.progress_bar=false",
    ]
    pretraining = tmp_path / "pretraining"
    assert train.main(["moco_v3_smoke", *small, "max_duration=2ba", f"save_folder={pretraining}"]) == 0
    backbone = moco_backbone_state(extract_model_state(read_checkpoint(pretraining / "latest-rank0.pt")))

    lrs: list[float] = []
    trainable: list[str] = []

    class Record(Callback):
        def batch_start(self, state: State, logger: Logger) -> None:
            lrs.append(state.optimizers[0].param_groups[0]["lr"])
            trainable[:] = [n for n, p in state.model.module.named_parameters() if p.requires_grad]

    standard = trainer.build_callbacks
    monkeypatch.setattr(trainer, "build_callbacks", lambda device: [*standard(device), Record()])
    overrides = [
        *small, f"max_duration={EPOCHS}ep", f"save_interval={EPOCHS}ep", f"eval_interval={EPOCHS}ep",
        f"model.backbone_checkpoint={pretraining / 'latest-rank0.pt'}", f"save_folder={tmp_path / 'probe'}",
    ]  # fmt: skip
    if load_run_recipe(name).data.source != "digits":
        overrides += generated_folder(name, image_folders)
    assert train.main([name, *overrides]) == 0
    config = load_run_recipe(name, overrides)
    assert trainable == ["fc.weight", "fc.bias"]
    assert lrs[0] == pytest.approx(config.optimizer.base_lr * BATCH / 256)  # no warmup, the linear rule
    probe = extract_model_state(read_checkpoint(tmp_path / "probe" / "latest-rank0.pt"))
    frozen = [k for k in backbone if not torch.equal(probe[k], backbone[k])]
    assert not frozen, frozen[:3]  # weights and BatchNorm statistics of the backbone unchanged
    summary = json.loads((tmp_path / "probe" / "summary.json").read_text())
    output = tmp_path / "eval.json"
    assert (
        evaluate.main(["--checkpoint", str(tmp_path / "probe" / "latest-rank0.pt"), "--output", str(output)])
        == 0
    )
    assert json.loads(output.read_text())["val/acc1"] == pytest.approx(summary["val/acc1"], abs=1e-6)


TINY_IMAGENET_STUDY = (
    Path(__file__).resolve().parents[2] / "recipes" / "studies" / "tiny_imagenet_notebooks.yaml"
)


@pytest.mark.parametrize("variant", ["cutmix_mixup", "everything_ema"])
def test_tiny_imagenet_study_variants_that_stack_mixing_run(
    variant: str, tmp_path: Path, image_folders: dict[int, Path]
) -> None:
    """The study's variants that list CutMix and MixUp together (as the notebooks it reproduces do) train with
    the overrides tools.ablate gives them; that every target they make sums to 1 is
    tests/test_algorithms_registry.py's."""
    study = load_study(TINY_IMAGENET_STUDY)
    chosen = next(candidate for candidate in study.variants if candidate.name == variant)
    overrides = [
        *run_overrides(study, chosen, study.seeds[0]),
        *generated_folder("tiny_imagenet", image_folders), f"data.cache_dir={tmp_path / 'cache'}",
        f"data.subset_size={TRAIN_IMAGES}", "data.num_workers=0",
        "max_duration=2ba", "eval_interval=2ba", f"global_batch_size={BATCH}", f"save_folder={tmp_path / 'run'}",
    ]  # fmt: skip
    assert train.main([study.recipe, *overrides]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    trained = enabled_algorithms(load_run_recipe(tmp_path / "run" / "recipe.yaml").algorithms)
    assert summary["steps"] == 2 and {"cutmix", "mixup"} <= set(trained)
