"""The training doctor: a Composer callback, on by default, that watches a run and says plainly what is wrong.

The failures it exists for cost days on a GPU before anyone looks: a large-batch LR with no warmup (loss
flat at chance), a base LR ten times too low (learning stalls once the cosine decays), a loss summed where it
should be averaged, NaN under fp16. The rules and their messages live in ``callbacks.doctor_rules``; this
module feeds them Composer's numbers, logs ``train/grad_norm`` every batch, prints each finding once (global
rank 0) and appends it to ``RUN_FOLDER/findings.jsonl``.

A non-finite loss (or gradient norm) is fatal. Every rank agrees to stop (the flags travel in the step's one
shared reading, ``callbacks.step_readings``: no host sync or all-reduce of the doctor's own); the state is saved
for inspection to its own file, whose name the resume logic never picks up; Composer's CheckpointSaver is
switched off, so the stop neither saves NaN weights as the run's final checkpoint nor rotates the last good ones
away; scheduled evaluation is switched off; and train.py exits with ``DOCTOR_STOPPED_EXIT_STATUS`` after writing
its summary.

Under task moco_v3 the diagnosis is a ``ContrastiveDiagnosis``, and every ``metrics_every_n_batches`` steps the
doctor also measures the collapse signal ``moco/output_std_ratio`` (``output_std_ratio``), read in the same
shared step reading, and logs it beside the loss.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from composer.core import Callback, Precision, State
from composer.loggers import Logger
from composer.utils.checkpoint import save_checkpoint

from callbacks.doctor_rules import ContrastiveDiagnosis, Diagnosis, NonFiniteEvidence
from callbacks.findings import Finding, announce_findings
from callbacks.metric_names import TRAIN_LOSS, VALIDATION_LABEL, batch_loss_value, validation_metrics
from callbacks.ranks import any_rank
from callbacks.step_readings import Contribution, ReadsStep
from callbacks.stopping import stop_early
from model import MocoOutputs

# Distinct from 0 (done), 1 (a crash), 2 (a usage error), 75 (preempted, relaunch) and 143 (SIGTERM before
# training): the doctor stopped a run that cannot get better by relaunching it unchanged.
DOCTOR_STOPPED_EXIT_STATUS = 3
# Not Composer's ep{epoch}-ba{batch}-rank0.pt pattern, so autoresume and checkpoint rotation leave it alone.
INSPECTION_FILENAME = "doctor-nonfinite-ba{batch}.pt"
GRAD_NORM_METRIC = "train/grad_norm"
# The step reading's flags: true on every rank when true on any.
LOSS_NOT_FINITE_FLAG = "doctor/loss_not_finite"
GRAD_NORM_NOT_FINITE_FLAG = "doctor/grad_norm_not_finite"
OUTPUT_STD_METRIC = "moco/output_std_ratio"


class TrainingStopped(Exception):
    """The doctor stopped training on a fatal finding; the message is the finding, with its checkpoint."""


def _scales_gradients(state: State) -> bool:
    """Whether Composer scales gradients this run (amp_fp16: trainer.py `_use_grad_scaling`, 0.32.1)."""
    return state.precision == Precision.AMP_FP16 and state.scaler is not None and state.scaler.is_enabled()


def _inputs_finite(batch: Any) -> bool:
    """Whether every floating-point tensor of a batch (a tensor, or a tuple, list or dict) is finite."""
    if isinstance(batch, torch.Tensor):
        return not batch.is_floating_point() or bool(torch.isfinite(batch).all())
    if isinstance(batch, dict):
        return all(_inputs_finite(value) for value in batch.values())
    if isinstance(batch, tuple | list):
        return all(_inputs_finite(value) for value in batch)
    return True


def weights_are_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter is finite; evaluating NaN weights only produces misleading numbers."""
    return all(bool(torch.isfinite(parameter).all()) for parameter in model.parameters())


def output_std_ratio(outputs: MocoOutputs) -> torch.Tensor:
    """The collapse signal: the per-dimension standard deviation over the batch of the L2-normalised keys of both
    views, averaged over the d dimensions, times sqrt(d); a device scalar, read with the step.

    Unit vectors spread over the sphere have a per-dimension std of 1/sqrt(d), so the ratio is about 1 when
    healthy and 0 when every image maps to the same vector (SimSiam, Chen and He 2021, section 4.1, measures
    it on the normalised projector output). The keys are that output (the momentum encoder's projector),
    already normalised and gathered from every rank, so the figure is the global (micro)batch's and the same on
    every rank; the queries pass through the predictor, and would need a normalisation and a gather of their
    own. The momentum encoder follows the base encoder about 1 / (1 - m) steps behind (100 at m = 0.99), so a
    collapse of the base encoder shows in the keys that much later.
    """
    keys = torch.cat([outputs.keys1, outputs.keys2]).float()
    return keys.std(dim=0).mean() * math.sqrt(keys.shape[1])


class TrainingDoctor(ReadsStep, Callback):
    """Feeds each batch's loss, gradient norm and LR, and each validation accuracy, to a ``Diagnosis``.

    The gradient norm is the global L2 norm of the gradient the optimizer step uses: measured after each
    backward (the last one of a batch holds the gradient accumulated over its microbatches and all-reduced
    across ranks; SAM's second pass is its perturbed gradient), so before gradient clipping and any algorithm
    that edits gradients at AFTER_TRAIN_BATCH, and divided by the GradScaler's scale under amp_fp16, where
    Composer's gradients stay scaled until it unscales them just before AFTER_TRAIN_BATCH.
    """

    def __init__(
        self,
        diagnosis: Diagnosis,
        output_folder: str | Path,
        skipped_steps_limit: int,
        metrics_every_n_batches: int = 10,
    ) -> None:
        self.diagnosis = diagnosis
        # How often a contrastive run's collapse signal is measured and logged (logging.metrics_every_n_batches).
        self.metrics_every_n_batches = max(1, metrics_every_n_batches)
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
            self.diagnosis.use_microbatch(state.device_train_microbatch_size)

    def after_backward(self, state: State, logger: Logger) -> None:
        # A tensor, not a float: no device sync per microbatch.
        gradients = [parameter.grad for parameter in state.model.parameters() if parameter.grad is not None]
        self._backward_norm = torch.nn.utils.get_total_norm(gradients) if gradients else None

    def after_train_batch(self, state: State, logger: Logger) -> None:
        norm = self._backward_norm
        if norm is not None and _scales_gradients(state):
            # The scale this step's gradients were multiplied by; Composer updates it only after the step. The
            # tensor, not get_scale()'s float, which waits for the GPU (torch/amp/grad_scaler.py:537-551); it is
            # None before the first scaled step, when get_scale() returns the initial scale without a sync.
            scale = state.scaler._get_scale_async()
            norm = norm / (state.scaler.get_scale() if scale is None else scale)
        self._grad_norm = norm

    def step_contribution(self, state: State) -> Contribution:
        loss = batch_loss_value(state)
        norm = self._grad_norm
        loss_not_finite = ~torch.isfinite(loss) if isinstance(loss, torch.Tensor) else not math.isfinite(loss)
        flags: dict[str, torch.Tensor | bool] = {LOSS_NOT_FINITE_FLAG: loss_not_finite}
        if norm is not None:
            flags[GRAD_NORM_NOT_FINITE_FLAG] = ~torch.isfinite(norm)
        values: dict[str, torch.Tensor | float | None] = {TRAIN_LOSS: loss, GRAD_NORM_METRIC: norm}
        if self._measures_output_std(state):
            values[OUTPUT_STD_METRIC] = output_std_ratio(state.outputs)
        return Contribution(values=values, flags=flags)

    def _measures_output_std(self, state: State) -> bool:
        """Whether this step measures the collapse signal: a contrastive run, on a metrics line's step."""
        return (
            isinstance(self.diagnosis, ContrastiveDiagnosis)
            and int(state.timestamp.batch) % self.metrics_every_n_batches == 0
            and isinstance(getattr(state, "outputs", None), MocoOutputs)
        )

    def batch_end(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch)
        reading = self.step_reading(state)
        loss, grad_norm = reading.values[TRAIN_LOSS], reading.values[GRAD_NORM_METRIC]
        self._backward_norm = self._grad_norm = None
        lr = float(state.optimizers[0].param_groups[0]["lr"])
        if grad_norm is not None:
            logger.log_metrics({GRAD_NORM_METRIC: grad_norm})
        fp16 = _scales_gradients(state)
        # Agreed flags: every rank counts the same skipped steps and takes the same decision to stop.
        grad_finite = not reading.flags.get(GRAD_NORM_NOT_FINITE_FLAG, False)
        # Under amp_fp16 the GradScaler skips a step with non-finite gradients and lowers its scale: normal
        # now and then, a failure only when it keeps happening.
        self._skipped_steps = 0 if grad_finite or not fp16 else self._skipped_steps + 1
        fatal = reading.flags[LOSS_NOT_FINITE_FLAG] or (
            not grad_finite and (not fp16 or self._skipped_steps >= self.skipped_steps_limit)
        )
        measured = math.nan if grad_norm is None else grad_norm
        if fatal:
            self._stop(state, step, loss, measured, lr, fp16)
            return
        for finding in self.diagnosis.observe_batch(step, loss, measured, lr):
            self._announce(finding)
        ratio = reading.values.get(OUTPUT_STD_METRIC)
        if ratio is not None and isinstance(self.diagnosis, ContrastiveDiagnosis):
            logger.log_metrics({OUTPUT_STD_METRIC: ratio})
            for finding in self.diagnosis.observe_output_std(step, ratio):
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
        inputs_finite = not any_rank(state, not _inputs_finite(state.batch))
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
        stop_early(state, save_checkpoint=False)

    def _announce(self, finding: Finding) -> None:
        announce_findings(self.output_folder, [finding])

    def state_dict(self) -> dict[str, Any]:
        return {"diagnosis": self.diagnosis.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "diagnosis" in state:
            self.diagnosis.load_state_dict(state["diagnosis"])


def doctor_summary(doctor: list[Callback], state: State, *, weights_finite: bool) -> dict[str, Any]:
    """What summary.json carries in every run: the count of doctor findings and what stopped it (its
    ``findings`` list is the run folder's whole record, training.summary.build_summary).

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
