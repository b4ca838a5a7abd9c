"""The training doctor's rules: what a run's loss, gradient-norm and accuracy histories say, in plain words.

Pure arithmetic on the numbers the callback (``algorithms.training_doctor``) takes from Composer each batch,
so every rule is tested on synthetic curves in milliseconds. Each threshold is a key of the recipe's
``doctor`` section (``recipes.schema.DoctorConfig``). The reference point is ln(num_classes): the
cross-entropy of a model that guesses uniformly, where a freshly initialised classifier starts and where a run
that learns nothing stays. Losses are smoothed with a running median, which one bad batch does not move.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

from recipes.findings import Finding
from recipes.schema import DoctorConfig

SOURCE = "doctor"
LOSS_NOT_FINITE = "loss_not_finite"
GRAD_NORM_NOT_FINITE = "grad_norm_not_finite"


@dataclass(frozen=True)
class NonFiniteEvidence:
    """What the callback saw at the failing step, for naming the likely cause."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    # Mixed precision with fp16 and a GradScaler.
    fp16: bool
    # Every floating-point input of the batch (on every rank) was finite.
    inputs_finite: bool
    # Consecutive steps the GradScaler skipped for non-finite gradients, this one included.
    skipped_steps: int = 0
    # Where the state at the failure was saved for inspection, if it was.
    inspection_checkpoint: str | None = None


def _number(value: float) -> str:
    """Three significant digits, the way people read a loss or a gradient norm."""
    return f"{value:.3g}" if math.isfinite(value) else str(value)


class Diagnosis:
    """Watches a run's numbers batch by batch and returns each finding once, the first time its rule holds."""

    def __init__(
        self,
        settings: DoctorConfig,
        num_classes: int,
        warmup_batches: int,
        grace_batches: int,
        samples_per_microbatch: int | None = None,
    ) -> None:
        self.settings = settings
        self.num_classes = num_classes
        self.chance_loss = math.log(num_classes)
        self.warmup_batches = warmup_batches
        self.grace_batches = grace_batches
        # The initial-loss rule compares a too-high loss with this (a loss summed over the microbatch is that
        # many times ln(C)); the callback sets it from Composer's state when microbatching is "auto".
        self.samples_per_microbatch = samples_per_microbatch
        self.reported: set[str] = set()
        self.findings: list[Finding] = []
        history = max(settings.median_window, settings.smoothing_batches)
        self.recent_losses: deque[float] = deque(maxlen=settings.median_window)
        self.smoothing: deque[float] = deque(maxlen=settings.smoothing_batches)
        self.smoothed_history: deque[float] = deque(maxlen=settings.stall_window + 1)
        self.grad_norms: deque[float] = deque(maxlen=history)
        self.smoothed: float | None = None
        self.lowest_smoothed = math.inf
        self.lowest_smoothed_step = 0
        self.largest_grad_median = 0.0
        self.peak_lr = 0.0
        self.diverging_batches = 0
        self.steps_observed = 0
        self.last_step = 0

    # ---- what the callback calls ----

    def observe_batch(self, step: int, loss: float, grad_norm: float, lr: float) -> list[Finding]:
        """Take one finished batch and return new findings (a non-finite grad norm: a skipped fp16 step)."""
        found: list[Finding] = []
        settings = self.settings
        self.peak_lr = max(self.peak_lr, lr)
        if self.steps_observed == 0 and step == 1:
            found += self._check_initial_loss(step, loss)
        self.steps_observed += 1
        self.last_step = step
        if len(self.recent_losses) >= settings.smoothing_batches:
            found += self._check_spike(step, loss, statistics.median(self.recent_losses))
        self.recent_losses.append(loss)
        self.smoothing.append(loss)
        smoothed = statistics.median(self.smoothing)
        self.smoothed = smoothed
        # The median of a few batches is noisy: the minimum counts full windows only.
        if len(self.smoothing) == self.smoothing.maxlen and smoothed < self.lowest_smoothed:
            self.lowest_smoothed, self.lowest_smoothed_step = smoothed, step
        self.smoothed_history.append(smoothed)
        found += self._check_diverging(step, smoothed, lr)
        found += self._check_loss_at_chance(step, smoothed, lr)
        found += self._check_stalled(step, smoothed, lr)
        if math.isfinite(grad_norm):
            found += self._check_grad_norm(step, grad_norm, smoothed, lr)
        return found

    def observe_eval(self, step: int, accuracy: float) -> list[Finding]:
        """Take a validation top-1 accuracy; a finding if it is at chance after warmup and the grace."""
        if step < self.warmup_batches + self.grace_batches:
            return []
        chance = 1 / self.num_classes
        margin = min(self.settings.chance_accuracy_margin * chance, self.settings.chance_accuracy_max_margin)
        if accuracy > chance + margin:
            return []
        if self.smoothed is not None and self.lowest_smoothed < self._below_chance_loss():
            training = (
                f"The training loss did fall (smoothed {_number(self.smoothed)} against "
                f"ln({self.num_classes})={self.chance_loss:.3f}), so what the model learns from the training "
                "labels does not carry over to validation: the labels likely do not match the images "
                "(shuffled or misaligned labels, or a different class order in the train and val folders). "
                "Check a few images against their labels in both splits."
            )
        else:
            training = (
                "The training loss is also at chance, so nothing is learned at all: either the optimisation "
                "(see loss_at_chance: learning rate, warmup) or labels unrelated to the images (shuffled, or "
                "read from the wrong column or file). Check a few images against their labels."
            )
        return self._report(
            "accuracy_at_chance",
            step,
            f"validation top-1 {accuracy:.4f} is at chance (1/{self.num_classes} = {chance:.4f}; threshold "
            f"{chance + margin:.4f}) after {step} steps, {step - self.warmup_batches} of them past warmup. "
            + training,
        )

    def explain_nonfinite(self, evidence: NonFiniteEvidence) -> Finding:
        """The fatal finding for a non-finite loss or gradient norm, naming the likely cause from evidence."""
        step = evidence.step
        if not math.isfinite(evidence.loss):
            code, what = LOSS_NOT_FINITE, f"the training loss is {evidence.loss}"
        else:
            code = GRAD_NORM_NOT_FINITE
            what = f"the gradient norm is {evidence.grad_norm} (loss {_number(evidence.loss)})"
            if evidence.skipped_steps > 1:
                what += f", for {evidence.skipped_steps} steps in a row"
        climbing = self._climbing()
        if not evidence.inputs_finite:
            cause = (
                "The batch's inputs contain NaN or Inf values, so the data is the cause: look for an image "
                "or a transform that yields them (a zero std in data.std, a corrupt file, an augmentation "
                "dividing by zero); the inspection checkpoint's step says which batch."
            )
        elif evidence.fp16:
            cause = (
                "precision is amp_fp16, whose largest number is 65504: activations or gradients overflowed. "
                "Fix: precision=amp_bf16 on GPUs that have it (A100, H100, L4; not the T4) or fp32, or lower "
                "optimizer.base_lr, or add algorithms.gradient_clipping."
            )
            if climbing:
                cause += f" The run was also climbing before: {climbing}."
        elif climbing:
            cause = (
                f"It was climbing before: {climbing}. The learning rate is likely too high (LR "
                f"{_number(evidence.lr)}, peak {_number(self.peak_lr)}). Fix: lower optimizer.base_lr "
                "(halve it, or run an LR range test), lengthen scheduler.t_warmup, or add "
                "algorithms.gradient_clipping."
            )
        else:
            steady = (
                f"smoothed loss {_number(self.smoothed)} just before, lowest {_number(self.lowest_smoothed)}"
                if self.smoothed is not None
                else "no finite step before it"
            )
            cause = (
                f"Nothing points at one cause: the inputs are finite, precision is not fp16, and the run was "
                f"not climbing ({steady}; LR {_number(evidence.lr)}). Candidates: a loss or model change "
                "that can produce NaN (log of 0, division by 0, sqrt of a negative), labels outside "
                "0..num_classes-1, a learning rate too high for this batch size, or a hardware fault (rerun "
                "from the last checkpoint)."
            )
        saved = (
            f" The state at this step is saved for inspection as {evidence.inspection_checkpoint}; the last "
            "good checkpoints are untouched."
            if evidence.inspection_checkpoint
            else ""
        )
        message = f"{what} at step {step}; training stopped. {cause}{saved}"
        finding = Finding(code=code, severity="error", message=message, source=SOURCE, step=step)
        self.reported.add(code)
        self.findings.append(finding)
        return finding

    # ---- the rules ----

    def _check_initial_loss(self, step: int, loss: float) -> list[Finding]:
        ratio = loss / self.chance_loss
        if ratio < self.settings.initial_loss_ratio:
            return []
        samples = self.samples_per_microbatch
        if samples and abs(ratio / samples - 1) < 0.25:
            cause = (
                f"{ratio:.1f}x is close to the {samples} samples per microbatch: the loss is most likely "
                "summed over the batch instead of averaged (reduction='sum'), which makes the gradients that "
                "many times too large, as if the LR were. Average it (reduction='mean')."
            )
        else:
            cause = (
                "An untrained classifier should score about ln(num_classes). Likely causes: logits far too "
                "large at initialisation (a custom head or init), inputs not normalised "
                "(data.mean/data.std), or a loss summed instead of averaged."
            )
        return self._report(
            "initial_loss_too_high",
            step,
            f"the first batch's loss {_number(loss)} is {ratio:.1f}x "
            f"ln({self.num_classes})={self.chance_loss:.3f}. " + cause,
        )

    def _check_spike(self, step: int, loss: float, median: float) -> list[Finding]:
        settings = self.settings
        if (
            median <= 0
            or loss < settings.spike_ratio * median
            or loss - median < settings.spike_min_rise * self.chance_loss
        ):
            return []
        return self._report(
            "loss_spike",
            step,
            f"batch loss {_number(loss)} is {loss / median:.1f}x the median {_number(median)} of the last "
            f"{len(self.recent_losses)} batches (reported once; later spikes are not). One spike can be a "
            "bad batch; repeated ones mean the learning rate is at the edge of stability: lower "
            "optimizer.base_lr or add algorithms.gradient_clipping, and check the data for corrupt images "
            "or wrong labels.",
        )

    def _reference(self) -> tuple[float, str]:
        """The loss the run has shown it can reach, and where: its lowest smoothed loss, or ln(C) if lower.

        An untrained classifier starts at ln(C), so a loss well above it is a rise even before the first
        full smoothing window; not when the first batch's loss was already far above it (then the loss is on
        another scale, and only the run's own minimum is a reference).
        """
        lowest = (
            self.lowest_smoothed,
            f"its minimum {_number(self.lowest_smoothed)} (step {self.lowest_smoothed_step})",
        )
        if not self._on_chance_scale() or self.lowest_smoothed <= self.chance_loss:
            return lowest
        return (
            self.chance_loss,
            f"ln({self.num_classes})={self.chance_loss:.3f} (an untrained model's loss)",
        )

    def _check_diverging(self, step: int, smoothed: float, lr: float) -> list[Finding]:
        settings = self.settings
        reference, where = self._reference()
        rising = (
            smoothed > settings.divergence_ratio * reference
            and smoothed - reference >= settings.divergence_min_rise * self.chance_loss
        )
        self.diverging_batches = self.diverging_batches + 1 if rising else 0
        if self.diverging_batches < settings.divergence_window:
            return []
        return self._report(
            "loss_diverging",
            step,
            f"smoothed loss {_number(smoothed)} has been above {settings.divergence_ratio:g}x {where} for "
            f"{self.diverging_batches} steps: training is diverging. The learning rate is likely too high "
            f"for this batch size (LR {_number(lr)}, peak {_number(self.peak_lr)}). Fix: lower "
            "optimizer.base_lr (halve it, or run an LR range test), lengthen scheduler.t_warmup, or add "
            "algorithms.gradient_clipping.",
        )

    def _on_chance_scale(self) -> bool:
        """Whether ln(C) means anything for this loss: not if the first batch's loss was far above it."""
        return "initial_loss_too_high" not in self.reported

    def _below_chance_loss(self) -> float:
        """The smoothed loss a run must get under to count as having learned something."""
        return (1 - self.settings.chance_loss_tolerance) * self.chance_loss

    def _check_loss_at_chance(self, step: int, smoothed: float, lr: float) -> list[Finding]:
        if (
            step < self.warmup_batches + self.grace_batches
            or len(self.smoothing) < self.smoothing.maxlen
            or self.lowest_smoothed < self._below_chance_loss()
            or not self._on_chance_scale()
        ):
            return []
        tolerance = self.settings.chance_loss_tolerance
        chance = f"ln({self.num_classes})={self.chance_loss:.3f}"
        if self.lowest_smoothed <= (1 + tolerance) * self.chance_loss:
            where = f"is within {tolerance:.0%} of {chance}, the loss of guessing uniformly,"
        else:
            lowest = _number(self.lowest_smoothed)
            where = f"has stayed above {chance}, the loss of guessing uniformly (lowest {lowest}),"
        return self._report(
            "loss_at_chance",
            step,
            f"smoothed loss {_number(smoothed)} {where} after {step} steps, "
            f"{step - self.warmup_batches} of them past warmup: the model is not learning. "
            f"Likely the learning rate (now {_number(lr)}, peak {_number(self.peak_lr)}): too high without "
            "warmup for this batch size (large batches need scheduler.t_warmup of a few epochs), or far too "
            "low. Try optimizer.base_lr 10x lower and 10x higher on a short run; also check that the labels "
            "match the images.",
        )

    def _check_stalled(self, step: int, smoothed: float, lr: float) -> list[Finding]:
        settings = self.settings
        history = self.smoothed_history
        if (
            len(history) < history.maxlen
            or step <= self.warmup_batches
            or self.peak_lr <= 0
            or lr > settings.stall_lr_fraction * self.peak_lr
            or smoothed < settings.high_loss_fraction * self.chance_loss
            or self.lowest_smoothed >= self._below_chance_loss()
            or not self._on_chance_scale()
        ):
            return []
        before = history[0]
        improvement = (before - smoothed) / before
        if improvement >= settings.stall_min_improvement:
            return []
        return self._report(
            "loss_stalled",
            step,
            f"smoothed loss {_number(smoothed)} ({smoothed / self.chance_loss:.0%} of "
            f"ln({self.num_classes})={self.chance_loss:.3f}) changed by {-improvement:+.1%} over the last "
            f"{settings.stall_window} steps while the LR {_number(lr)} is {lr / self.peak_lr:.1%} of its "
            f"peak {_number(self.peak_lr)}: learning stalled because the schedule decayed the LR before the "
            "model learned. The base LR is likely too low: raise optimizer.base_lr (3-10x, or run an LR "
            "range test), or train longer (max_duration).",
        )

    def _check_grad_norm(self, step: int, grad_norm: float, smoothed: float, lr: float) -> list[Finding]:
        settings = self.settings
        found: list[Finding] = []
        norms = self.grad_norms
        if len(norms) >= settings.smoothing_batches:
            median = statistics.median(norms)
            if median > 0 and grad_norm >= settings.grad_norm_explode_ratio * median:
                found += self._report(
                    "grad_norm_exploding",
                    step,
                    f"gradient norm {_number(grad_norm)} is {grad_norm / median:.0f}x its median "
                    f"{_number(median)} over the last {len(norms)} steps (LR {_number(lr)}). Exploding "
                    "gradients precede divergence and NaN: lower optimizer.base_lr, lengthen "
                    "scheduler.t_warmup, or add algorithms.gradient_clipping (clipping_type: norm).",
                )
        norms.append(grad_norm)
        if len(norms) < settings.smoothing_batches:
            return found
        median = statistics.median(norms)
        self.largest_grad_median = max(self.largest_grad_median, median)
        if (
            step > self.warmup_batches
            and self.largest_grad_median > 0
            and median <= settings.grad_norm_vanish_ratio * self.largest_grad_median
            and smoothed >= settings.high_loss_fraction * self.chance_loss
            and self._on_chance_scale()
        ):
            found += self._report(
                "grad_norm_vanishing",
                step,
                f"median gradient norm {_number(median)} over the last {len(norms)} steps is "
                f"{median / self.largest_grad_median:.1e} of its earlier "
                f"{_number(self.largest_grad_median)} while the smoothed loss {_number(smoothed)} is still "
                f"high ({smoothed / self.chance_loss:.0%} of ln({self.num_classes})): the network has "
                "stopped learning, typically dead ReLUs or saturated layers after an earlier blow-up. "
                "Restart from an earlier checkpoint with a lower optimizer.base_lr or a longer "
                "scheduler.t_warmup.",
            )
        return found

    def _climbing(self) -> str:
        """How the run was climbing before a failure, in numbers; empty when it was not."""
        settings = self.settings
        signs = []
        smoothed = self.smoothed
        reference, where = self._reference()
        if smoothed is not None and smoothed - reference >= settings.climbing_loss_rise * self.chance_loss:
            signs.append(f"smoothed loss {_number(smoothed)} at step {self.last_step} against {where}")
        norms = self.grad_norms
        if len(norms) > 1:
            earlier = statistics.median(list(norms)[:-1])
            if earlier > 0 and norms[-1] >= settings.climbing_grad_norm_ratio * earlier:
                signs.append(f"gradient norm {_number(norms[-1])} against a median of {_number(earlier)}")
        if "loss_diverging" in self.reported or "grad_norm_exploding" in self.reported:
            signs.append("the doctor had already reported it diverging")
        return "; ".join(signs)

    def _report(self, code: str, step: int, message: str) -> list[Finding]:
        if code in self.reported:
            return []
        self.reported.add(code)
        finding = Finding(code=code, severity="warning", message=message, source=SOURCE, step=step)
        self.findings.append(finding)
        return [finding]

    # ---- resuming ----

    def state_dict(self) -> dict[str, Any]:
        """The histories and what was reported, so an autoresumed run neither forgets nor repeats."""
        return {
            "reported": sorted(self.reported),
            "recent_losses": list(self.recent_losses),
            "smoothing": list(self.smoothing),
            "smoothed_history": list(self.smoothed_history),
            "grad_norms": list(self.grad_norms),
            "lowest_smoothed": self.lowest_smoothed,
            "lowest_smoothed_step": self.lowest_smoothed_step,
            "largest_grad_median": self.largest_grad_median,
            "peak_lr": self.peak_lr,
            "steps_observed": self.steps_observed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reported = set(state["reported"])
        for name in ("recent_losses", "smoothing", "smoothed_history", "grad_norms"):
            getattr(self, name).extend(state[name])
        self.smoothed = statistics.median(self.smoothing) if self.smoothing else None
        self.lowest_smoothed = state["lowest_smoothed"]
        self.lowest_smoothed_step = state["lowest_smoothed_step"]
        self.largest_grad_median = state["largest_grad_median"]
        self.peak_lr = state["peak_lr"]
        self.steps_observed = state["steps_observed"]
