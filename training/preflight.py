"""Recipe checks that need more than the schema: what a run would get wrong, found before any work starts.

``check_recipe(config, facts)`` compares the recipe with the facts of the run (world size, device, the data's
class count and batches per epoch) and returns findings. Errors are recipes that cannot do what they say: the
batch does not split over the processes, SWA would never average or never swap its average in, progressive
resizing would make empty images, model.num_classes contradicts the data (build_model refuses it too; here it
is listed with the others). ``raise_for_errors`` stops with all of them in one message. Warnings are recipes
that run but probably not as meant; train.py prints each once and records it in the run folder. A warning, not
an error, wherever a legitimate run can look the same or nothing breaks: a pipeline check shortened to a few
batches keeps the recipe's warmup and EMA half-life; ResNet pools adaptively, so inputs under its 32 px stride
still train (the test suite runs every recipe at 32 px with its progressive resizing on); mixed precision on a
CPU trains in fp32; model.sync_batchnorm on one process or a CPU keeps BatchNorm; EMA and SAM settings counted in
steps may have been re-tuned for the run's batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from algorithms.data_progressive_resizing import pinned_size
from algorithms.registry import batch_counted_settings, enabled_algorithms, validate_recipe_algorithms
from callbacks.findings import Finding
from data.loaders import split_batch_over_processes
from model import PREACT_NAMES, batchnorm_syncs
from recipes.durations import run_steps, steps_in
from recipes.errors import UsageError
from recipes.loading import load_recipe
from recipes.schema import DataConfig
from training.hardware import parse_hardware
from training.optimization import DECOUPLED_OPTIMIZERS, scale_learning_rate, warmup_steps

SOURCE = "recipe_check"
# Goyal et al. 2017 (arXiv:1706.02677) scale ResNet-50's LR as 0.1 x batch/256 and warm it up gradually over 5
# epochs for large batches: at that LR, the first steps of a large batch are unstable without it.
LARGE_BATCH = 1024
# The algorithms a MoCo v3 run can take. The others assume one view and a label per image (MixUp, CutMix,
# label smoothing), resize or drop pixels of (B, 3, H, W) batches (progressive_resizing, colout), insert
# themselves into a supervised transform (randaugment), or rewrite or average the model in ways the momentum
# encoder's copy does not follow (blurpool, stochastic depth, EMA, SWA, SAM) and are not yet tested with it.
PRETRAINING_ALGORITHMS = ("channels_last", "data_progressive_resizing")
# Supervised augmentation keys a MoCo v3 run would ignore: its two views have their own (data.two_views), and
# train_transform builds them without these. Each with its off value.
SUPERVISED_AUGMENTATIONS = {"color_jitter": None, "auto_augment": None, "random_erasing": 0.0}
# Algorithms a linear probe refuses: BlurPool and StochasticDepth change the backbone's function (the probe
# would measure other features than the pretrained ones); SAM adds a second pass per step to a convex problem.
# SqueezeExcite, Factorize and WeightStandardization rewrite the pretrained convolutions too.
PROBE_REFUSED_ALGORITHMS = (
    "blurpool",
    "stochastic_depth",
    "sam",
    "squeeze_excite",
    "factorize",
    "weight_standardization",
)
# Under FSDP1: SelectiveBackprop's selection pass is a whole-batch forward through the wrapped model at
# AFTER_DATALOADER, before Composer splits the batch into microbatches; LayerFreezing flips requires_grad and
# removes parameters from the optimizer at epoch ends, after FSDP has flattened them into FlatParameters.
FSDP_REFUSED_ALGORITHMS = {
    "selective_backprop": "its selection pass runs the FSDP-wrapped model on the whole per-device batch before "
    "Composer splits it into microbatches (all-gathering every layer outside the training step, at a size "
    "device_train_microbatch_size does not bound)",
    "layer_freezing": "it flips requires_grad and removes parameters from the optimizer at epoch ends, after FSDP "
    "has flattened each wrapped block's parameters into one FlatParameter whose gradients it keeps computing",
}
REFERENCE_LR_PER_256 = 0.1
LARGE_LR_FRACTION = 0.8
# ResNet downsamples by 32 overall: below 32 px its last stages see a single pixel.
RESNET_TOTAL_STRIDE = 32
RESIZING_ALGORITHMS = ("progressive_resizing", "data_progressive_resizing")
MIXED_PRECISIONS = ("amp_fp16", "amp_bf16")


@dataclass(frozen=True)
class RecipeFacts:
    """What the checks need beyond the recipe."""

    # Training processes (GPUs, or 1 on a CPU).
    world_size: int
    # "cpu" or "gpu": where the run trains.
    device: str
    # Classes in the data, after data.max_classes.
    num_classes: int
    # Optimizer steps per epoch on each process (the training loader's length).
    batches_per_epoch: int


def check_recipe(config: DictConfig, facts: RecipeFacts) -> list[Finding]:
    """Every finding for this recipe under these facts, errors and warnings, in a stable order."""
    total = run_steps_of(config, facts)
    return [
        *_batch_split(config, facts),
        *_warmup(config, facts, total),
        *_large_batch_without_warmup(config, facts, total),
        *_swa(config, facts, total),
        *_ema(config, facts, total),
        *_batch_counted_at_other_batch(config),
        *_weight_decay_at_other_batch(config),
        *_num_classes(config, facts),
        *_progressive_resizing(config),
        *_precision(config, facts),
        *_world_size_against_hardware(config, facts),
        *_algorithms_for_task(config),
        *_augmentations_for_task(config),
        *_linear_probe(config),
        *_sync_batchnorm(config, facts),
        *_preact_architecture(config),
        *_profiler(config, facts),
        *_fsdp(config, facts),
    ]


def _algorithms_for_task(config: DictConfig) -> list[Finding]:
    if config.task != "moco_v3":
        return []
    refused = [name for name in enabled_algorithms(config.algorithms) if name not in PRETRAINING_ALGORITHMS]
    if not refused:
        return []
    return [
        _finding(
            "algorithm_not_for_pretraining",
            "error",
            f"task=moco_v3 takes only {', '.join(PRETRAINING_ALGORITHMS)} of the algorithms; "
            f"{', '.join(refused)} assume supervised, one-view batches or a model without a momentum encoder. "
            f"Switch them off: {_switched_off(refused)}.",
        )
    ]


def _augmentations_for_task(config: DictConfig) -> list[Finding]:
    """The supervised augmentation keys mean nothing to a MoCo v3 run: say so rather than ignore them."""
    if config.task != "moco_v3":
        return []
    set_keys = [key for key, off in SUPERVISED_AUGMENTATIONS.items() if config.data[key] != off]
    if not set_keys:
        return []
    settings = ", ".join(f"data.{key}={config.data[key]}" for key in set_keys)
    off_values = {key: "null" if off is None else off for key, off in SUPERVISED_AUGMENTATIONS.items()}
    switched_off = " ".join(f"data.{key}={off_values[key]}" for key in set_keys)
    return [
        _finding(
            "augmentation_not_for_pretraining",
            "error",
            f"{settings}: task=moco_v3 ignores these supervised augmentations, its two views are augmented by "
            f"data.two_views. Remove them ({switched_off}), or tune data.two_views instead.",
        )
    ]


def _switched_off(names: list[str]) -> str:
    """The overrides that switch the named algorithms off."""
    return " ".join(f"algorithms.{name}=null" for name in names)


def _linear_probe(config: DictConfig) -> list[Finding]:
    """A linear probe needs the pretraining checkpoint and a backbone left as pretrained; the checkpoint key means
    nothing under another task."""
    checkpoint = config.model.backbone_checkpoint
    if config.task != "linear_probe":
        if checkpoint is None:
            return []
        return [
            _finding(
                "backbone_checkpoint_unused",
                "error",
                f"model.backbone_checkpoint={checkpoint} is only read under task=linear_probe, and this recipe has "
                f"task={config.task}: it would be ignored. Set task=linear_probe, or remove "
                "model.backbone_checkpoint.",
            )
        ]
    findings = []
    if checkpoint is None:
        findings.append(
            _finding(
                "linear_probe_without_backbone",
                "error",
                "task=linear_probe trains a classifier on a frozen pretrained backbone, but "
                "model.backbone_checkpoint is not set: set it to the checkpoint of a task=moco_v3 run, "
                "e.g. model.backbone_checkpoint=runs/<run_name>/ep4-ba88-rank0.pt (a file or an s3:// URI).",
            )
        )
    refused = [name for name in enabled_algorithms(config.algorithms) if name in PROBE_REFUSED_ALGORITHMS]
    if refused:
        findings.append(
            _finding(
                "algorithm_not_for_linear_probe",
                "error",
                f"task=linear_probe measures the pretrained backbone as it is; {', '.join(refused)} would change "
                "it or the probe (BlurPool adds blur layers and StochasticDepth rescales residual branches, so "
                "the features are no longer the pretrained ones; SqueezeExcite, Factorize and "
                "WeightStandardization rewrite its convolutions; SAM doubles every step for flat minima a "
                f"linear classifier on fixed features does not have). Switch them off: {_switched_off(refused)}.",
            )
        )
    return findings


def _sync_batchnorm(config: DictConfig, facts: RecipeFacts) -> list[Finding]:
    """model.sync_batchnorm: a supervised key (MoCo v3 has its own, a probe's BatchNorm is frozen in eval mode,
    where SyncBatchNorm synchronises nothing), and one that converts nothing on one process or a CPU
    (``model.batchnorm_syncs``, the rule the model builders follow)."""
    if not config.model.sync_batchnorm:
        return []
    if config.task != "supervised":
        instead = (
            "moco.sync_batchnorm is MoCo v3's own key (on by default)"
            if config.task == "moco_v3"
            else "the probe's backbone is frozen and held in eval mode, where BatchNorm uses its pretrained "
            "running statistics and SyncBatchNorm would synchronise nothing"
        )
        return [
            _finding(
                "sync_batchnorm_not_for_task",
                "error",
                f"model.sync_batchnorm=true is read under task=supervised only, and this recipe has "
                f"task={config.task}: {instead}. Remove model.sync_batchnorm.",
            )
        ]
    if batchnorm_syncs(facts.world_size, facts.device):
        return []
    return [
        _finding(
            "sync_batchnorm_without_processes",
            "warning",
            f"model.sync_batchnorm=true, but this run is {facts.world_size} process(es) on the {facts.device}: "
            "BatchNorm stays per-process BatchNorm, as SyncBatchNorm needs several GPU processes to share "
            "statistics (PyTorch's raises on CPU tensors). Nothing to fix for a check on one GPU or the CPU; "
            "for the recipe's run launch one process per GPU (composer -n <GPUs> train.py ...).",
        )
    ]


def _preact_architecture(config: DictConfig) -> list[Finding]:
    """What timm's pre-activation ResNets (``model.PREACT_NAMES``) cannot do here: Composer's StochasticDepth,
    which replaces torchvision's Bottleneck only, and the self-supervised tasks, built on torchvision's ResNet."""
    name = config.model.name
    if name not in PREACT_NAMES:
        return []
    findings = []
    if "stochastic_depth" in enabled_algorithms(config.algorithms):
        findings.append(
            _finding(
                "stochastic_depth_not_for_preact",
                "error",
                f"algorithms.stochastic_depth with model.name={name}: Composer's StochasticDepth replaces "
                "torchvision's Bottleneck blocks only (target_layer_name ResNetBottleneck), and timm's "
                "pre-activation blocks are not those, so it would change nothing. Set "
                "algorithms.stochastic_depth=null and use timm's own stochastic depth, model.drop_path_rate "
                "(e.g. 0.05), or a torchvision ResNet (model.name=resnet50).",
            )
        )
    if config.task != "supervised":
        findings.append(
            _finding(
                "preact_not_for_task",
                "error",
                f"model.name={name} (timm's pre-activation ResNet) trains under task=supervised only; task="
                f"{config.task} is built on torchvision's ResNet (its layers, keys and k-NN features). Use "
                "model.name=resnet50 for it.",
            )
        )
    return findings


def raise_for_errors(findings: list[Finding]) -> None:
    """One UsageError naming every error finding (not just the first); nothing when there are none."""
    errors = [finding for finding in findings if finding.severity == "error"]
    if errors:
        lines = "\n".join(f"  - [{error.code}] {error.message}" for error in errors)
        raise UsageError(f"The recipe has {len(errors)} problem(s) to fix before training:\n{lines}")


def check_before_training(config: DictConfig, facts: RecipeFacts) -> list[Finding]:
    """Run the checks: stop on errors (all in one UsageError), return the warnings to print and record."""
    findings = check_recipe(config, facts)
    raise_for_errors(findings)
    return findings


def run_steps_of(config: DictConfig, facts: RecipeFacts) -> int:
    """The run's length in optimizer steps under these facts."""
    return run_steps(
        config.max_duration,
        batches_per_epoch=facts.batches_per_epoch,
        global_batch_size=config.global_batch_size,
    )


def _steps(config: DictConfig, facts: RecipeFacts, value: object, key: str, total: int) -> int:
    """A recipe time in optimizer steps under these facts (``recipes.durations``, the one rule)."""
    return steps_in(
        value,
        key,
        batches_per_epoch=facts.batches_per_epoch,
        global_batch_size=config.global_batch_size,
        total_steps=total,
    )


def _warmup_steps(config: DictConfig, facts: RecipeFacts, total: int) -> int:
    return warmup_steps(
        config.scheduler,
        batches_per_epoch=facts.batches_per_epoch,
        global_batch_size=config.global_batch_size,
        total_steps=total,
    )


def _finding(code: str, severity: str, message: str) -> Finding:
    return Finding(code=code, severity=severity, message=message, source=SOURCE)


def _batch_split(config: DictConfig, facts: RecipeFacts) -> list[Finding]:
    """The batch sizes divide over the processes (the rule lives in training.runtime; it errors there too)."""
    findings = []
    sizes = [("global_batch_size", config.global_batch_size)]
    if config.eval_batch_size is not None:  # None follows global_batch_size
        sizes.append(("eval_batch_size", config.eval_batch_size))
    for key, value in sizes:
        try:
            split_batch_over_processes(key, value, facts.world_size)
        except UsageError as error:
            findings.append(_finding("batch_not_divisible", "error", str(error)))
    return findings


def _warmup(config: DictConfig, facts: RecipeFacts, total: int) -> list[Finding]:
    """A warmup as long as the run never reaches the recipe's LR (and a cosine never decays)."""
    if config.scheduler.name == "one_cycle":
        return []
    warmup = _warmup_steps(config, facts, total)
    if warmup < total:
        return []
    return [
        _finding(
            "warmup_longer_than_run",
            "warning",
            f"scheduler.t_warmup={config.scheduler.t_warmup} is {warmup:g} steps but the run "
            f"(max_duration={config.max_duration}) is {total}: the LR only rises and never reaches its peak. "
            "Shorten scheduler.t_warmup (fine for a short pipeline check; not for a real run).",
        )
    ]


def _large_batch_without_warmup(config: DictConfig, facts: RecipeFacts, total: int) -> list[Finding]:
    """Goyal et al.'s linear-scaled LR at a batch of 1k or more, with no warmup (not for a linear probe: one
    linear layer on frozen features, which main_lincls.py trains at batch 1024 and LR 0.4 without warmup)."""
    if config.task == "linear_probe":
        return []
    if config.global_batch_size < LARGE_BATCH or _warmup_steps(config, facts, total) > 0:
        return []
    plan = scale_learning_rate(
        config.optimizer.base_lr, config.global_batch_size, config.optimizer.lr_scaling
    )
    threshold = LARGE_LR_FRACTION * config.global_batch_size / 256 * REFERENCE_LR_PER_256
    if plan.lr < threshold:
        return []
    return [
        _finding(
            "large_batch_without_warmup",
            "warning",
            f"global_batch_size={config.global_batch_size} at LR {plan.lr:g} with no warmup: Goyal et al. "
            "2017 warm large batches up gradually at this LR, whose first steps are unstable without it. Set "
            "scheduler.t_warmup (e.g. 5ep), or lower optimizer.base_lr.",
        )
    ]


def _swa(config: DictConfig, facts: RecipeFacts, total: int) -> list[Finding]:
    """Composer's SWA averages from swa_start and swaps the average in at swa_end: both inside the run."""
    arguments = enabled_algorithms(config.algorithms).get("swa")
    if arguments is None:
        return []
    start_text = str(arguments.get("swa_start", "0.7dur"))  # Composer's defaults
    end_text = str(arguments.get("swa_end", "0.97dur"))
    start = _steps(config, facts, start_text, "algorithms.swa.swa_start", total)
    end = _steps(config, facts, end_text, "algorithms.swa.swa_end", total)
    if start >= total:
        return [
            _finding(
                "swa_starts_after_end",
                "error",
                f"algorithms.swa.swa_start={start_text} is step {start:g} but the run ends at step {total} "
                f"(max_duration={config.max_duration}): SWA would never average. Use a fraction such as "
                "0.7dur.",
            )
        ]
    if end > total:
        return [
            _finding(
                "swa_ends_after_end",
                "error",
                f"algorithms.swa.swa_end={end_text} is step {end:g} but the run ends at step {total}: the "
                "averaged weights would never replace the trained ones. Use a fraction such as 0.97dur.",
            )
        ]
    if end > total - facts.batches_per_epoch:
        return [
            _finding(
                "swa_ends_in_last_epoch",
                "warning",
                f"algorithms.swa.swa_end={end_text} falls in the last epoch: Composer's SWA then has no "
                "epoch left to update the averaged model's BatchNorm statistics, which costs accuracy (see "
                "Composer's SWA docs). End it at least one epoch before the end.",
            )
        ]
    return []


def _ema(config: DictConfig, facts: RecipeFacts, total: int) -> list[Finding]:
    """An EMA with a half-life past the run still weighs the starting weights heavily, and it is evaluated."""
    arguments = enabled_algorithms(config.algorithms).get("ema")
    if arguments is None:
        return []
    half_life_text = arguments.get("half_life", "1000ba")  # Composer's default
    if half_life_text is not None:
        half_life = _steps(config, facts, half_life_text, "algorithms.ema.half_life", total)
        described = f"half_life={half_life_text}"
    else:
        # Composer: smoothing = 2 ** -(update_interval / half_life), update_interval defaulting to 1ba.
        interval_text = str(arguments.get("update_interval") or "1ba")
        interval = _steps(config, facts, interval_text, "algorithms.ema.update_interval", total)
        half_life = interval * math.log(0.5) / math.log(arguments["smoothing"])
        described = f"smoothing={arguments['smoothing']} (a half-life of {half_life:.0f} steps)"
    start_text = str(arguments.get("ema_start", "0.0dur"))
    start = _steps(config, facts, start_text, "algorithms.ema.ema_start", total)
    window = total - start
    if half_life < window:
        return []
    share = 100 * 2 ** (-max(window, 0) / half_life)
    return [
        _finding(
            "ema_half_life_longer_than_run",
            "warning",
            f"algorithms.ema {described} is {half_life:g} steps but EMA runs for {max(window, 0):g}: the "
            f"evaluated EMA weights are still {share:.0f} % the starting weights. Shorten half_life (e.g. "
            f"{max(1, int(window // 10))}ba) or train longer.",
        )
    ]


def _batch_counted_at_other_batch(config: DictConfig) -> list[Finding]:
    """EMA and SAM settings counted in optimizer steps, tuned at another global batch: each step now holds
    another number of images, so the averaging window or the SAM interval is not what was tuned."""
    tuned, batch = config.algorithms_tuned_for_batch, config.global_batch_size
    if tuned is None or tuned == batch:
        return []
    findings = []
    for name, arguments in enabled_algorithms(config.algorithms).items():
        for key, steps in batch_counted_settings(name, arguments).items():
            findings.append(
                _finding(
                    "algorithm_batch_counted_at_other_batch",
                    "warning",
                    f"algorithms.{name}.{key}={arguments[key]} counts optimizer steps and was tuned at a global "
                    f"batch of {tuned} (algorithms_tuned_for_batch): {steps} steps were {steps * tuned:,} images "
                    f"there but are {steps * batch:,} at global_batch_size={batch}. Write it in samples to keep "
                    f"the tuned images: algorithms.{name}.{key}={steps * tuned}sp.",
                )
            )
    return findings


def _weight_decay_at_other_batch(config: DictConfig) -> list[Finding]:
    """A decoupled weight decay, in a recipe tuned at another global batch, applied as written: it decays a
    fixed fraction per step, so each epoch decays tuned / batch times what was tuned."""
    optimizer, tuned, batch = config.optimizer, config.algorithms_tuned_for_batch, config.global_batch_size
    if optimizer.weight_decay_batch is not None or tuned is None or tuned == batch:
        return []
    if optimizer.name not in DECOUPLED_OPTIMIZERS or optimizer.weight_decay == 0:
        return []
    return [
        _finding(
            "weight_decay_at_other_batch",
            "warning",
            f"optimizer.weight_decay={optimizer.weight_decay:g} under {optimizer.name} decays a fixed fraction "
            f"per step, and this recipe was tuned at a global batch of {tuned} (algorithms_tuned_for_batch): at "
            f"global_batch_size={batch} each epoch has {tuned / batch:g}x the steps, so {tuned / batch:g}x the "
            f"decay. Set optimizer.weight_decay_batch={tuned} to keep the tuned decay per epoch "
            f"({optimizer.weight_decay * batch / tuned:.6g} per step here).",
        )
    ]


def _num_classes(config: DictConfig, facts: RecipeFacts) -> list[Finding]:
    """model.num_classes must match the data; data.num_classes only shapes synthetic data."""
    findings = []
    if config.model.num_classes is not None and config.model.num_classes != facts.num_classes:
        findings.append(
            _finding(
                "num_classes_mismatch",
                "error",
                f"model.num_classes={config.model.num_classes} but the data "
                f"(data.source={config.data.source}) has {facts.num_classes} classes; remove "
                f"model.num_classes (it follows the data) or set it to {facts.num_classes}.",
            )
        )
    default = DataConfig().num_classes
    if config.data.source != "synthetic" and config.data.num_classes not in (default, facts.num_classes):
        findings.append(
            _finding(
                "num_classes_ignored",
                "warning",
                f"data.num_classes={config.data.num_classes} only applies to data.source=synthetic; "
                f"data.source={config.data.source} has {facts.num_classes} classes. To train on the first "
                f"{config.data.num_classes} classes, set data.max_classes={config.data.num_classes}.",
            )
        )
    return findings


def smallest_resized_side(name: str, arguments: dict, full: int) -> int:
    """The side length progressive resizing starts at, pinned as each implementation pins it."""
    scale = arguments.get("initial_scale", 0.5)
    increment = arguments.get("size_increment", 4)
    if name == "data_progressive_resizing":
        return min(full, pinned_size(full, scale, increment))
    return round(full * scale / increment) * increment  # Composer's ProgressiveResizing.apply


def _progressive_resizing(config: DictConfig) -> list[Finding]:
    """Progressive resizing's first size against ResNet's stride, and its last against train_resolution."""
    findings = []
    full = config.data.train_resolution
    for name, arguments in enabled_algorithms(config.algorithms).items():
        if name not in RESIZING_ALGORITHMS:
            continue
        smallest = smallest_resized_side(name, arguments, full)
        increment = arguments.get("size_increment", 4)
        key = f"algorithms.{name}"
        if smallest < 1:
            findings.append(
                _finding(
                    "progressive_resizing_empty_images",
                    "error",
                    f"{key}.initial_scale={arguments.get('initial_scale', 0.5)} of "
                    f"data.train_resolution={full} rounds to {smallest} px (multiples of "
                    f"size_increment={increment}): the first batches would have no pixels. Raise "
                    "initial_scale.",
                )
            )
        elif smallest < RESNET_TOTAL_STRIDE:
            findings.append(
                _finding(
                    "progressive_resizing_below_stride",
                    "warning",
                    f"{key} starts at {smallest} px (initial_scale={arguments.get('initial_scale', 0.5)} of "
                    f"data.train_resolution={full}), below ResNet's total stride of {RESNET_TOTAL_STRIDE}: "
                    "its last stages see one pixel and the early epochs teach little. Raise initial_scale so "
                    f"it starts at {RESNET_TOTAL_STRIDE} px or more.",
                )
            )
        if full % increment:
            findings.append(
                _finding(
                    "progressive_resizing_misses_resolution",
                    "warning",
                    f"data.train_resolution={full} is not a multiple of {key}.size_increment={increment}, so "
                    f"the final phase trains at {round(full / increment) * increment} px, not {full}. Use a "
                    f"train_resolution that is a multiple of {increment}.",
                )
            )
    return findings


def _precision(config: DictConfig, facts: RecipeFacts) -> list[Finding]:
    """Mixed precision in a recipe meant for the CPU, where Composer has none (device=auto falling back to the
    CPU on a machine without a GPU is said by training.runtime instead)."""
    if config.precision not in MIXED_PRECISIONS or facts.device != "cpu":
        return []
    hardware = parse_hardware(config.hardware)
    meant_for_cpu = config.device == "cpu" or (hardware is not None and hardware.device == "cpu")
    if not meant_for_cpu:
        return []
    return [
        _finding(
            "mixed_precision_on_cpu",
            "warning",
            f"precision={config.precision} but the recipe runs on the CPU (device={config.device}, hardware "
            f"'{config.hardware}'), where Composer has no mixed precision: it trains in fp32. Set "
            "precision=fp32, or run on a GPU.",
        )
    ]


def _world_size_against_hardware(config: DictConfig, facts: RecipeFacts) -> list[Finding]:
    """A multi-GPU recipe launched as one process puts the whole global batch on one GPU (and vice versa)."""
    hardware = parse_hardware(config.hardware)
    if facts.device != "gpu" or hardware is None or hardware.device != "gpu":
        return []
    if hardware.world_size == facts.world_size:
        return []
    return [
        _finding(
            "world_size_differs_from_hardware",
            "warning",
            f"the recipe is sized for {config.hardware} ({hardware.world_size} process(es)) but runs as "
            f"{facts.world_size}: each GPU gets a batch of {config.global_batch_size // facts.world_size}, "
            f"not {config.global_batch_size // hardware.world_size}. Launch with composer -n "
            f"{hardware.world_size}, or set hardware to what you run.",
        )
    ]


def _profiler(config: DictConfig, facts: RecipeFacts) -> list[Finding]:
    """A profiling window that records nothing, and the profiler with auto microbatching on a GPU, which
    Composer refuses (trainer.py:1175 in 0.32.1: auto microbatching reruns a step after an out-of-memory error,
    which a profiling window cannot follow); on a CPU the runtime trains without microbatches, so both run."""
    settings = config.profiler
    if not settings.enabled:
        return []
    findings = []
    counts = {key: settings[key] for key in ("skip_first", "wait", "warmup", "repeat")}
    if settings.active < 1 or min(counts.values()) < 0:
        findings.append(
            _finding(
                "profiler_window_empty",
                "error",
                f"profiler.active={settings.active} with {counts}: the window records no batch. Set "
                "profiler.active to 1 or more and the other counts to 0 or more.",
            )
        )
    if config.device_train_microbatch_size == "auto" and facts.device == "gpu":
        per_device = config.global_batch_size // max(facts.world_size, 1)
        findings.append(
            _finding(
                "profiler_with_auto_microbatch",
                "error",
                "profiler.enabled=true with device_train_microbatch_size=auto: Composer refuses the two together. "
                f"Set device_train_microbatch_size to a number: the per-device batch ({per_device}) if it fits, or "
                "the size an auto run settled on (Composer logs it as trainer/device_train_microbatch_size, in wandb).",
            )
        )
    return findings


def _fsdp(config: DictConfig, facts: RecipeFacts) -> list[Finding]:
    """What FSDP cannot do for this recipe (its need for GPUs is training.runtime's): SAM in fp16, sharded
    checkpoints, the models that copy whole parameters; and one process, where it shards nothing."""
    settings = config.parallelism
    if settings.strategy != "fsdp":
        return []
    findings = []
    algorithms = enabled_algorithms(config.algorithms)
    if "sam" in algorithms and config.precision == "amp_fp16":
        findings.append(
            _finding(
                "fsdp_sam_amp_fp16",
                "error",
                "algorithms.sam steps through a closure, and Composer refuses closures under FSDP with "
                "precision=amp_fp16 (trainer.py:1593 in 0.32.1). T4s have no bf16, so a SAM recipe (Mosaic's "
                "Medium and Hot) cannot run under FSDP on them. Use parallelism.strategy=ddp, or "
                "precision=amp_bf16 on a GPU that has it (A10G, L4, A100, H100), or algorithms.sam=null.",
            )
        )
    if settings.state_dict_type == "sharded":
        findings.append(
            _finding(
                "fsdp_sharded_checkpoints",
                "error",
                "parallelism.state_dict_type=sharded writes one shard per process, but evaluate.py, --export and "
                "the torchvision conversion read one file; ResNet-50's whole state is ~100 MB in fp32, so set "
                "parallelism.state_dict_type=full.",
            )
        )
    for name in (name for name in FSDP_REFUSED_ALGORITHMS if name in algorithms):
        findings.append(
            _finding(
                "fsdp_algorithm_refused",
                "error",
                f"algorithms.{name} under parallelism.strategy=fsdp: {FSDP_REFUSED_ALGORITHMS[name]}; this "
                f"project does not run it so. Use parallelism.strategy=ddp, or algorithms.{name}=null.",
            )
        )
    copies = ["task=moco_v3 (its momentum encoder)"] if config.task == "moco_v3" else []
    if "swa" in algorithms:
        copies.append("swa")
    if copies:
        findings.append(
            _finding(
                "fsdp_whole_parameter_copies",
                "error",
                f"{', '.join(copies)} under FSDP: these keep a second copy of whole parameters, which FSDP holds as "
                "shards, and this project has not run them so. Use parallelism.strategy=ddp.",
            )
        )
    if facts.world_size == 1:
        findings.append(
            _finding(
                "fsdp_single_process",
                "warning",
                "parallelism.strategy=fsdp on one process shards nothing and adds FSDP's overhead; launch with "
                "composer -n <GPUs>, or use parallelism.strategy=ddp.",
            )
        )
    return findings


def load_run_recipe(name: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """The recipe as train.py, evaluate.py and the tools use it: loaded and validated against the schema
    (``recipes.loading``), then its sections that name registry entries checked by their registry."""
    config = load_recipe(name, overrides)
    validate_recipe_algorithms(config)
    return config
