"""Turn a validated recipe into what this machine can run: device, precision, microbatching, compile settings.

GPU-only settings must still run on a CPU laptop and in CI: Composer refuses mixed precision on CPU, so the CPU
falls back to fp32 and says so; ``device_train_microbatch_size: auto`` needs a GPU, so the CPU uses no
microbatching and says so.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
from composer import Trainer
from composer.core import Engine
from composer.utils import dist
from composer.utils.parallelism import FSDPConfig
from omegaconf import DictConfig

from data.loaders import split_batch_over_processes
from recipes.errors import UsageError


@dataclass(frozen=True)
class Runtime:
    """Settings handed to Composer's Trainer, plus the notes explaining any fallback."""

    device: str
    precision: str
    device_train_microbatch_size: int | str | None
    compile_config: dict[str, Any] | None
    world_size: int
    per_device_batch_size: int
    notes: tuple[str, ...]
    # cuDNN autotuning: on a GPU unless the recipe turns it off or asks for deterministic mode.
    cudnn_benchmark: bool = False
    # Seconds any process waits for the others at a collective (the recipe's dist_timeout).
    dist_timeout: float = 300.0
    # Composer's parallelism_config: None under DDP (Composer wraps the model in DDP itself for 2+ processes).
    parallelism_config: dict[str, Any] | None = None


def resolve_runtime(config: DictConfig, *, cuda_available: bool | None = None) -> Runtime:
    """Pick device and precision for this machine, checking the batch divides over the devices."""
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    notes: list[str] = []
    if config.device == "gpu" and not cuda:
        raise UsageError(
            "The recipe sets device=gpu but no CUDA GPU is visible; set device=auto or device=cpu."
        )
    device = "gpu" if config.device == "gpu" or (config.device == "auto" and cuda) else "cpu"

    precision = str(config.precision)  # a plain string for Composer and summary.json
    if device == "cpu" and precision != "fp32":
        notes.append(f"precision={precision} needs a GPU; running in fp32 on the CPU.")
        precision = "fp32"

    microbatch = config.device_train_microbatch_size
    if microbatch == "auto" and device == "cpu":
        notes.append(
            "device_train_microbatch_size=auto needs a GPU; training without microbatches on the CPU."
        )
        microbatch = None

    world_size = dist.get_world_size()
    per_device = split_batch_over_processes("global_batch_size", config.global_batch_size, world_size)
    if isinstance(microbatch, int) and per_device % microbatch:
        raise UsageError(
            f"device_train_microbatch_size={microbatch} does not divide the per-device batch {per_device}; "
            "use a divisor of it."
        )
    compile_config = {} if config.compile else None
    parallelism = parallelism_config(config.parallelism)
    if parallelism is not None and device == "cpu":
        raise UsageError(
            "parallelism.strategy=fsdp needs CUDA GPUs: Composer 0.32.1's FSDP wrapper puts every shard on "
            "torch.cuda.current_device() (composer/distributed/dist_strategy.py). On a CPU use "
            "parallelism.strategy=ddp, the default."
        )
    cudnn_benchmark = device == "gpu" and config.cudnn_benchmark and not config.deterministic
    return Runtime(
        device,
        precision,
        microbatch,
        compile_config,
        world_size,
        per_device,
        tuple(notes),
        cudnn_benchmark=cudnn_benchmark,
        dist_timeout=float(config.dist_timeout),
        parallelism_config=parallelism,
    )


def parallelism_config(settings: DictConfig) -> dict[str, Any] | None:
    """The recipe's ``parallelism`` section as Composer's ``parallelism_config``: None for DDP, else FSDP1's
    config. An ``FSDPConfig`` object rather than a dict, so that ``FSDP_VERSION=2`` in the environment cannot
    switch Composer to FSDP2, which refuses ``device_train_microbatch_size=auto`` and this project has not run."""
    if settings.strategy != "fsdp":
        return None
    return {
        "fsdp": FSDPConfig(
            sharding_strategy=str(settings.sharding_strategy),
            mixed_precision=str(settings.mixed_precision),
            activation_checkpointing=bool(settings.activation_checkpointing),
            state_dict_type=str(settings.state_dict_type),
        )
    }


def start_distributed(runtime: Runtime) -> None:
    """Join the process group early (a no-op for one process) so data samplers and run names agree across ranks,
    with the recipe's ``dist_timeout`` (rank 0 alone may spend minutes on S3 or a cold file tree first), and set
    cuDNN's autotuning as the runtime says.

    On a CPU, the processes of one machine share its cores: Composer's launcher does not set OMP_NUM_THREADS
    (torchrun does), and N processes each using every core ran a 2-rank test 6x slower on 2 cores.
    """
    from composer.devices import DeviceCPU, DeviceGPU

    if dist.get_world_size() > 1 and not dist.is_initialized():
        dist.initialize_dist(DeviceGPU() if runtime.device == "gpu" else DeviceCPU(), runtime.dist_timeout)
    local_processes = dist.get_local_world_size()
    if runtime.device == "cpu" and local_processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, torch.get_num_threads() // local_processes))
    if runtime.device == "gpu":
        torch.backends.cudnn.benchmark = runtime.cudnn_benchmark


def agree_on_run_name(configured: str | None, recipe_name: str) -> str:
    """The recipe's run name, or one made from the recipe and start time that every rank shares."""
    import time

    name = configured or f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if dist.get_world_size() > 1:
        names = [name]
        dist.broadcast_object_list(names, src=0)
        name = names[0]
    return name


def silence_expected_warnings() -> None:
    """Hide Composer warnings that are expected in this project and would only alarm people.

    A short last eval batch cannot be split into microbatches (harmless), and evaluate.py builds a Trainer
    without an optimizer on purpose. Composer's soft cross-entropy warns "Some targets have less than 1 total
    probability" when a batch's float32 targets sum below the image count (composer/loss/loss.py:139, 0.32.1),
    which label smoothing with MixUp or CutMix does by rounding alone (4 images: 3.9999998) and then rescales the
    loss by 1 + 6e-8; tests/test_algorithms_registry.py checks that every target sums to 1 under every mixing
    and smoothing combination, so a real shortfall would not pass unseen.
    """
    import warnings

    warnings.filterwarnings("ignore", message="Cannot split tensor of length")
    warnings.filterwarnings("ignore", message="No optimizer was specified")
    warnings.filterwarnings("ignore", message="Some targets have less than 1 total probability")


def drop_config_banner(trainer: Trainer) -> None:
    """Keep Composer's console from printing its hyperparameter banner when the run starts.

    Composer's console loggers print every logged hyperparameter between two rows of stars at FIT_START
    (composer/loggers/progress_bar_logger.py:285 and console_logger.py ``fit_start``, 0.32.1): with this project's
    Trainer that is its version, ``node_name: unknown because NODENAME environment variable not set``, the devices
    per node and the seed, which the run header and ``recipe.yaml`` already say. Marking the banner as printed
    drops it and nothing else: Composer's warnings and the other destinations' hyperparameters (wandb) stay.
    """
    from composer.loggers import ConsoleLogger, ProgressBarLogger

    for destination in trainer.logger.destinations:
        if isinstance(destination, (ConsoleLogger, ProgressBarLogger)):
            destination.hparams_already_logged_to_console = True


def close_trainer(trainer: Trainer) -> None:
    """Close a Composer Trainer and let go of it, so that the run's model and data can be freed.

    Two things outlive a closed Trainer in Composer 0.32.1 and torch 2.7, each holding the whole training state
    (model, optimizer, EMA copy, loaders) for the life of the process: the ``atexit`` hook its engine registers
    (``atexit.register(self._close, state, logger)``, composer/core/engine.py:225), which ``close()`` leaves in
    place and only ``__del__`` removes (so never: the hook itself keeps the engine alive); and
    torch.distributed.checkpoint's ``_get_fqns``, a ``functools.cache`` keyed by every model Composer saved
    (pytorch/pytorch#149100, dropped upstream by #149354). One run per process never notices; a notebook, the
    ablation tool and the test suite, which run trainer after trainer in one process, kept ~270 MB per
    ResNet-50 run until the CI machine ran out of memory.
    """
    trainer.close()
    release_engine(trainer.engine)


def release_engine(engine: Engine) -> None:
    """Drop the two process-wide references a closed Composer engine leaves behind (``close_trainer`` says which)."""
    atexit.unregister(engine._close)
    from torch.distributed.checkpoint import state_dict

    cache_clear = getattr(state_dict._get_fqns, "cache_clear", None)  # absent once torch drops the cache
    if cache_clear is not None:
        cache_clear()
