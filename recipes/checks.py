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
CPU trains in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from composer.core import Time, TimeUnit
from omegaconf import DictConfig

from algorithms.data_progressive_resizing import pinned_size
from algorithms.optimization import scale_learning_rate
from algorithms.registry import enabled_algorithms
from recipes.errors import UsageError
from recipes.findings import Finding
from recipes.hardware import parse_hardware
from recipes.runtime import split_batch_over_processes
from recipes.schema import DataConfig

SOURCE = "recipe_check"
# Goyal et al. 2017 (arXiv:1706.02677) scale ResNet-50's LR as 0.1 x batch/256 and warm it up gradually over 5
# epochs for large batches: at that LR, the first steps of a large batch are unstable without it.
LARGE_BATCH = 1024
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
    total = total_batches(config.max_duration, facts.batches_per_epoch, config.global_batch_size)
    return [
        *_batch_split(config, facts),
        *_warmup(config, facts, total),
        *_large_batch_without_warmup(config, facts, total),
        *_swa(config, facts, total),
        *_ema(config, facts, total),
        *_num_classes(config, facts),
        *_progressive_resizing(config),
        *_precision(config, facts),
        *_world_size_against_hardware(config, facts),
    ]


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


def in_batches(value: str, batches_per_epoch: int, total: int | None, global_batch_size: int) -> float:
    """A Composer time string in optimizer steps: epochs via the loader length, durations via the run."""
    if str(value) == "0":
        return 0.0
    time = Time.from_timestring(str(value))
    if time.unit == TimeUnit.EPOCH:
        return float(time.value * batches_per_epoch)
    if time.unit == TimeUnit.BATCH:
        return float(time.value)
    if time.unit == TimeUnit.SAMPLE:
        return time.value / global_batch_size
    if time.unit == TimeUnit.DURATION and total is not None:
        return time.value * total
    raise UsageError(
        f"'{value}' cannot be counted in optimizer steps here; use epochs ('8ep') or batches ('500ba')."
    )


def total_batches(max_duration: str, batches_per_epoch: int, global_batch_size: int) -> int:
    """Length of the run in optimizer steps."""
    return int(in_batches(max_duration, batches_per_epoch, None, global_batch_size))


def _finding(code: str, severity: str, message: str) -> Finding:
    return Finding(code=code, severity=severity, message=message, source=SOURCE)


def _batch_split(config: DictConfig, facts: RecipeFacts) -> list[Finding]:
    """The batch sizes divide over the processes (the rule lives in recipes.runtime; it errors there too)."""
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


def warmup_batches(config: DictConfig, batches_per_epoch: int, total: int) -> float:
    """Warmup in optimizer steps (one_cycle warms up for pct_start of the run; t_warmup does not apply)."""
    if config.scheduler.name == "one_cycle":
        return config.scheduler.pct_start * total
    return in_batches(config.scheduler.t_warmup, batches_per_epoch, total, config.global_batch_size)


def _warmup(config: DictConfig, facts: RecipeFacts, total: int) -> list[Finding]:
    """A warmup as long as the run never reaches the recipe's LR (and a cosine never decays)."""
    if config.scheduler.name == "one_cycle":
        return []
    warmup = warmup_batches(config, facts.batches_per_epoch, total)
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
    """Goyal et al.'s linear-scaled LR at a batch of 1k or more, with no warmup."""
    if config.global_batch_size < LARGE_BATCH or warmup_batches(config, facts.batches_per_epoch, total) > 0:
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
    start = in_batches(start_text, facts.batches_per_epoch, total, config.global_batch_size)
    end = in_batches(end_text, facts.batches_per_epoch, total, config.global_batch_size)
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
        half_life = in_batches(str(half_life_text), facts.batches_per_epoch, total, config.global_batch_size)
        described = f"half_life={half_life_text}"
    else:
        # Composer: smoothing = 2 ** -(update_interval / half_life), update_interval defaulting to 1ba.
        interval_text = str(arguments.get("update_interval") or "1ba")
        interval = in_batches(interval_text, facts.batches_per_epoch, total, config.global_batch_size)
        half_life = interval * math.log(0.5) / math.log(arguments["smoothing"])
        described = f"smoothing={arguments['smoothing']} (a half-life of {half_life:.0f} steps)"
    start_text = str(arguments.get("ema_start", "0.0dur"))
    start = in_batches(start_text, facts.batches_per_epoch, total, config.global_batch_size)
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
    CPU on a machine without a GPU is said by recipes.runtime instead)."""
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
