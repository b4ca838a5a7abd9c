"""The published reference recipes against their sources: the published value, ours, and why they differ.

- ``rsb_a3``, ResNet strikes back A3: open-mmlab/mmpretrain's configs/resnet/resnet50_8xb256-rsb-a3-100e_in1k.py
  (commit 14ced91), its bases _base_/datasets/imagenet_bs256_rsb_a3.py (08adec0) and
  _base_/schedules/imagenet_bs2048_rsb.py (24bcf06), and configs/resnet/README.md (13db819) for the 78.30 %;
  LAMB's defaults from timm's own (timm/optim/lamb.py, the installed timm).
- ``torchvision_v2``, torchvision's ResNet-50 IMAGENET1K_V2: pytorch/vision references/classification's ResNet
  command (``--batch-size 128 --lr 0.5 --lr-scheduler cosineannealinglr --lr-warmup-epochs 5 --lr-warmup-method
  linear --auto-augment ta_wide --epochs 600 --random-erase 0.1 --weight-decay 0.00002 --norm-weight-decay 0.0
  --label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 --train-crop-size 176 --model-ema
  --val-resize-size 232 --ra-sampler --ra-reps 4`` on 8 GPUs), train.py's defaults for the rest (commit 017e9b9)
  and sampler.py (775e760); torchvision/models/resnet.py for the 80.858 %.
- ``ffcv_rn50_88ep``: libffcv/ffcv-imagenet's rn50_configs/rn50_88_epochs.yaml (5bab20e), train_imagenet.py
  (606c584) and README.md (038bc26) for the 0.784.

Each recipe is resolved as ``train.py`` loads it; every published value must come out as published unless
``CHANGES`` lists the recipe's own value and the reason (the rule of tests/test_recipes_published.py). The schedules
the sources compute by formula (FFCV's resolution and LR, torchvision's EMA decay) are checked against those
formulas, epoch by epoch. Not compared: paths, checkpoint cadence and loader workers, which do not change what is
trained.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from composer.algorithms import EMA
from composer.core import Time, TimeUnit
from omegaconf import DictConfig

from algorithms.data_progressive_resizing import pinned_size, scale_at
from algorithms.registry import build_algorithms, enabled_algorithms
from model import build_model
from recipes.schema import ModelConfig
from tests.test_algorithms_registry import NUM_CLASSES, train_briefly
from tests.test_recipes_published import BASELINE, Change, Published, departures, resolved, same
from tools.planning import lr_at
from training.optimization import build_optimizer, build_scheduler, parameter_weight_decays
from training.preflight import load_run_recipe

IMAGENET_TRAIN_IMAGES = 1_281_167
REPOSITORY = Path(__file__).resolve().parent.parent

MMPRETRAIN = "mmpretrain configs/resnet/resnet50_8xb256-rsb-a3-100e_in1k.py"
TIMM = "timm/models/resnet.py (the paper's code)"
MMPRETRAIN_DATA = "mmpretrain _base_/datasets/imagenet_bs256_rsb_a3.py"
MMPRETRAIN_SCHEDULE = "mmpretrain _base_/schedules/imagenet_bs2048_rsb.py"
RSB_A3: dict[str, Published] = {
    "model.name": Published("resnet50", f"{MMPRETRAIN} _base_/models/resnet50.py"),
    "model.loss": Published("binary_cross_entropy_mean", f"{MMPRETRAIN} head loss use_sigmoid=True (BCE)"),
    "model.init": Published(
        "torchvision", f"{TIMM}: init_weights: Kaiming-normal fan-out convolutions, BN 1/0"
    ),
    "model.zero_init_residual": Published(True, f"{TIMM}: zero_init_last=True (mmpretrain's too)"),
    "model.head": Published("fc", f"{TIMM}: a Linear classifier after global pooling"),
    "model.classifier_bias": Published(
        "layer_default", f"{TIMM}: leaves fc at nn.Linear's init; timm's BinaryCrossEntropy sets no bias"
    ),
    "model.sync_batchnorm": Published(True, f"{MMPRETRAIN} backbone norm_cfg type='SyncBN'"),
    "model.drop_path_rate": Published(0.0, f"{MMPRETRAIN} sets no drop_path_rate"),
    "optimizer.weight_decay_batch": Published(2048, "the published run's batch"),
    "max_duration": Published("100ep", f"{MMPRETRAIN_SCHEDULE} max_epochs=100"),
    "global_batch_size": Published(2048, f"{MMPRETRAIN_DATA} batch_size=256 on 8 GPUs (8xb256)"),
    "optimizer.name": Published("lamb", f"{MMPRETRAIN_SCHEDULE} type='Lamb'"),
    "lr": Published(0.008, f"{MMPRETRAIN} optimizer lr=0.008"),
    "optimizer.weight_decay": Published(0.02, f"{MMPRETRAIN_SCHEDULE} weight_decay=0.02"),
    "optimizer.exclude_bn_and_bias_from_weight_decay": Published(
        True, f"{MMPRETRAIN} bias_decay_mult=0., norm_decay_mult=0."
    ),
    "optimizer.eps": Published(1.0e-6, "timm/optim/lamb.py Lamb(eps=1e-6)"),
    "optimizer.betas": Published([0.9, 0.999], "timm/optim/lamb.py Lamb(betas=(0.9, 0.999))"),
    "optimizer.max_grad_norm": Published(1.0, "timm/optim/lamb.py Lamb(max_grad_norm=1.0)"),
    "scheduler.name": Published("cosine_warmup", f"{MMPRETRAIN_SCHEDULE} LinearLR then CosineAnnealingLR"),
    "scheduler.t_warmup": Published("5ep", f"{MMPRETRAIN_SCHEDULE} LinearLR end=5"),
    "scheduler.warmup_start": Published(1.0e-4, f"{MMPRETRAIN_SCHEDULE} LinearLR start_factor=0.0001"),
    "scheduler.alpha_f": Published(1.0e-6 / 0.008, f"{MMPRETRAIN_SCHEDULE} eta_min=1.0e-6 (of 0.008)"),
    "precision": Published("fp32", f"{MMPRETRAIN} sets no fp16 or AMP optimizer wrapper"),
    "algorithms": Published(
        {"mixup_or_cutmix": {"mixup_alpha": 0.1, "cutmix_alpha": 1.0, "switch_prob": 0.5}},
        f"{MMPRETRAIN} augments Mixup alpha=0.1, CutMix alpha=1.0 (one of them per batch, evenly)",
    ),
    "data.train_resolution": Published(224, f"{MMPRETRAIN_DATA} RandomResizedCrop scale=224"),
    "data.crop_scale": Published([0.08, 1.0], "mmpretrain RandomResizedCrop's default crop_ratio_range"),
    "data.crop_ratio": Published([0.75, 4 / 3], "mmpretrain RandomResizedCrop's default aspect_ratio_range"),
    "data.interpolation": Published("bicubic", f"{MMPRETRAIN_DATA} interpolation='bicubic'"),
    "data.horizontal_flip": Published(True, f"{MMPRETRAIN_DATA} RandomFlip prob=0.5"),
    "data.auto_augment": Published(
        "rand-m6-mstd0.5-inc1",
        f"{MMPRETRAIN_DATA} RandAugment timm_increasing, num_policies=2, magnitude_level=6, magnitude_std=0.5",
    ),
    "data.color_jitter": Published(None, f"{MMPRETRAIN_DATA} has no ColorJitter"),
    "data.random_erasing": Published(0.0, f"{MMPRETRAIN_DATA} has no RandomErasing"),
    "data.eval_resolution": Published(224, f"{MMPRETRAIN_DATA} CenterCrop crop_size=224"),
    "eval_resize": Published(236, f"{MMPRETRAIN_DATA} ResizeEdge scale=236, edge='short'"),
}

VISION = "pytorch/vision references/classification"
V2: dict[str, Published] = {
    "model.name": Published("resnet50", f"{VISION} README --model resnet50"),
    "model.loss": Published("cross_entropy", f"{VISION}/train.py nn.CrossEntropyLoss"),
    "model.init": Published(
        "torchvision", f"{VISION}/train.py torchvision.models.get_model, no init of its own"
    ),
    "model.zero_init_residual": Published(False, f"{VISION}/train.py get_model(weights, num_classes) only"),
    "model.head": Published("fc", "torchvision/models/resnet.py fc"),
    "model.classifier_bias": Published(
        "layer_default", "torchvision/models/resnet.py leaves fc at nn.Linear's"
    ),
    "model.sync_batchnorm": Published(False, f"{VISION}/train.py --sync-bn, not in the README's command"),
    "model.drop_path_rate": Published(0.0, "torchvision's resnet50 has no drop path"),
    "optimizer.weight_decay_batch": Published(1024, "the published run's batch"),
    "max_duration": Published("600ep", f"{VISION} README --epochs 600"),
    "global_batch_size": Published(1024, f"{VISION} README --batch-size 128 on 8 GPUs"),
    "optimizer.name": Published("sgd", f"{VISION}/train.py --opt default sgd (torch.optim.SGD)"),
    "lr": Published(0.5, f"{VISION} README --lr 0.5"),
    "optimizer.momentum": Published(0.9, f"{VISION}/train.py --momentum default 0.9"),
    "optimizer.nesterov": Published(False, f"{VISION}/train.py sgd without nesterov"),
    "optimizer.weight_decay": Published(2.0e-5, f"{VISION} README --weight-decay 0.00002"),
    "optimizer.norm_weight_decay": Published(0.0, f"{VISION} README --norm-weight-decay 0.0"),
    "scheduler.name": Published("cosine_warmup", f"{VISION} README --lr-scheduler cosineannealinglr"),
    "scheduler.t_warmup": Published("5ep", f"{VISION} README --lr-warmup-epochs 5 --lr-warmup-method linear"),
    "scheduler.warmup_start": Published(0.01, f"{VISION}/train.py --lr-warmup-decay default 0.01"),
    "scheduler.alpha_f": Published(0.0, f"{VISION}/train.py --lr-min default 0.0"),
    "precision": Published("fp32", f"{VISION} README has no --amp"),
    "algorithms": Published(
        {
            "label_smoothing": {"smoothing": 0.1},
            "mixup_or_cutmix": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "switch_prob": 0.5},
            "ema": {
                "half_life": None,
                "smoothing": 1 - 2e-5 * 1024 * 32 / 600,
                "update_interval": "32768sp",
                "ema_start": "5ep",
            },
        },
        f"{VISION} README --label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 (RandomChoice of the two) "
        "--model-ema: train.py --model-ema-steps 32, --model-ema-decay 0.99998 adjusted by world x batch x steps "
        "/ epochs, the EMA reset during the 5 warmup epochs",
    ),
    "data.train_resolution": Published(176, f"{VISION} README --train-crop-size 176"),
    "data.crop_scale": Published([0.08, 1.0], "RandomResizedCrop's default scale"),
    "data.crop_ratio": Published([0.75, 4 / 3], "RandomResizedCrop's default ratio"),
    "data.interpolation": Published("bilinear", f"{VISION}/train.py --interpolation default bilinear"),
    "data.horizontal_flip": Published(True, f"{VISION}/presets.py hflip_prob=0.5"),
    "data.auto_augment": Published("ta_wide", f"{VISION} README --auto-augment ta_wide"),
    "data.random_erasing": Published(0.1, f"{VISION} README --random-erase 0.1"),
    "data.repeated_augmentation": Published(4, f"{VISION} README --ra-sampler --ra-reps 4"),
    "data.eval_resolution": Published(224, f"{VISION}/train.py --val-crop-size default 224"),
    "eval_resize": Published(232, f"{VISION} README --val-resize-size 232"),
}

FFCV = "ffcv-imagenet rn50_configs/rn50_88_epochs.yaml"
FFCV_CODE = "ffcv-imagenet train_imagenet.py"
FFCV_88: dict[str, Published] = {
    "model.name": Published("resnet50", f"{FFCV} model.arch: resnet50"),
    "model.loss": Published("cross_entropy", f"{FFCV_CODE} CrossEntropyLoss(label_smoothing=...)"),
    "model.flip_tta": Published(True, f"{FFCV} validation.lr_tta: true"),
    "model.init": Published("torchvision", f"{FFCV_CODE} getattr(models, arch)(pretrained=0)"),
    "model.zero_init_residual": Published(False, f"{FFCV_CODE} getattr(models, arch)(pretrained=0) only"),
    "model.head": Published("fc", "torchvision/models/resnet.py fc"),
    "model.classifier_bias": Published(
        "layer_default", "torchvision/models/resnet.py leaves fc at nn.Linear's"
    ),
    "model.sync_batchnorm": Published(False, f"{FFCV_CODE} DistributedDataParallel(model), no SyncBatchNorm"),
    "model.drop_path_rate": Published(0.0, "torchvision's resnet50 has no drop path"),
    "optimizer.weight_decay_batch": Published(4096, "the published run's batch"),
    "max_duration": Published("88ep", f"{FFCV} training.epochs: 88"),
    "global_batch_size": Published(4096, f"{FFCV} training.batch_size: 512 x dist.world_size: 8"),
    "optimizer.name": Published("sgd", f"{FFCV} training.optimizer: sgd ({FFCV_CODE} ch.optim.SGD)"),
    "lr": Published(1.7, f"{FFCV} lr.lr: 1.7 (applied as is)"),
    "optimizer.momentum": Published(0.9, f"{FFCV} training.momentum: 0.9"),
    "optimizer.nesterov": Published(False, f"{FFCV_CODE} SGD without nesterov"),
    "optimizer.weight_decay": Published(1.0e-4, f"{FFCV} training.weight_decay: 0.0001"),
    "optimizer.no_weight_decay_names": Published(["bn"], f"{FFCV_CODE} create_optimizer: 'bn' in name -> 0"),
    "optimizer.exclude_bn_and_bias_from_weight_decay": Published(False, f"{FFCV_CODE} decays biases"),
    "scheduler.name": Published("linear_warmup", f"{FFCV} lr_schedule_type: cyclic (get_cyclic_lr)"),
    "scheduler.t_warmup": Published("2ep", f"{FFCV_CODE} lr_peak_epoch default 2"),
    "scheduler.warmup_start": Published(1.0e-4, f"{FFCV_CODE} get_cyclic_lr starts at 1e-4 * lr"),
    "scheduler.alpha_f": Published(0.0, f"{FFCV_CODE} get_cyclic_lr ends at 0"),
    "precision": Published("amp_fp16", f"{FFCV_CODE} autocast() and GradScaler"),
    "algorithms": Published(
        {
            "label_smoothing": {"smoothing": 0.1},
            "blurpool": {
                "replace_convs": True,
                "replace_maxpools": False,
                "blur_first": True,
                "min_channels": 16,
            },
            "channels_last": {},
            "data_progressive_resizing": {
                "initial_scale": 160 / 192,
                "delay_fraction": 65 / 88,
                "finetune_fraction": 12 / 88,
                "size_increment": 32,
            },
        },
        f"{FFCV} label_smoothing: 0.1, use_blurpool: 1 ({FFCV_CODE} apply_blurpool: strided convolutions with "
        "16+ input channels, blurred first), resolution min_res 160, max_res 192, start_ramp 65, end_ramp 76; "
        f"{FFCV_CODE} model.to(memory_format=ch.channels_last)",
    ),
    "data.train_resolution": Published(192, f"{FFCV} resolution.max_res: 192"),
    "data.crop_scale": Published([0.08, 1.0], "FFCV RandomResizedCropRGBImageDecoder's default scale"),
    "data.crop_ratio": Published([0.75, 4 / 3], "FFCV RandomResizedCropRGBImageDecoder's default ratio"),
    "data.horizontal_flip": Published(True, f"{FFCV_CODE} RandomHorizontalFlip()"),
    "data.auto_augment": Published(None, f"{FFCV_CODE} no other augmentation"),
    "data.eval_resolution": Published(256, f"{FFCV} validation.resolution: 256"),
    "data.eval_crop_ratio": Published(224 / 256, f"{FFCV_CODE} DEFAULT_CROP_RATIO = 224/256"),
}

PUBLISHED = {"rsb_a3": RSB_A3, "torchvision_v2": V2, "ffcv_rn50_88ep": FFCV_88}

CHANGES: dict[str, dict[str, Change]] = {
    "rsb_a3": {
        "data.train_resolution": Change(
            160,
            "the paper's A3 trains at 160 px (timm's 78.05 %); mmpretrain's port trains at 224 for its 78.30 %",
        ),
        "precision": Change("amp_fp16", "the paper trains every procedure in mixed precision"),
    },
    "torchvision_v2": {},
    "ffcv_rn50_88ep": {},
}


# Model keys that change neither the network nor its start: the class count follows the data, a probe's
# backbone and test-time flips are not part of a supervised recipe's training.
NOT_THE_NETWORK = {"model.num_classes", "model.backbone_checkpoint", "model.flip_tta"}


@pytest.mark.parametrize("table", ["mosaic", *sorted(PUBLISHED)])
def test_every_key_that_shapes_the_network_or_its_start_has_a_row(table: str) -> None:
    """A schema default cannot hide a departure: each model key that changes the network or its initial weights
    (architecture, init, zero-init, the classifier's start, the BatchNorm kind) is pinned against the source."""
    rows = BASELINE if table == "mosaic" else PUBLISHED[table]
    network_keys = {f"model.{field.name}" for field in dataclasses.fields(ModelConfig)} - NOT_THE_NETWORK
    assert network_keys - rows.keys() == set()


def as_written(config: DictConfig, key: str) -> Any:
    """``resolved``, but the algorithms as written: samples stay samples (Mosaic's recipes count batches of 2048;
    test_torchvision_ema... converts these at the run's own batch)."""
    return enabled_algorithms(config.algorithms) if key == "algorithms" else resolved(config, key)


@pytest.mark.parametrize("recipe", sorted(PUBLISHED))
def test_recipe_keeps_every_published_value_it_does_not_change_on_purpose(recipe: str) -> None:
    wrong = departures(load_run_recipe(recipe), PUBLISHED[recipe], CHANGES[recipe], resolve=as_written)
    assert not wrong, f"{recipe}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("recipe", sorted(PUBLISHED))
def test_each_listed_change_is_a_change(recipe: str) -> None:
    for key, change in CHANGES[recipe].items():
        assert key in PUBLISHED[recipe] and not same(change.value, PUBLISHED[recipe][key].value), key
        assert change.why


@pytest.mark.parametrize("recipe", sorted(PUBLISHED))
def test_header_quotes_its_source_and_published_accuracy(recipe: str) -> None:
    text = (REPOSITORY / "recipes" / f"{recipe}.yaml").read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    accuracy = {"rsb_a3": "78.05 %", "torchvision_v2": "80.858 %", "ffcv_rn50_88ep": "78.4 %"}[recipe]
    source = {"rsb_a3": "mmpretrain", "torchvision_v2": "pytorch/vision", "ffcv_rn50_88ep": "libffcv"}[recipe]
    assert accuracy in header and source in header


def test_ffcv_resolution_is_ffcvs_160_to_192_ramp_rounded_to_32_every_epoch() -> None:
    """train_imagenet.py get_resolution: min_res through start_ramp, max_res from end_ramp, np.interp rounded to
    multiples of 32 between; the data-side resizing gives each of the 88 epochs the same size."""
    config = load_run_recipe("ffcv_rn50_88ep")
    resizing = enabled_algorithms(config.algorithms)["data_progressive_resizing"]

    def ffcv(epoch: int) -> int:
        if epoch <= 65:
            return 160
        if epoch >= 76:
            return 192
        return int(np.round(np.interp([epoch], [65, 76], [160, 192])[0] / 32)) * 32

    full = config.data.train_resolution
    ours = [
        min(full, pinned_size(full, scale_at(epoch / 88, **_schedule(resizing)), resizing["size_increment"]))
        for epoch in range(88)
    ]
    assert ours == [ffcv(epoch) for epoch in range(88)]
    assert ours.index(192) == 71


def _schedule(arguments: dict) -> dict:
    return {key: arguments[key] for key in ("initial_scale", "delay_fraction", "finetune_fraction")}


def test_ffcv_lr_is_its_cyclic_schedule_at_every_step() -> None:
    """get_cyclic_lr: np.interp over [0, 2, 88] epochs of [1e-4 lr, lr, 0], interpolated linearly over each
    epoch's iterations (train_loop): at ImageNet's 312 steps per epoch of 4096, every step's LR agrees."""
    config = load_run_recipe("ffcv_rn50_88ep")
    batches = IMAGENET_TRAIN_IMAGES // config.global_batch_size
    optimizer, plan = build_optimizer(torch.nn.Linear(2, 2), config.optimizer, config.global_batch_size)
    scheduler = build_scheduler(
        config.scheduler, optimizer, config.max_duration, batches, config.global_batch_size
    )
    steps = range(0, 88 * batches, 37)
    ours = [lr_at(scheduler, plan.lr, step, config, batches) for step in steps]
    ffcv = np.interp([step / batches for step in steps], [0, 2, 88], [1e-4 * 1.7, 1.7, 0])
    assert ours == pytest.approx(ffcv, rel=1e-6, abs=1e-9)


def test_each_reference_weight_decay_rule_leaves_its_sources_parameters_undecayed() -> None:
    """On torchvision's resnet50 (161 tensors): FFCV's 'bn' rule decays downsample.1 and fc.bias, torchvision's
    norm rule decays fc.bias only, mmpretrain's 1-D rule neither."""
    net = torchvision.models.resnet50()
    undecayed = {
        recipe: {
            name
            for name, decay in parameter_weight_decays(net, load_run_recipe(recipe).optimizer).items()
            if decay == 0
        }
        for recipe in PUBLISHED
    }
    assert {name for name, _ in net.named_parameters() if "bn" in name} == undecayed["ffcv_rn50_88ep"]
    assert undecayed["torchvision_v2"] == undecayed["ffcv_rn50_88ep"] | {
        name for name, _ in net.named_parameters() if "downsample.1" in name
    }
    assert undecayed["rsb_a3"] == undecayed["torchvision_v2"] | {"fc.bias"}


def test_torchvision_ema_updates_every_32_steps_with_the_adjusted_decay() -> None:
    """train.py: EMA every --model-ema-steps 32 steps with decay 1 - min(1, (1 - 0.99998) x world x batch x steps
    / epochs), from the end of warmup; the recipe's samples-based interval is 32 steps at its batch of 1024."""
    config = load_run_recipe("torchvision_v2")
    ema = next(
        algorithm
        for algorithm in build_algorithms(config.algorithms, global_batch_size=config.global_batch_size)
        if isinstance(algorithm, EMA)
    )
    assert ema.update_interval == Time(32, TimeUnit.BATCH)
    assert ema.smoothing == pytest.approx(1 - min(1.0, (1 - 0.99998) * 8 * 128 * 32 / 600))
    assert ema.ema_start == Time(5, TimeUnit.EPOCH)


def test_rsb_a3_schedule_warms_from_1e4_of_the_peak_and_ends_at_eta_min() -> None:
    config = load_run_recipe("rsb_a3")
    batches = IMAGENET_TRAIN_IMAGES // config.global_batch_size
    optimizer, plan = build_optimizer(torch.nn.Linear(2, 2), config.optimizer, config.global_batch_size)
    scheduler = build_scheduler(
        config.scheduler, optimizer, config.max_duration, batches, config.global_batch_size
    )
    assert lr_at(scheduler, plan.lr, 0, config, batches) == pytest.approx(0.008 * 1e-4)
    assert lr_at(scheduler, plan.lr, 5 * batches, config, batches) == pytest.approx(0.008)
    end = lr_at(scheduler, plan.lr, 100 * batches, config, batches)
    assert end == pytest.approx(1.0e-6) and math.isfinite(end)


MIXING = ("mixup", "cutmix", "mixup_or_cutmix")


@pytest.mark.parametrize(
    ("recipe", "source_order"),
    [
        (
            "torchvision_v2",
            "mix, then smooth: train.py's CrossEntropyLoss(label_smoothing) on the mixed target",
        ),
        ("g4dn_12xlarge", "smooth, then mix: Mosaic's main.py lists LabelSmoothing before MixUp"),
    ],
)
def test_label_smoothing_meets_the_mixed_target_in_the_sources_order(recipe: str, source_order: str) -> None:
    """Composer runs BEFORE_LOSS algorithms in list order, and MixUp keeps the partner's target from before
    label smoothing. Built in the order the recipe ships: smoothing after mixing gives every class outside the
    pair exactly smoothing / K (torchvision's V2); smoothing first gives them (1 - mixing) x smoothing / K,
    the partner's share unsmoothed (Mosaic's Medium and Hot, as their main.py orders them)."""
    enabled = enabled_algorithms(load_run_recipe(recipe).algorithms)
    shipped = {name: arguments for name, arguments in enabled.items() if name in (*MIXING, "label_smoothing")}
    assert len(shipped) == 2, shipped
    trainer, probe = train_briefly(shipped)
    uniform = enabled["label_smoothing"]["smoothing"] / NUM_CLASSES
    smallest = probe.loss_targets[-1].min(dim=1).values
    if source_order.startswith("mix, then smooth"):
        assert list(shipped).index("label_smoothing") == 1
        torch.testing.assert_close(smallest, torch.full_like(smallest, uniform))
    else:
        assert list(shipped).index("label_smoothing") == 0
        [mixup] = [algorithm for algorithm in trainer.state.algorithms if type(algorithm).__name__ == "MixUp"]
        assert abs((1 - mixup.mixing) * uniform - uniform) > 1e-4  # this seed's mixing tells the orders apart
        torch.testing.assert_close(smallest, torch.full_like(smallest, (1 - mixup.mixing) * uniform))


def test_rsb_a3_starts_its_network_as_timm_does() -> None:
    """timm's resnet50: every block's last BatchNorm at 0, the classifier at nn.Linear's own init (bias uniform in
    +-1/sqrt(2048)); the BCE loss does not move the bias to -log(C) as Mosaic's recipes do."""
    config = load_run_recipe("rsb_a3")
    network = build_model(config.model, 10).module
    assert all(
        torch.count_nonzero(block.bn3.weight) == 0 for block in network.modules() if hasattr(block, "bn3")
    )
    bound = 1 / math.sqrt(network.fc.in_features)
    assert network.fc.bias.abs().max() <= bound and network.fc.bias.std() > 0
    config.model.classifier_bias = "chance_under_bce"
    mosaic_start = build_model(config.model, 10).module.fc.bias
    torch.testing.assert_close(mosaic_start, torch.full_like(mosaic_start, -math.log(10)))
