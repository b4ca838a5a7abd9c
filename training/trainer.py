"""From a recipe to a Composer ``Trainer``, and from a finished fit to the run's outputs.

``build_training(config, recipe_path)`` builds what ``train.py`` runs: the checkpoint destination and resume
point, the data, the recipe checks, the model, optimizer and schedule, the algorithms, the doctor, loggers and
callbacks; ``TrainingRun.fit()`` trains, evaluates and writes ``summary.json``. The LR range test builds a
different run from the same recipe (its own schedule, no evaluation, no checkpoints), so the parts every
Trainer built from a recipe shares are separate: ``start_run`` (device, process group, seeds, run name and
folders) and ``build_trainer`` (the one place the Trainer is constructed, with the settings both runs share).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from composer import Evaluator, Trainer
from composer.callbacks import MemoryMonitor, SpeedMonitor
from composer.core import Callback
from composer.utils import dist, reproducibility
from omegaconf import DictConfig, OmegaConf

from algorithms.registry import build_algorithms
from callbacks.budget_guard import raise_if_over_budget
from callbacks.curve_watch import build_curve_watch, raise_if_below_reference, read_watch_reference
from callbacks.doctor_rules import ContrastiveDiagnosis, ContrastiveObjective, Diagnosis, official_moco_lr
from callbacks.findings import announce_findings
from callbacks.knn_monitor import KnnMonitor
from callbacks.last_evaluation import LastEvaluation
from callbacks.metric_names import VALIDATION_LABEL, StableMetricNames
from callbacks.metrics_file import MetricsFile
from callbacks.momentum_encoder import MomentumEncoder
from callbacks.preemption import ExactResume, Preemption
from callbacks.progress_lines import ProgressLines, console_is_terminal
from callbacks.progress_plot import ProgressPlot
from callbacks.rank_zero_buffers import RankZeroBuffers
from callbacks.ranks import say
from callbacks.training_doctor import TrainingDoctor, doctor_summary, raise_if_stopped, weights_are_finite
from data import DataBundle, build_data
from data.bad_images import BAD_IMAGE_LIST
from data.loaders import start_workers
from data.resumable_sampler import skips_seen_batches
from model import build_moco_model, build_model, chance_loss
from recipes.durations import run_steps, steps_in
from recipes.loading import SAVED_RECIPE, recipe_to_yaml
from recipes.schema import Task
from training.budget import build_budget_guard
from training.checkpointing import (
    RunFolders,
    build_checkpointing,
    check_autoresume,
    finished,
    run_folders,
)
from training.loggers import build_loggers, check_logging
from training.optimization import (
    LearningRatePlan,
    build_optimizer,
    build_scheduler,
    scale_weight_decay,
    warmup_steps,
)
from training.preflight import RecipeFacts, check_before_training
from training.profiling import build_profiler
from training.runtime import (
    Runtime,
    agree_on_run_name,
    close_trainer,
    drop_config_banner,
    resolve_runtime,
    start_distributed,
)
from training.summary import build_summary, format_summary, write_summary
from training.weights import load_linear_probe


@dataclass(frozen=True)
class RunStart:
    """Where a run from a recipe trains and under which name, settled before anything is built."""

    runtime: Runtime
    run_name: str
    folders: RunFolders

    @property
    def bad_image_list(self) -> Path:
        return self.folders.output / BAD_IMAGE_LIST


def start_run(config: DictConfig, recipe_path: Path, *, name_suffix: str = "") -> RunStart:
    """Pick device and precision, join the process group, seed every RNG, and agree on the run's name and
    folders (the name defaults to the recipe's, plus ``name_suffix``, plus the start time)."""
    runtime = resolve_runtime(config)
    start_distributed(runtime)
    reproducibility.seed_all(config.seed)
    run_name = agree_on_run_name(config.run_name, f"{recipe_path.stem}{name_suffix}")
    for note in runtime.notes:
        say(f"note: {note}")
    return RunStart(runtime, run_name, run_folders(config.save_folder, run_name))


def build_trainer(
    start: RunStart,
    config: DictConfig,
    data: DataBundle,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    **arguments: Any,
) -> Trainer:
    """Composer's Trainer for the recipe's model, data and optimizer on this machine's runtime; ``arguments``
    are what the run adds (duration, schedule, algorithms, callbacks, loggers, evaluation, checkpoints)."""
    runtime = start.runtime
    trainer = Trainer(
        model=model,
        train_dataloader=data.train,
        optimizers=optimizer,
        step_schedulers_every_batch=True,
        run_name=start.run_name,
        device=runtime.device,
        precision=runtime.precision,
        device_train_microbatch_size=runtime.device_train_microbatch_size,
        compile_config=runtime.compile_config,
        seed=config.seed,
        deterministic_mode=config.deterministic,
        dist_timeout=runtime.dist_timeout,
        parallelism_config=runtime.parallelism_config,
        **arguments,
    )
    drop_config_banner(trainer)
    return trainer


def build_callbacks(device: str) -> list[Callback]:
    """Stable metric names and throughput always; rank 0's buffers under DDP; GPU memory when on a GPU."""
    callbacks: list[Callback] = [StableMetricNames(), SpeedMonitor(window_size=50)]
    if dist.get_world_size() > 1:
        callbacks.insert(0, RankZeroBuffers())
    if device == "gpu":
        callbacks.append(MemoryMonitor())
    return callbacks


def build_doctor(
    config: DictConfig, num_classes: int, output_folder: str | Path, batches_per_epoch: int
) -> list[Callback]:
    """The doctor for this recipe (an empty list when ``doctor.enabled`` is false), its times in steps: a
    classifier's rules, or for task moco_v3 the contrastive ones (the objective's predicted start in place of
    the chance loss, the LR against MoCo v3's official one, collapse)."""
    if not config.doctor.enabled:
        return []
    settings = OmegaConf.to_object(config.doctor)
    steps = {"batches_per_epoch": batches_per_epoch, "global_batch_size": config.global_batch_size}
    total = run_steps(config.max_duration, **steps)
    microbatch = config.device_train_microbatch_size
    samples = microbatch if isinstance(microbatch, int) else config.global_batch_size // dist.get_world_size()
    warmup = warmup_steps(config.scheduler, **steps, total_steps=total)
    grace = steps_in(settings.chance_grace, "doctor.chance_grace", **steps, total_steps=total)
    diagnosis: Diagnosis
    if config.task == Task.moco_v3:
        objective = ContrastiveObjective(
            keys_per_rank=samples,
            world_size=dist.get_world_size(),
            queue_size=config.moco.queue_size,
            temperature=config.moco.temperature,
            loss_reduction=str(config.moco.loss_reduction),
        )
        diagnosis = ContrastiveDiagnosis(
            settings,
            objective,
            warmup_batches=warmup,
            grace_batches=grace,
            global_batch_size=config.global_batch_size,
            official_lr=official_moco_lr(str(config.optimizer.name), epochs=total / batches_per_epoch),
        )
    else:
        diagnosis = Diagnosis(
            settings,
            num_classes=num_classes,
            warmup_batches=warmup,
            grace_batches=grace,
            samples_per_microbatch=samples,
            chance_loss=chance_loss(config.model.loss, num_classes),
        )
    return [
        TrainingDoctor(
            diagnosis,
            output_folder,
            settings.skipped_steps_limit,
            metrics_every_n_batches=config.logging.metrics_every_n_batches,
        )
    ]


def build_pretraining_monitors(
    config: DictConfig, data: DataBundle, metrics_file: MetricsFile
) -> list[Callback]:
    """The k-NN monitor (when moco.knn_interval is set) and progress.png, for task moco_v3."""
    monitors: list[Callback] = []
    if data.knn_bank is not None:
        moco = config.moco
        monitors.append(
            KnnMonitor(
                data.knn_bank,
                data.val,
                data.num_classes,
                moco.knn_interval,
                k=moco.knn_k,
                temperature=moco.knn_temperature,
            )
        )
    # A callback, not a logger: it reads metrics.jsonl after the metrics file has closed it.
    monitors.append(ProgressPlot(metrics_file.path))
    return monitors


@dataclass
class TrainingRun:
    """A training run built from a recipe and ready to fit: the Trainer and what its outputs are made from."""

    config: DictConfig
    recipe_path: Path
    start: RunStart
    data: DataBundle
    trainer: Trainer
    lr_plan: LearningRatePlan
    metrics_file: MetricsFile
    preemption: Preemption
    doctor: list[Callback]
    last_evaluation: LastEvaluation | None
    started: float

    def fit(self) -> dict[str, Any]:
        """Train, evaluate the final weights, write ``summary.json`` and return it.

        Raises ``Preempted`` after a SIGTERM (the checkpoint saved and uploaded), and ``TrainingStopped`` after
        the outputs are written when the doctor stopped the run. However it ends, the trainer is closed and the
        process keeps no reference to the run's model (``close_trainer``).
        """
        try:
            return self._fit()
        finally:
            close_trainer(self.trainer)

    def _fit(self) -> dict[str, Any]:
        trainer, start, data = self.trainer, self.start, self.data
        runtime, folders = start.runtime, start.folders
        if not finished(trainer.state.timestamp, self.config.max_duration):
            for evaluation_loader in (data.val, data.knn_bank):
                start_workers(evaluation_loader)
            trainer.fit()  # Composer refuses to fit a run already at max_duration (trainer.py:2126, 0.32.1)
        self.preemption.raise_if_preempted(trainer, folders.save, autoresume=self.config.autoresume)
        raise_if_over_budget(
            trainer.state.callbacks
        )  # stopped before the budget: no end evaluation to pay for
        weights_finite = weights_are_finite(trainer.state.model)
        if not weights_finite:
            say("note: the weights are not finite (NaN or Inf), so the end evaluation is skipped")
        elif self.last_evaluation is not None and not self.last_evaluation.saw_final_weights(trainer.state):
            trainer.eval()
        decay = scale_weight_decay(self.config.optimizer, self.config.global_batch_size)
        summary = build_summary(
            trainer,
            self.metrics_file,
            run_name=start.run_name,
            recipe_path=str(self.recipe_path),
            lr_plan=self.lr_plan,
            wall_time_s=time.perf_counter() - self.started,
            output_folder=folders.output,
            extra={
                "weight_decay": decay.applied,
                "weight_decay_rule": decay.describe(),
                "num_classes": data.num_classes,
                "train_images": data.train_size,
                "val_images": data.val_size,
                "save_folder": folders.save,
                "device": runtime.device,
                "precision": runtime.precision,
                "world_size": runtime.world_size,
                "per_device_batch_size": runtime.per_device_batch_size,
                "device_train_microbatch_size": runtime.device_train_microbatch_size,
                "bad_images": len(data.bad_images.entries()),
                **doctor_summary(self.doctor, trainer.state, weights_finite=weights_finite),
            },
        )
        close_trainer(trainer)
        write_summary(folders.output, summary)
        say(format_summary(summary))
        if (bad_images := data.bad_images.report()) is not None:
            say(bad_images)
        say(f"outputs in {folders.output}/ (checkpoints, {SAVED_RECIPE}, metrics.jsonl, summary.json)")
        raise_if_stopped(self.doctor)
        raise_if_below_reference(self.doctor)
        return summary


def build_task_model(config: DictConfig, num_classes: int, device: str) -> torch.nn.Module:
    """The model the recipe's task trains: MoCo v3 (base and momentum encoders, heads), the linear probe on the
    checkpoint's frozen backbone, or the supervised classifier."""
    if config.task == Task.moco_v3:
        return build_moco_model(config.model, config.moco, device=device)
    if config.task == Task.linear_probe:
        return load_linear_probe(config, num_classes)
    return build_model(config.model, num_classes, device=device)


def build_training(config: DictConfig, recipe_path: Path) -> TrainingRun:
    """Build everything the recipe names, in the order that fails fastest: the checkpoint destination (seconds
    on S3), the data, the recipe checks (before the model is built), then the model and the rest."""
    started = time.perf_counter()
    check_logging(config.logging)  # a logger switched on without its package or webhook
    check_autoresume(config)
    watch_reference = read_watch_reference(config)  # a bad reference file fails before any work
    start = start_run(config, recipe_path)
    config.run_name = start.run_name
    folders = start.folders
    checkpoints = build_checkpointing(config, start.run_name, folders)
    data = build_data(config, device=start.runtime.device, bad_image_list=start.bad_image_list)
    # Said once the data is found: a run stopped by a bad data path has made no checkpoint folder to announce.
    for line in checkpoints.notes:
        say(line)
    batches_per_epoch = len(data.train.dataloader)
    facts = RecipeFacts(start.runtime.world_size, start.runtime.device, data.num_classes, batches_per_epoch)
    announce_findings(folders.output, check_before_training(config, facts))
    runtime = start.runtime
    pretraining = config.task == Task.moco_v3
    model = build_task_model(config, data.num_classes, runtime.device)
    # Only trainable parameters reach the optimizer (parameter_groups), so MoCo's momentum encoder stays out.
    optimizer, lr_plan = build_optimizer(model, config.optimizer, config.global_batch_size)
    scheduler = build_scheduler(
        config.scheduler, optimizer, config.max_duration, batches_per_epoch, config.global_batch_size
    )
    algorithms = build_algorithms(config.algorithms, global_batch_size=config.global_batch_size)
    # The curve watch reports through the doctor's findings and stops a run as the doctor does.
    doctor = [
        *build_doctor(config, data.num_classes, folders.output, batches_per_epoch),
        *build_curve_watch(
            config, watch_reference, folders.output, folders.save, batches_per_epoch, data.val_size
        ),
    ]
    recipe = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    loggers, metrics_file = build_loggers(
        config.logging, folders.output, start.run_name, recipe, resume=config.autoresume
    )
    say(
        f"run {start.run_name}: {data.train_size} training / {data.val_size} validation images, "
        f"{data.num_classes} classes, {runtime.world_size} process(es) x batch {runtime.per_device_batch_size}"
    )
    say(lr_plan.describe())
    say(scale_weight_decay(config.optimizer, config.global_batch_size).describe())
    if dist.get_global_rank() == 0:
        folders.output.mkdir(parents=True, exist_ok=True)
        (folders.output / SAVED_RECIPE).write_text(recipe_to_yaml(config), encoding="utf-8")

    preemption = Preemption()
    profiler, profiling = build_profiler(config.profiler, folders.output)
    # A pretraining run has no classifier to evaluate; its momentum encoder steps with the optimizer.
    last_evaluation = None if pretraining else LastEvaluation()
    evaluation = (
        {}
        if pretraining
        else {
            "eval_dataloader": Evaluator(label=VALIDATION_LABEL, dataloader=data.val),
            "eval_interval": config.eval_interval,
        }
    )
    task_callbacks: list[Callback] = (
        [
            MomentumEncoder(config.moco.momentum, config.global_batch_size),
            *build_pretraining_monitors(config, data, metrics_file),
        ]
        if pretraining
        else [last_evaluation]
    )
    # Composer's bar redraws itself with carriage returns, which a log file keeps: plain lines there instead.
    draw_bar = config.logging.progress_bar and console_is_terminal()
    progress_lines = [ProgressLines()] if config.logging.progress_bar and not draw_bar else []
    trainer = build_trainer(
        start,
        config,
        data,
        model,
        optimizer,
        max_duration=config.max_duration,
        **evaluation,
        schedulers=scheduler,
        algorithms=algorithms,
        loggers=[*loggers, *checkpoints.loggers],
        callbacks=[
            *build_callbacks(runtime.device),
            preemption,
            ExactResume(),
            # Before the saver: a budget stop at an epoch's end is saved at the same event, as a preemption is.
            *build_budget_guard(config, folders.output, folders.save, batches_per_epoch),
            checkpoints.saver,
            *doctor,
            *task_callbacks,
            *profiling,
            *progress_lines,
        ],
        profiler=profiler,
        progress_bar=draw_bar,
        log_to_console=config.logging.log_to_console,
        console_log_interval=config.logging.console_log_interval,
        load_path=checkpoints.load_path,
        spin_dataloaders=not skips_seen_batches(data.train.dataloader),
    )
    return TrainingRun(
        config,
        recipe_path,
        start,
        data,
        trainer,
        lr_plan,
        metrics_file,
        preemption,
        doctor,
        last_evaluation,
        started,
    )
