"""Every ImageNet recipe against Mosaic's published ResNet-50: the published value, ours, and why they differ.

Source: mosaicml/examples at commit daddaeff7a535273ff984b0134da4839c70a45b3,
examples/benchmarks/resnet_imagenet/: ``yamls/resnet50.yaml`` (the baseline's settings and the ``mild:``,
``medium:`` and ``hot:`` overrides), ``main.py`` (the optimizer and schedule it builds, and the algorithms of
each ``recipe_name`` block), ``model.py`` (the init and the loss) and ``data.py`` (the transforms).

Each recipe is loaded and resolved as ``train.py`` loads it, and every value Mosaic published for the run it
follows (``BASELINE``, with the overrides from ``SETS`` for a recipe built on an algorithm set) must come out
as published unless ``CHANGES`` lists the recipe's own value and the reason. Not compared: paths, loggers,
checkpoint cadence and data-loader workers, which do not change what is trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from composer.core import TimeUnit
from omegaconf import DictConfig, ListConfig, OmegaConf

from algorithms.registry import enabled_algorithms
from data.transforms import eval_resize_size
from recipes.durations import parse_time, steps_in
from recipes.loading import RECIPES_DIR
from training.optimization import build_optimizer
from training.preflight import load_run_recipe

SOURCE = "mosaicml/examples@daddaeff, examples/benchmarks/resnet_imagenet/"
# Mosaic's global batch: yamls/resnet50.yaml train_dataset.batch_size, which main.py divides over the devices.
MOSAIC_BATCH = 2048
IMAGENET_TRAIN_IMAGES = 1_281_167  # 625 batches of 2048 (drop_last) per epoch


@dataclass(frozen=True)
class Published:
    value: Any
    source: str


@dataclass(frozen=True)
class Change:
    value: Any
    why: str


# Mosaic's baseline (recipe_name null) in this project's keys. "lr" is the applied LR at the recipe's batch,
# "eval_resize" the short side before the eval center crop.
BASELINE: dict[str, Published] = {
    "global_batch_size": Published(MOSAIC_BATCH, "yamls/resnet50.yaml train_dataset.batch_size"),
    "lr": Published(2.048, "yamls/resnet50.yaml optimizer.lr (at batch 2048)"),
    "optimizer.base_lr": Published(0.256, "2.048 at batch 2048 is 0.256 per 256 images (linear rule)"),
    "optimizer.name": Published("decoupled_sgdw", "main.py DecoupledSGDW"),
    "optimizer.momentum": Published(0.875, "yamls/resnet50.yaml optimizer.momentum"),
    "optimizer.weight_decay": Published(5.0e-4, "yamls/resnet50.yaml optimizer.weight_decay"),
    "optimizer.weight_decay_batch": Published(
        MOSAIC_BATCH, "the 5e-4 is DecoupledSGDW's per step at batch 2048"
    ),
    # What a phase run must keep at its own batch: DecoupledSGDW shrinks each weight by weight_decay (x lr /
    # initial_lr) per step, so an epoch at 2048 applies 5e-4 for each of its images / 2048 steps.
    "weight_decay_per_epoch": Published(
        5.0e-4 * IMAGENET_TRAIN_IMAGES / MOSAIC_BATCH, "5e-4 per step x 1,281,167 / 2048 steps per epoch"
    ),
    "optimizer.nesterov": Published(False, "main.py passes none; DecoupledSGDW's default"),
    "optimizer.exclude_bn_and_bias_from_weight_decay": Published(
        False, "main.py DecoupledSGDW(composer_model.parameters()): one group, all decayed"
    ),
    "scheduler.name": Published("cosine_warmup", "main.py CosineAnnealingWithWarmupScheduler"),
    "scheduler.t_warmup": Published("8ep", "yamls/resnet50.yaml scheduler.t_warmup"),
    "scheduler.alpha_f": Published(0.0, "yamls/resnet50.yaml scheduler.alpha_f"),
    "max_duration": Published("90ep", "yamls/resnet50.yaml max_duration"),
    "precision": Published("amp_fp16", "main.py precision on a GPU"),
    "device_train_microbatch_size": Published("auto", "yamls/resnet50.yaml device_train_microbatch_size"),
    "eval_interval": Published("1ep", "main.py Trainer(eval_interval='1ep')"),
    "seed": Published(17, "yamls/resnet50.yaml seed"),
    "model.name": Published("resnet50", "yamls/resnet50.yaml model.name"),
    "model.head": Published("fc", "model.py torchvision's resnet50, its Linear classifier"),
    "model.init": Published("mosaic", "model.py weight_init"),
    "model.zero_init_residual": Published(False, "model.py: torchvision's default, then weight_init's rand"),
    "model.classifier_bias": Published(
        "chance_under_bce", "model.py: under a BCE loss the classifier bias starts at -log(num_classes)"
    ),
    "model.sync_batchnorm": Published(False, "main.py wraps no BatchNorm in SyncBatchNorm"),
    "model.drop_path_rate": Published(0.0, "torchvision's resnet50 has no drop path (Hot's is an algorithm)"),
    "model.loss": Published("cross_entropy", "yamls/resnet50.yaml model.loss_name"),
    "data.subset_size": Published("full", "all of ImageNet-1k's training images"),
    "data.max_classes": Published(None, "all 1000 classes"),
    "data.max_samples_per_class": Published(None, "every image of each class"),
    "data.val_subset_size": Published("full", "all 50,000 validation images"),
    "data.train_resolution": Published(224, "yamls/resnet50.yaml train_dataset.crop_size"),
    "data.crop_scale": Published([0.08, 1.0], "data.py RandomResizedCrop(scale=(0.08, 1.0))"),
    "data.crop_ratio": Published([0.75, 4 / 3], "data.py RandomResizedCrop(ratio=(0.75, 4.0 / 3.0))"),
    "data.horizontal_flip": Published(True, "data.py RandomHorizontalFlip()"),
    "data.interpolation": Published("bilinear", "data.py torchvision's Resize/RandomResizedCrop default"),
    "eval_resize": Published(256, "yamls/resnet50.yaml eval_dataset.resize_size"),
    "data.eval_resolution": Published(224, "yamls/resnet50.yaml eval_dataset.crop_size"),
    "algorithms": Published({}, "main.py: algorithms = None without a recipe_name"),
}

# Mosaic's three recipes: yamls/resnet50.yaml's overrides and main.py's algorithm blocks, in Mosaic's units
# (EMA in batches, SAM's interval in steps, both at batch 2048).
RECIPE_SIZES = {
    "data.train_resolution": Published(176, "yamls/resnet50.yaml <set>: train_dataset.crop_size"),
    "eval_resize": Published(232, "yamls/resnet50.yaml <set>: eval_dataset.resize_size"),
    "model.loss": Published("binary_cross_entropy", "yamls/resnet50.yaml <set>: model.loss_name"),
}
EMA = {"half_life": "100ba", "update_interval": "20ba"}
SETS: dict[str, dict[str, Published]] = {
    "mild": {
        **RECIPE_SIZES,
        "max_duration": Published("36ep", "yamls/resnet50.yaml mild: max_duration"),
        "algorithms": Published(
            {
                "blurpool": {},
                "channels_last": {},
                "ema": EMA,
                "progressive_resizing": {
                    "initial_scale": 0.5,
                    "delay_fraction": 0.4,
                    "finetune_fraction": 0.2,
                },
                "label_smoothing": {"smoothing": 0.08},
            },
            "main.py recipe_name == 'mild'",
        ),
    },
    "medium": {
        **RECIPE_SIZES,
        "max_duration": Published("135ep", "yamls/resnet50.yaml medium: max_duration"),
        "algorithms": Published(
            {
                "blurpool": {},
                "channels_last": {},
                "ema": EMA,
                "progressive_resizing": {
                    "initial_scale": 0.5,
                    "delay_fraction": 0.4,
                    "finetune_fraction": 0.2,
                },
                "label_smoothing": {"smoothing": 0.1},
                "mixup": {"alpha": 0.2},
                "sam": {"rho": 0.5, "interval": 10},
            },
            "main.py recipe_name == 'medium'",
        ),
    },
    "hot": {
        **RECIPE_SIZES,
        "max_duration": Published("270ep", "yamls/resnet50.yaml hot: max_duration"),
        "algorithms": Published(
            {
                "blurpool": {},
                "channels_last": {},
                "ema": EMA,
                "progressive_resizing": {
                    "initial_scale": 0.6,
                    "delay_fraction": 0.2,
                    "finetune_fraction": 0.2,
                },
                "label_smoothing": {"smoothing": 0.13},
                "mixup": {"alpha": 0.25},
                "sam": {"rho": 0.5, "interval": 5},
                "colout": {"p_col": 0.05, "p_row": 0.05},
                "randaugment": {"depth": 1, "severity": 9},
                "stochastic_depth": {
                    "target_layer_name": "ResNetBottleneck",
                    "stochastic_method": "sample",
                    "drop_distribution": "linear",
                    "drop_rate": 0.1,
                },
            },
            "main.py recipe_name == 'hot'",
        ),
    },
}

DATA_SIDE_RESIZING = Change(
    "data-side, same schedule",
    "progressive resizing by the data loader (data_progressive_resizing, Composer's schedule and arguments): "
    "4 vCPUs per T4 (g4dn.xlarge), 12 (g4dn.12xlarge) cannot decode full-size images as fast as a GPU "
    "running ~3x faster at half size asks for them",
)
SIZES_OF_THE_PAID_RUNS = "the sizes of Mosaic's recipes, which the paid runs use, so this run tests those"
CHANNELS_LAST = (
    "ChannelsLast on every GPU recipe: only the memory layout changes, and all of Mosaic's sets use it"
)

# Which of Mosaic's runs each phase recipe follows, and what it changes on purpose.
FOLLOWS = {"g4dn_12xlarge": "medium", "g4dn_xlarge": "mild", "colab": None, "troubleshoot_subset": None}
CHANGES: dict[str, dict[str, Change]] = {
    "g4dn_12xlarge": {
        "global_batch_size": Change(1024, "256 per T4: the per-GPU batch of Mosaic's 2048 over 8 A100s"),
        "lr": Change(1.024, "0.256 per 256 at batch 1024 (linear rule)"),
        "max_duration": Change("90ep", "two thirds of Medium's 135 epochs, for the cost of 4 T4s"),
        "algorithms.progressive_resizing": DATA_SIDE_RESIZING,
    },
    "g4dn_xlarge": {
        "global_batch_size": Change(256, "one T4"),
        "lr": Change(0.256, "0.256 per 256 at batch 256 (linear rule)"),
        "scheduler.t_warmup": Change("3ep", "an eighth of Mosaic's peak LR; 8 of 40 short epochs is a fifth"),
        "max_duration": Change("40ep", "sized to fill the hour on the 100-class subset"),
        "data.max_classes": Change(100, "the one-hour validation subset"),
        "data.max_samples_per_class": Change(250, "the one-hour validation subset"),
        "algorithms.progressive_resizing": DATA_SIDE_RESIZING,
        "algorithms.ema": Change(
            {"half_life": "4000sp", "update_interval": "800sp"},
            "Mosaic's 0.16 and 0.032 of an epoch, on a 25,000-image epoch (204800sp would be 8 epochs)",
        ),
    },
    "colab": {
        "global_batch_size": Change(128, "one free T4 with 2 vCPUs"),
        "lr": Change(0.128, "0.256 per 256 at batch 128 (linear rule)"),
        "scheduler.t_warmup": Change("1ep", "a 5-epoch sanity run"),
        "max_duration": Change("5ep", "a sanity check sized to minutes, not a training recipe"),
        "data.subset_size": Change("small", "10,000 images: 10 per class"),
        "data.val_subset_size": Change("5000", "5 per class: 50,000 every epoch would outlast the run"),
        "data.train_resolution": Change(160, "cheaper decoding on 2 vCPUs; the recipes' 176 otherwise"),
        "eval_resize": Change(232, SIZES_OF_THE_PAID_RUNS),
        "algorithms.channels_last": Change({}, CHANNELS_LAST),
    },
    "troubleshoot_subset": {
        "global_batch_size": Change(256, "one T4"),
        "lr": Change(0.1, "base_lr 0.1 at batch 256"),
        "optimizer.base_lr": Change(0.1, "the classic ResNet LR, safer for 'does it learn at all'"),
        "scheduler.t_warmup": Change("5ep", "a long warmup: a sixth of the run"),
        "max_duration": Change("30ep", "sized to the 100-class subset and ~1.5 hours"),
        "data.max_classes": Change(100, "the troubleshooting subset"),
        "data.max_samples_per_class": Change(500, "the troubleshooting subset"),
        "data.train_resolution": Change(176, SIZES_OF_THE_PAID_RUNS),
        "eval_resize": Change(232, SIZES_OF_THE_PAID_RUNS),
        "algorithms.channels_last": Change({}, CHANNELS_LAST),
    },
}


def published_for(recipe: str) -> dict[str, Published]:
    """Mosaic's values for the run this recipe follows: the baseline with its set's overrides."""
    follows = FOLLOWS[recipe]
    return {**BASELINE, **(SETS[follows] if follows else {})}


def in_mosaic_units(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """EMA's and SAM's settings written in samples, as the batches at 2048 they stand for (when exact)."""
    converted = dict(arguments)
    for key in ("half_life", "update_interval", "interval"):
        value = arguments.get(key)
        if not isinstance(value, str) or parse_time(value, key).unit != TimeUnit.SAMPLE:
            continue
        samples = int(parse_time(value, key).value)
        if samples % MOSAIC_BATCH == 0:
            batches = samples // MOSAIC_BATCH
            converted[key] = f"{batches}ba" if name == "ema" else batches
    return converted


def resolved(config: DictConfig, key: str) -> Any:
    """The recipe's value for a ``PUBLISHED`` key, as the run applies it."""
    if key == "lr":
        _, plan = build_optimizer(torch.nn.Linear(2, 2), config.optimizer, config.global_batch_size)
        return plan.lr
    if key == "weight_decay_per_epoch":
        optimizer, _ = build_optimizer(torch.nn.Linear(2, 2), config.optimizer, config.global_batch_size)
        return optimizer.param_groups[0]["weight_decay"] * IMAGENET_TRAIN_IMAGES / config.global_batch_size
    if key == "eval_resize":
        return eval_resize_size(config.data.eval_resolution, config.data.eval_crop_ratio)
    if key == "algorithms":
        return {
            name: in_mosaic_units(name, arguments)
            for name, arguments in enabled_algorithms(config.algorithms).items()
        }
    value = OmegaConf.select(config, key)
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


def expected_algorithms(recipe: str, algorithms: dict[str, Any]) -> dict[str, Any]:
    """The published set with the recipe's listed algorithm changes applied."""
    expected = dict(algorithms)
    for key, change in CHANGES[recipe].items():
        if not key.startswith("algorithms."):
            continue
        name = key.removeprefix("algorithms.")
        if change is DATA_SIDE_RESIZING:
            expected["data_progressive_resizing"] = expected.pop(name)
        else:
            expected[name] = change.value
    return expected


def same(value: Any, expected: Any) -> bool:
    """Floats to 1e-9, lists element by element, tables (an algorithm's arguments) key by key."""
    if isinstance(expected, float) or isinstance(value, float):
        return value == pytest.approx(expected, rel=1e-9)
    if isinstance(expected, list):
        return isinstance(value, list) and len(value) == len(expected) and all(map(same, value, expected))
    if isinstance(expected, dict):
        return (
            isinstance(value, dict)
            and value.keys() == expected.keys()
            and all(same(value[key], expected[key]) for key in expected)
        )
    return value == expected


def departures(
    config: DictConfig,
    table: dict[str, Published],
    changes: dict[str, Change],
    algorithms: Any = None,
    resolve: Callable[[DictConfig, str], Any] = resolved,
) -> list[str]:
    """Each key of ``table`` whose value (``resolve``: as the run applies it) is neither the published one nor its
    listed change, as a line naming the source; ``algorithms``, when given, is the expected algorithm set."""
    wrong = []
    for key, published in table.items():
        expected = changes[key].value if key in changes else published.value
        if key == "algorithms" and algorithms is not None:
            expected = algorithms
        value = resolve(config, key)
        if not same(value, expected):
            wrong.append(
                f"{key}: {value!r}, expected {expected!r} (published {published.value!r}, {published.source})"
            )
    return wrong


@pytest.mark.parametrize("recipe", sorted(FOLLOWS))
def test_recipe_keeps_every_published_value_it_does_not_change_on_purpose(recipe: str) -> None:
    table = published_for(recipe)
    algorithms = expected_algorithms(recipe, table["algorithms"].value)
    wrong = departures(load_run_recipe(recipe), table, CHANGES[recipe], algorithms)
    assert not wrong, f"{recipe} against {SOURCE}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("recipe", sorted(FOLLOWS))
def test_each_listed_change_is_a_change(recipe: str) -> None:
    """A row in CHANGES names a published key and a value other than the published one."""
    published = published_for(recipe)
    for key, change in CHANGES[recipe].items():
        if key.startswith("algorithms."):
            name = key.removeprefix("algorithms.")
            assert change.value != published["algorithms"].value.get(name), key
        else:
            assert key in published and not same(change.value, published[key].value), key
        assert change.why


@pytest.mark.parametrize("recipe", sorted(FOLLOWS))
def test_applied_lr_is_the_published_per_256_lr_scaled_linearly(recipe: str) -> None:
    """0.256 x batch / 256 at the recipe's batch; at Mosaic's batch of 2048 the published 2.048."""
    config = load_run_recipe(recipe)
    base_lr = config.optimizer.base_lr
    optimizer, _ = build_optimizer(torch.nn.Linear(2, 2), config.optimizer, config.global_batch_size)
    [group] = optimizer.param_groups
    assert group["lr"] == pytest.approx(base_lr * config.global_batch_size / 256)
    assert (group["momentum"], group["nesterov"]) == (0.875, False)
    # Mosaic's decay per image seen (5e-4 per step of 2048), so per epoch, at every phase's batch.
    assert group["weight_decay"] / config.global_batch_size == pytest.approx(5.0e-4 / MOSAIC_BATCH)
    at_2048, _ = build_optimizer(torch.nn.Linear(2, 2), config.optimizer, MOSAIC_BATCH)
    if base_lr == BASELINE["optimizer.base_lr"].value:
        assert at_2048.param_groups[0]["lr"] == pytest.approx(BASELINE["lr"].value)


@pytest.mark.parametrize("name", sorted(SETS))
def test_algorithm_set_is_mosaic_value_for_value(name: str) -> None:
    config = load_run_recipe(RECIPES_DIR / "algorithm_sets" / f"{name}.yaml")
    published = SETS[name]
    assert resolved(config, "algorithms") == published["algorithms"].value
    for key in RECIPE_SIZES:
        assert resolved(config, key) == published[key].value, key
    assert config.data.eval_resolution == BASELINE["data.eval_resolution"].value
    assert config.algorithms_tuned_for_batch == MOSAIC_BATCH


@pytest.mark.parametrize("name", sorted(SETS))
def test_batch_counted_settings_are_written_in_samples_of_batch_2048(name: str) -> None:
    """samples == Mosaic's batches x 2048, exactly, for every EMA and SAM setting Mosaic counts in batches."""
    algorithms = enabled_algorithms(
        load_run_recipe(RECIPES_DIR / "algorithm_sets" / f"{name}.yaml").algorithms
    )
    published = SETS[name]["algorithms"].value
    written = {("ema", key): algorithms["ema"][key] for key in EMA}
    if "sam" in published:
        written[("sam", "interval")] = algorithms["sam"]["interval"]
    for (algorithm, key), value in written.items():
        time = parse_time(value, f"algorithms.{algorithm}.{key}")
        batches = published[algorithm][key]
        batches = int(batches.removesuffix("ba")) if isinstance(batches, str) else batches
        assert time.unit == TimeUnit.SAMPLE and time.value == batches * MOSAIC_BATCH, (algorithm, key)


def test_g4dn_12xlarge_sees_the_published_images_per_ema_and_sam_step_count() -> None:
    """At batch 1024, the Medium set's 100/20-step EMA and 10-step SAM become 200/40 and 20 steps."""
    config = load_run_recipe("g4dn_12xlarge")
    algorithms = enabled_algorithms(config.algorithms)
    steps = {
        key: steps_in(value, key, batches_per_epoch=1, global_batch_size=config.global_batch_size)
        for key, value in (
            ("half_life", algorithms["ema"]["half_life"]),
            ("update_interval", algorithms["ema"]["update_interval"]),
            ("interval", algorithms["sam"]["interval"]),
        )
    }
    assert steps == {"half_life": 200, "update_interval": 40, "interval": 20}


def test_g4dn_xlarge_ema_is_the_published_fraction_of_an_epoch() -> None:
    """Mosaic's 100 and 20 of 625 batches per epoch, on the 100 x 250-image subset: 16 and 4 steps at 256."""
    config = load_run_recipe("g4dn_xlarge")
    epoch_images = config.data.max_classes * config.data.max_samples_per_class
    ema = enabled_algorithms(config.algorithms)["ema"]
    for key, published in EMA.items():
        fraction = int(published.removesuffix("ba")) * MOSAIC_BATCH / IMAGENET_TRAIN_IMAGES
        ours = parse_time(ema[key], key).value / epoch_images
        assert ours == pytest.approx(fraction, rel=0.01), key
    steps = [
        steps_in(ema[key], key, batches_per_epoch=1, global_batch_size=config.global_batch_size)
        for key in EMA
    ]
    assert steps == [16, 4]
