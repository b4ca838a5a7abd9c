"""The training doctor: a Composer callback, on by default, that watches a run and says plainly what is wrong.

The failures it exists for cost days on a GPU before anyone looks: a large-batch LR with no warmup (loss
flat at chance), a base LR ten times too low (learning stalls once the cosine decays), a loss summed where it
should be averaged, NaN under fp16. The rules and their messages live in ``algorithms.doctor_rules``; this
module feeds them Composer's numbers, logs ``train/grad_norm`` every batch, prints each finding once (global
rank 0) and appends it to ``RUN_FOLDER/findings.jsonl``.

A non-finite loss (or gradient norm) is fatal. Every rank agrees to stop (one all-reduce of a flag per batch
under DDP); the state is saved for inspection to its own file, whose name the resume logic never picks up;
Composer's CheckpointSaver is switched off, so the stop neither saves NaN weights as the run's final
checkpoint nor rotates the last good ones away; scheduled evaluation is switched off; and train.py exits with
``DOCTOR_STOPPED_EXIT_STATUS`` after writing its summary.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from composer.callbacks import CheckpointSaver
from composer.core import Callback, Event, Precision, State, Time, TimeUnit
from composer.loggers import Logger
from composer.utils import dist
from composer.utils.checkpoint import save_checkpoint
from omegaconf import DictConfig, OmegaConf

from algorithms.doctor_rules import Diagnosis, NonFiniteEvidence
from algorithms.run_logging import VALIDATION_LABEL, validation_metrics
from recipes.errors import UsageError
from recipes.findings import Finding, append_findings

# Distinct from 0 (done), 1 (a crash), 2 (a usage error), 75 (preempted, relaunch) and 143 (SIGTERM before
# training): the doctor stopped a run that cannot get better by relaunching it unchanged.
DOCTOR_STOPPED_EXIT_STATUS = 3
# Not Composer's ep{epoch}-ba{batch}-rank0.pt pattern, so autoresume and checkpoint rotation leave it alone.
INSPECTION_FILENAME = "doctor-nonfinite-ba{batch}.pt"
GRAD_NORM_METRIC = "train/grad_norm"


class TrainingStopped(Exception):
    """The doctor stopped training on a fatal finding; the message is the finding, with its checkpoint."""


def _never(state: State, event: Event) -> bool:
    """A save or eval interval that never fires."""
    return False


def _scales_gradients(state: State) -> bool:
    """Whether Composer scales gradients this run (amp_fp16: trainer.py `_use_grad_scaling`, 0.32.1)."""
    return state.precision == Precision.AMP_FP16 and state.scaler is not None and state.scaler.is_enabled()


def _batch_loss(state: State) -> float:
    """The batch's loss averaged over microbatches and ranks, as Composer logs it (``loss/train/total``)."""
    total = state.total_loss_dict.get("loss/train/total")
    if total is not None:
        return float(total)
    losses = state.loss.values() if isinstance(state.loss, dict) else [state.loss]
    return sum(float(loss.detach().float().mean()) for loss in losses)


def _inputs_finite(batch: Any) -> bool:
    """Whether every floating-point tensor of a batch (a tensor, or a tuple, list or dict) is finite."""
    if isinstance(batch, torch.Tensor):
        return not batch.is_floating_point() or bool(torch.isfinite(batch).all())
    if isinstance(batch, dict):
        return all(_inputs_finite(value) for value in batch.values())
    if isinstance(batch, tuple | list):
        return all(_inputs_finite(value) for value in batch)
    return True


def _any_rank(state: State, flag: bool) -> bool:
    """True on every rank if it is true on any (one tiny all-reduce under DDP), so all ranks decide alike."""
    if dist.get_world_size() == 1:
        return flag
    tensor = state.device.tensor_to_device(torch.tensor([int(flag)], dtype=torch.uint8))
    dist.all_reduce(tensor, reduce_operation="MAX")
    return bool(tensor.item())


def weights_are_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter is finite; evaluating NaN weights only produces misleading numbers."""
    return all(bool(torch.isfinite(parameter).all()) for parameter in model.parameters())


class TrainingDoctor(Callback):
    """Feeds each batch's loss, gradient norm and LR, and each validation accuracy, to a ``Diagnosis``.

    The gradient norm is the global L2 norm of the gradient the optimizer step uses: measured after each
    backward (the last one of a batch holds the gradient accumulated over its microbatches and all-reduced
    across ranks; SAM's second pass is its perturbed gradient), so before gradient clipping and any algorithm
    that edits gradients at AFTER_TRAIN_BATCH, and divided by the GradScaler's scale under amp_fp16, where
    Composer's gradients stay scaled until it unscales them just before AFTER_TRAIN_BATCH.
    """

    def __init__(self, diagnosis: Diagnosis, output_folder: str | Path, skipped_steps_limit: int) -> None:
        self.diagnosis = diagnosis
        self.output_folder = Path(output_folder)
        self.skipped_steps_limit = skipped_steps_limit
        # The fatal finding that stopped training, if one did.
        self.stopping: Finding | None = None
        self._backward_norm: torch.Tensor | None = None
        self._grad_norm: torch.Tensor | None = None
        self._skipped_steps = 0

    @property
    def findings(self) -> list[Finding]:
        """Everything reported so far, in order."""
        return self.diagnosis.findings

    def fit_start(self, state: State, logger: Logger) -> None:
        if isinstance(state.device_train_microbatch_size, int):
            self.diagnosis.samples_per_microbatch = state.device_train_microbatch_size

    def after_backward(self, state: State, logger: Logger) -> None:
        # A tensor, not a float: no device sync per microbatch.
        gradients = [parameter.grad for parameter in state.model.parameters() if parameter.grad is not None]
        self._backward_norm = torch.nn.utils.get_total_norm(gradients) if gradients else None

    def after_train_batch(self, state: State, logger: Logger) -> None:
        norm = self._backward_norm
        if norm is not None and _scales_gradients(state):
            # The scale this step's gradients were multiplied by; Composer updates it only after the step.
            norm = norm / state.scaler.get_scale()
        self._grad_norm = norm

    def batch_end(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch)
        loss = _batch_loss(state)
        grad_norm = float(self._grad_norm) if self._grad_norm is not None else None
        self._backward_norm = self._grad_norm = None
        lr = float(state.optimizers[0].param_groups[0]["lr"])
        if grad_norm is not None:
            logger.log_metrics({GRAD_NORM_METRIC: grad_norm})
        fp16 = _scales_gradients(state)
        grad_finite = grad_norm is None or math.isfinite(grad_norm)
        # Under amp_fp16 the GradScaler skips a step with non-finite gradients and lowers its scale: normal
        # now and then, a failure only when it keeps happening.
        self._skipped_steps = 0 if grad_finite or not fp16 else self._skipped_steps + 1
        fatal = not math.isfinite(loss) or (
            not grad_finite and (not fp16 or self._skipped_steps >= self.skipped_steps_limit)
        )
        measured = math.nan if grad_norm is None else grad_norm
        if _any_rank(state, fatal):
            self._stop(state, step, loss, measured, lr, fp16)
            return
        for finding in self.diagnosis.observe_batch(step, loss, measured, lr):
            self._announce(finding)

    def eval_end(self, state: State, logger: Logger) -> None:
        if state.dataloader_label != VALIDATION_LABEL:
            return
        accuracy = validation_metrics(state).get(f"{VALIDATION_LABEL}/acc1")
        if accuracy is not None and math.isfinite(accuracy):
            for finding in self.diagnosis.observe_eval(int(state.timestamp.batch), accuracy):
                self._announce(finding)

    def _stop(self, state: State, step: int, loss: float, grad_norm: float, lr: float, fp16: bool) -> None:
        """Every rank: save the state for inspection, stop, and keep Composer from saving or evaluating it."""
        inputs_finite = not _any_rank(state, not _inputs_finite(state.batch))
        # Every rank builds the state dict (it gathers RNG states); global rank 0 writes the file.
        saved = save_checkpoint(state, str(self.output_folder / INSPECTION_FILENAME))
        evidence = NonFiniteEvidence(
            step=step,
            loss=loss,
            grad_norm=grad_norm,
            lr=lr,
            fp16=fp16,
            inputs_finite=inputs_finite,
            skipped_steps=self._skipped_steps,
            inspection_checkpoint=saved,
        )
        self.stopping = self.diagnosis.explain_nonfinite(evidence)
        self._announce(self.stopping)
        state.stop_training()
        for evaluator in state.evaluators:
            evaluator.eval_interval = _never
        for callback in state.callbacks:
            if isinstance(callback, CheckpointSaver):
                callback.save_interval = _never

    def _announce(self, finding: Finding) -> None:
        """Print the finding's one line and record it, from global rank 0 only."""
        if dist.get_global_rank() == 0:
            print(finding.line(), flush=True)
            append_findings(self.output_folder, [finding])

    def state_dict(self) -> dict[str, Any]:
        return {"diagnosis": self.diagnosis.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "diagnosis" in state:
            self.diagnosis.load_state_dict(state["diagnosis"])


def time_in_batches(
    value: str, key: str, batches_per_epoch: int, total_batches: int | None, global_batch_size: int
) -> int:
    """A Composer time string ("1ep", "500ba", "0.05dur", "25600sp", "0") as a number of optimizer steps."""
    text = str(value)
    if text in ("0", "0ep", "0ba"):
        return 0
    try:
        time = Time.from_timestring(text)
    except ValueError as error:
        raise UsageError(
            f"'{key}' is '{value}', which is not a Composer time such as '1ep' or '500ba'."
        ) from error
    if time.unit == TimeUnit.EPOCH:
        return round(time.value * batches_per_epoch)
    if time.unit == TimeUnit.BATCH:
        return int(time.value)
    if time.unit == TimeUnit.SAMPLE:
        return math.ceil(time.value / global_batch_size)
    if time.unit == TimeUnit.DURATION and total_batches is not None:
        return round(time.value * total_batches)
    raise UsageError(
        f"'{key}' is '{value}'; the training doctor needs it in epochs ('1ep'), batches ('500ba'), samples "
        "('25600sp'), or as a fraction of the run ('0.05dur') when max_duration is in epochs or batches."
    )


def build_doctor(
    config: DictConfig, num_classes: int, output_folder: str | Path, batches_per_epoch: int
) -> list[Callback]:
    """The doctor for this recipe (an empty list when ``doctor.enabled`` is false)."""
    if not config.doctor.enabled:
        return []
    settings = OmegaConf.to_object(config.doctor)
    duration = Time.from_timestring(str(config.max_duration))
    total_batches = {
        TimeUnit.EPOCH: lambda: duration.value * batches_per_epoch,
        TimeUnit.BATCH: lambda: duration.value,
        TimeUnit.SAMPLE: lambda: math.ceil(duration.value / config.global_batch_size),
    }.get(duration.unit, lambda: None)()

    def batches(value: str, key: str) -> int:
        return time_in_batches(value, key, batches_per_epoch, total_batches, config.global_batch_size)

    if config.scheduler.name == "one_cycle":
        warmup = round(config.scheduler.pct_start * total_batches) if total_batches else 0
    else:
        warmup = batches(config.scheduler.t_warmup, "scheduler.t_warmup")
    microbatch = config.device_train_microbatch_size
    samples = microbatch if isinstance(microbatch, int) else config.global_batch_size // dist.get_world_size()
    diagnosis = Diagnosis(
        settings,
        num_classes=num_classes,
        warmup_batches=warmup,
        grace_batches=batches(settings.chance_grace, "doctor.chance_grace"),
        samples_per_microbatch=samples,
    )
    return [TrainingDoctor(diagnosis, output_folder, settings.skipped_steps_limit)]


def doctor_summary(doctor: list[Callback], state: State, *, weights_finite: bool) -> dict[str, Any]:
    """What summary.json carries in every run: the count of doctor findings, the findings, what stopped it.

    Non-finite weights are not evaluated at the end, so their validation metrics are null (these keys override
    build_summary's) rather than the stale or never-updated values Composer still holds.
    """
    doctors = [callback for callback in doctor if isinstance(callback, TrainingDoctor)]
    findings = [finding for callback in doctors for finding in callback.findings]
    stopping = next((callback.stopping for callback in doctors if callback.stopping), None)
    not_evaluated = {} if weights_finite else dict.fromkeys(_validation_metric_names(state))
    return {
        **not_evaluated,
        "weights_finite": weights_finite,
        "doctor_findings": len(findings),
        "findings": [asdict(finding) for finding in findings],
        "stopped_by_doctor": stopping.code if stopping else None,
    }


def _validation_metric_names(state: State) -> list[str]:
    """The ``val/<name>`` keys the run summary reports, without computing the metrics."""
    return [f"{VALIDATION_LABEL}/{name}" for name in state.eval_metrics.get(VALIDATION_LABEL, {})]


def raise_if_stopped(doctor: list[Callback]) -> None:
    """After the outputs are written: raise ``TrainingStopped`` if the doctor stopped training."""
    for callback in doctor:
        if isinstance(callback, TrainingDoctor) and callback.stopping is not None:
            raise TrainingStopped(
                f"stopped by the training doctor: {callback.stopping.line()} "
                f"(exit status {DOCTOR_STOPPED_EXIT_STATUS})"
            )
