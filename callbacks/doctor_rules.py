"""The training doctor's rules: what a run's loss, gradient-norm and accuracy histories say, in plain words.

Pure arithmetic on the numbers the callback (``callbacks.training_doctor``) takes from Composer each batch,
so every rule is tested on synthetic curves in milliseconds. Each threshold is a key of the recipe's
``doctor`` section (``recipes.schema.DoctorConfig``). The reference point is the chance loss: the loss of a
model that guesses 1/num_classes for every class, where a freshly initialised classifier starts and where a
run that learns nothing stays. It depends on the loss (``model.chance_loss``): ln(num_classes) under
cross-entropy, about ln(num_classes) + 1 under binary cross-entropy. Losses are smoothed with a running
median, which one bad batch does not move.

Contrastive runs (task moco_v3) have no classes and no accuracy: ``ContrastiveDiagnosis`` takes the loss the
objective predicts at initialisation (``model.moco_initial_loss``: each query cannot yet tell its positive key
from the negatives, a uniform guess over them) as its chance loss, keeps the rules about the loss's stability
(spikes, divergence, NaN, gradient norms), and replaces the chance and accuracy rules with ones for a
contrastive loss, which at T = 1 moves only a little from its start even when healthy.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from callbacks.findings import Finding
from model import moco_initial_loss
from recipes.schema import DoctorConfig, LossReduction

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
        chance_loss: float | None = None,
    ) -> None:
        self.settings = settings
        self.num_classes = num_classes
        # The run's loss for a uniform 1/C guess; None: ln(C), the cross-entropy's.
        self.chance_loss = math.log(num_classes) if chance_loss is None else chance_loss
        self.warmup_batches = warmup_batches
        self.grace_batches = grace_batches
        # The initial-loss rule compares a too-high loss with this (a loss summed over the microbatch is that
        # many times the chance loss); the callback sets it from Composer's state when microbatching is
        # "auto".
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

    def use_microbatch(self, samples: int) -> None:
        """The samples per microbatch Composer settled on (the callback calls it when the recipe's is "auto")."""
        self.samples_per_microbatch = samples

    def _chance(self) -> str:
        """The reference in messages: its value and what it is."""
        return f"the chance loss {self.chance_loss:.3f} (guessing 1/{self.num_classes} for every class)"

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
                f"The training loss did fall (smoothed {_number(self.smoothed)} against {self._chance()}), "
                "so what the model learns from the training labels does not carry over to validation: the "
                "labels likely do not match the images (shuffled or misaligned labels, or a different class "
                "order in the train and val folders). Check a few images against their labels in both splits."
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
                "An untrained classifier should score about the chance loss. Likely causes: logits far too "
                "large at initialisation (a custom head or init), inputs not normalised "
                "(data.mean/data.std), or a loss summed instead of averaged."
            )
        return self._report(
            "initial_loss_too_high",
            step,
            f"the first batch's loss {_number(loss)} is {ratio:.1f}x {self._chance()}. " + cause,
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
        """The loss the run has shown it can reach, and where: its lowest smoothed loss, or the chance loss if
        lower.

        An untrained classifier starts at the chance loss, so a loss well above it is a rise even before the
        first full smoothing window; not when the first batch's loss was already far above it (then the loss
        is on another scale, and only the run's own minimum is a reference).
        """
        lowest = (
            self.lowest_smoothed,
            f"its minimum {_number(self.lowest_smoothed)} (step {self.lowest_smoothed_step})",
        )
        if not self._on_chance_scale() or self.lowest_smoothed <= self.chance_loss:
            return lowest
        return (
            self.chance_loss,
            f"the chance loss {self.chance_loss:.3f} (an untrained model's loss)",
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
        """Whether the chance loss means anything for this loss: not if the first batch's was far above it."""
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
        chance = self._chance()
        if self.lowest_smoothed <= (1 + tolerance) * self.chance_loss:
            where = f"is within {tolerance:.0%} of {chance},"
        else:
            where = f"has stayed above {chance} (lowest {_number(self.lowest_smoothed)}),"
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
            f"smoothed loss {_number(smoothed)} ({smoothed / self.chance_loss:.0%} of the chance loss "
            f"{self.chance_loss:.3f}) changed by {-improvement:+.1%} over the last "
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
                f"high ({smoothed / self.chance_loss:.0%} of the chance loss {self.chance_loss:.3f}): the "
                "network has stopped learning, typically dead ReLUs or saturated layers after an earlier "
                "blow-up. Restart from an earlier checkpoint with a lower optimizer.base_lr or a longer "
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


# ---- contrastive runs (task moco_v3) ----

# facebookresearch/moco-v3@c349e6e, the ResNet-50 settings: LARS is the default optimizer (main_moco.py:112) at
# --lr 0.6 (main_moco.py:65) for the default 100 epochs (main_moco.py:56), per 256 images by the linear rule
# (main_moco.py:190); the 300- and 1000-epoch runs use --lr=.3 (CONFIG.md:29 and :44). Its one AdamW value,
# 1.5e-4, is for ViTs (CONFIG.md:111), so there is no official AdamW or SGD value for a ResNet.
OFFICIAL_LARS_LR_100_EPOCHS = 0.6
OFFICIAL_LARS_LR_300_EPOCHS = 0.3
OFFICIAL_VIT_ADAMW_LR = 1.5e-4


@dataclass(frozen=True)
class OfficialLr:
    """MoCo v3's published base LR per 256 images for this run, and where it is published."""

    per_256: float
    source: str


def official_moco_lr(optimizer: str, epochs: float) -> OfficialLr | None:
    """MoCo v3's base LR per 256 images for a ResNet-50 under ``optimizer`` for a run of ``epochs``; None for an
    optimizer it publishes no ResNet value for (AdamW's 1.5e-4 is the ViTs')."""
    if optimizer != "lars":
        return None
    if epochs >= 300:
        return OfficialLr(
            OFFICIAL_LARS_LR_300_EPOCHS, "LARS, ResNet-50, 300 and 1000 epochs (moco-v3 CONFIG.md: --lr=.3)"
        )
    return OfficialLr(
        OFFICIAL_LARS_LR_100_EPOCHS, "LARS, ResNet-50, 100 epochs (moco-v3 main_moco.py: --lr 0.6)"
    )


@dataclass(frozen=True)
class ContrastiveObjective:
    """What MoCo v3's loss at initialisation depends on: the keys each query is scored against, T, sum or mean."""

    # Queries (and keys) per rank in one forward: the samples per microbatch.
    keys_per_rank: int
    world_size: int
    queue_size: int
    temperature: float
    loss_reduction: str

    @property
    def gathered_keys(self) -> int:
        """The current step's keys one query sees: every rank's microbatch."""
        return self.keys_per_rank * self.world_size

    @property
    def logits(self) -> int:
        """Logits per query: the gathered keys (one of them the positive) and the queue."""
        return self.gathered_keys + self.queue_size

    def initial_loss(self) -> float:
        """The loss the run should start near (``model.moco_initial_loss``)."""
        return moco_initial_loss(self.gathered_keys, self.queue_size, self.temperature, self.loss_reduction)

    def describe(self) -> str:
        """The objective in words, for messages."""
        keys = f"{self.gathered_keys} gathered keys ({self.keys_per_rank} per process, {self.world_size} process(es))"
        queue = f" + a queue of {self.queue_size}" if self.queue_size else ""
        return (
            f"{keys}{queue}, T = {self.temperature:g}, the 2T scale, the two terms "
            f"{'summed' if self.loss_reduction == LossReduction.sum else 'averaged'} (moco.loss_reduction="
            f"{self.loss_reduction})"
        )

    def miscounts(self) -> list[tuple[float, str]]:
        """(factor on the predicted start, the likely reason) for the usual ways a loss's scale goes wrong."""
        two_t = 2 * self.temperature
        summed = self.loss_reduction == LossReduction.sum
        causes = [
            (
                0.5 if summed else 2.0,
                "the two symmetric terms L(q1, k2) and L(q2, k1) are averaged although moco.loss_reduction is "
                "sum (the official objective)"
                if summed
                else "the two symmetric terms L(q1, k2) and L(q2, k1) are summed although "
                "moco.loss_reduction is mean: halve their sum, or set moco.loss_reduction=sum if summing "
                "(the official code's choice) is what you want",
            )
        ]
        if two_t != 1:
            causes += [
                (1 / two_t, f"each term's cross-entropy is not multiplied by 2T = {two_t:g}"),
                (two_t, f"each term is multiplied by 2T = {two_t:g} twice"),
            ]
        causes.append(
            (
                (2.0 if summed else 0.5) / two_t,
                f"the terms' reduction is the other one and the 2T = {two_t:g} scale is missing",
            )
        )
        if self.queue_size:
            without_queue = math.log(self.gathered_keys) / math.log(self.logits)
            causes.append((without_queue, f"the queue's {self.queue_size} negatives are not in the logits"))
        if self.world_size > 1:
            local = math.log(self.keys_per_rank + self.queue_size) / math.log(self.logits)
            causes.append((local, f"the keys are not gathered from the {self.world_size} ranks"))
        return causes


class ContrastiveDiagnosis(Diagnosis):
    """The doctor's rules for a MoCo v3 run: the predicted start, progress from it, the LR against the official
    one, a schedule that decayed before the loss moved, and collapse; with the supervised rules about stability.

    The chance loss is the objective's predicted start (a uniform guess over the logits), so spikes, divergence
    and gradient norms keep their supervised meaning; the chance-loss, stall, initial-loss and accuracy rules
    are replaced. "Progress" is measured against the run's own first loss, not the prediction, so a start on
    another scale (reported once) does not make every later step look wrong.
    """

    def __init__(
        self,
        settings: DoctorConfig,
        objective: ContrastiveObjective,
        warmup_batches: int,
        grace_batches: int,
        global_batch_size: int,
        official_lr: OfficialLr | None,
    ) -> None:
        super().__init__(
            settings,
            num_classes=objective.logits,
            warmup_batches=warmup_batches,
            grace_batches=grace_batches,
            samples_per_microbatch=objective.keys_per_rank,
            chance_loss=objective.initial_loss(),
        )
        self.objective = objective
        self.global_batch_size = global_batch_size
        self.official_lr = official_lr
        # The first batch's loss, the start progress is measured from.
        self.start_loss: float | None = None
        self.output_std_ratio: float | None = None

    def use_microbatch(self, samples: int) -> None:
        """Fewer samples per microbatch means fewer gathered keys per query: a lower predicted start."""
        super().use_microbatch(samples)
        self.objective = replace(self.objective, keys_per_rank=samples)
        self.num_classes = self.objective.logits
        self.chance_loss = self.objective.initial_loss()

    def _chance(self) -> str:
        return f"the predicted start {self.chance_loss:.3g} ({self.objective.describe()})"

    def _on_chance_scale(self) -> bool:
        return "contrastive_initial_loss" not in self.reported

    def observe_batch(self, step: int, loss: float, grad_norm: float, lr: float) -> list[Finding]:
        found = super().observe_batch(step, loss, grad_norm, lr)
        found += self._check_official_lr(step)
        found += self._check_lr_decayed(step, lr)
        return found

    def observe_eval(self, step: int, accuracy: float) -> list[Finding]:
        """Nothing: pretraining has no classifier whose accuracy could be at chance."""
        return []

    def observe_output_std(self, step: int, ratio: float) -> list[Finding]:
        """Take the normalised keys' per-dimension std times sqrt(d) (1 healthy, 0 collapsed)."""
        self.output_std_ratio = ratio
        fraction = self.settings.collapse_std_fraction
        if ratio >= fraction:
            return []
        return self._report(
            "representation_collapsed",
            step,
            f"the L2-normalised keys' per-dimension standard deviation is {ratio:.3f} of the healthy "
            f"1/sqrt(d) (moco/output_std_ratio {ratio:.3f} < doctor.collapse_std_fraction {fraction:g}; 1 "
            "when the outputs spread over the sphere, 0 when every image maps to the same vector): the "
            "representation has collapsed, and a contrastive loss cannot fall once it has. Likely causes: "
            "the projector's last BatchNorm removed or frozen, a projector or predictor replaced by one whose "
            "output does not depend on the input, or an LR or weight decay far too high. Restart from a "
            "checkpoint before the collapse with the official projector (moco.* defaults) and "
            "optimizer.base_lr.",
        )

    # ---- the rules ----

    def _moved(self) -> float | None:
        """How far the lowest smoothed loss is below the first loss, as a fraction of it."""
        if self.start_loss is None or self.start_loss <= 0 or not math.isfinite(self.lowest_smoothed):
            return None
        return (self.start_loss - self.lowest_smoothed) / self.start_loss

    def _per_256(self) -> float:
        """The peak LR per 256 images, by the linear rule the official runs scale with."""
        return self.peak_lr * 256 / self.global_batch_size

    def _official(self) -> str:
        official = self.official_lr
        if official is None:
            return ""
        return f"; MoCo v3's is {official.per_256:g} per 256 for {official.source}"

    def _check_initial_loss(self, step: int, loss: float) -> list[Finding]:
        self.start_loss = loss
        predicted = self.chance_loss
        ratio = loss / predicted
        tolerance = self.settings.contrastive_initial_tolerance
        if abs(ratio - 1) <= tolerance:
            return []
        reasons = [
            reason for factor, reason in self.objective.miscounts() if abs(ratio / factor - 1) <= tolerance
        ]
        if reasons:
            cause = f"{ratio:.2f}x matches: " + "; or ".join(reasons) + "."
        else:
            cause = (
                f"{ratio:.2f}x matches no usual miscount. The loss is on another scale than the objective: check "
                f"moco.temperature (T = {self.objective.temperature:g}; at T well below 1 the initial cosines' "
                "spread divided by T lifts the start above this estimate), the 2T factor on each term, the "
                "negatives counted (gathered keys and queue), and whether the two terms are summed or averaged."
            )
        return self._report(
            "contrastive_initial_loss",
            step,
            f"the first batch's loss {_number(loss)} is {ratio:.2f}x {self._chance()}, more than "
            f"doctor.contrastive_initial_tolerance {tolerance:.0%} off. {cause} A loss on the wrong scale scales "
            "its gradients too, as if the LR were (LARS and AdamW absorb most of it, SGD does not).",
        )

    def _check_loss_at_chance(self, step: int, smoothed: float, lr: float) -> list[Finding]:
        """Not the chance loss: progress from the start after warmup and chance_grace."""
        moved = self._moved()
        minimum = self.settings.contrastive_min_progress
        if (
            step < self.warmup_batches + self.grace_batches
            or len(self.smoothing) < self.smoothing.maxlen
            or moved is None
            or moved >= minimum
        ):
            return []
        return self._report(
            "contrastive_loss_not_moving",
            step,
            f"smoothed loss {_number(smoothed)} (lowest {_number(self.lowest_smoothed)}) has moved "
            f"{moved:.1%} from its start {_number(self.start_loss or 0)} after {step} steps, "
            f"{step - self.warmup_batches} of them past warmup (doctor.contrastive_min_progress "
            f"{minimum:.0%}): the model is not learning to tell its positive key from the negatives. "
            f"Likely the LR (now {_number(lr)}, peak {_number(self.peak_lr)}, {_number(self._per_256())} per "
            f"256 images{self._official()}) far too low; or a collapsed representation (moco/output_std_ratio"
            f"{'' if self.output_std_ratio is None else f' {self.output_std_ratio:.2f}'}, healthy near 1). "
            "Fix: optimizer.base_lr at the official value with lr_scaling linear; check a short run moves.",
        )

    def _check_stalled(self, step: int, smoothed: float, lr: float) -> list[Finding]:
        """The supervised stall reads the chance loss; ``_check_lr_decayed`` is its contrastive form."""
        return []

    def _check_official_lr(self, step: int) -> list[Finding]:
        official = self.official_lr
        # After warmup the peak has been applied (the LR read at a step's end is the one that step used).
        if official is None or step <= self.warmup_batches or self.peak_lr <= 0:
            return []
        per_256 = self._per_256()
        fraction = self.settings.official_lr_fraction
        if per_256 >= fraction * official.per_256:
            return []
        vit = (
            f" {_number(per_256)} is close to {OFFICIAL_VIT_ADAMW_LR:g}, MoCo v3's value for ViTs under AdamW "
            "(CONFIG.md), not for a ResNet under LARS."
            if abs(per_256 / OFFICIAL_VIT_ADAMW_LR - 1) <= 0.25
            else ""
        )
        return self._report(
            "lr_below_official",
            step,
            f"the LR peaked at {_number(self.peak_lr)} at global batch {self.global_batch_size}, "
            f"{_number(per_256)} per 256 images: {per_256 / official.per_256:.2g}x the official "
            f"{official.per_256:g} per 256 ({official.source}), below doctor.official_lr_fraction "
            f"{fraction:g}.{vit} Fix: optimizer.base_lr={official.per_256:g} with optimizer.lr_scaling=linear "
            f"(applied LR {_number(official.per_256 * self.global_batch_size / 256)} at this batch).",
        )

    def _check_lr_decayed(self, step: int, lr: float) -> list[Finding]:
        settings = self.settings
        moved = self._moved()
        if (
            step <= self.warmup_batches
            or step < self.warmup_batches + self.grace_batches
            or self.peak_lr <= 0
            or lr >= settings.decayed_lr_fraction * self.peak_lr
            or len(self.smoothing) < self.smoothing.maxlen
            or moved is None
            or moved >= settings.contrastive_min_progress
        ):
            return []
        return self._report(
            "lr_decayed_before_learning",
            step,
            f"the schedule has decayed the LR to {_number(lr)}, {lr / self.peak_lr:.1%} of its peak "
            f"{_number(self.peak_lr)} (doctor.decayed_lr_fraction {settings.decayed_lr_fraction:g}), while "
            f"the smoothed loss {_number(self.smoothed or 0)} has moved {moved:.1%} from its start "
            f"{_number(self.start_loss or 0)}: the cosine is decaying an LR that never moved the loss, so the "
            f"rest of the run will not move it either. The peak is likely too low ({_number(self._per_256())} "
            f"per 256 images{self._official()}). Fix: raise optimizer.base_lr and start again (resuming "
            "continues the decayed schedule), or train longer (max_duration) so the peak lasts.",
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "start_loss": self.start_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.start_loss = state.get("start_loss")
