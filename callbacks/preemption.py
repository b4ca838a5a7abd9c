"""Preemption and exact resume: SIGTERM saves a checkpoint at the next batch boundary, and a resumed run goes on as
if it had never stopped.

An EC2 spot interruption (through the watcher in ``scripts/run_until_done.sh``), Slurm, Kubernetes and most
schedulers send SIGTERM, then kill the process after a grace period (two minutes on EC2; Composer's launcher
gives its ranks 30 s, its CLEANUP_TIMEOUT). Composer's own handler exits at once with status 143 and loses the
work since the last checkpoint. With ``Preemption`` the signal only sets a flag; at the next batch boundary the
processes agree to stop (under DDP the flag travels in the step's one shared reading, ``callbacks.step_readings``,
so every rank stops after the same batch),
Composer's CheckpointSaver writes the checkpoint with the exact batch position, and training ends through
Composer's normal end of ``fit``. ``raise_if_preempted`` then closes the trainer, which returns once remote
uploads have finished (Composer's RemoteUploaderDownloader joins its upload workers on close), and train.py exits
with ``PREEMPTED_EXIT_STATUS``.

``ExactResume`` is the other half: a run resumed mid-epoch starts the sampler after the samples already trained
on (``data.resumable_sampler``, instead of Composer spinning through them) and restores the RNG state saved with
the checkpoint, which Composer only restores at epoch starts or while spinning. With per-sample augmentation
seeds, the resumed run ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from composer import Trainer
from composer.callbacks import CheckpointSaver
from composer.core import Callback, State, Timestamp
from composer.loggers import Logger
from composer.utils import dist, reproducibility

from callbacks.step_readings import Contribution, ReadsStep
from callbacks.stopping import stop_early
from data.resumable_sampler import ResumableSampler

# sysexits.h EX_TEMPFAIL, "a temporary failure; the user is invited to retry": a checkpoint was saved and the same
# command resumes. Distinct from 0 (done), 1 (a crash), 2 (a usage error), and 143 (128 + SIGTERM, Composer's exit
# when a SIGTERM arrives before training starts, with nothing saved).
PREEMPTED_EXIT_STATUS = 75
# The step reading's flag: true on every rank when any was signalled.
SIGNALLED_FLAG = "preemption/signalled"


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; the message says where, and how to resume."""


class Preemption(ReadsStep, Callback):
    """On SIGTERM, checkpoint at the next batch boundary (all ranks at the same batch) and stop training.

    The checkpoint is Composer's own: stopping makes the run's elapsed duration 1, so the CheckpointSaver (which
    runs after this callback at the same event) saves it as the end of training, with the usual name, ``latest``
    link and upload. Scheduled evaluation is switched off once stopping: Composer would otherwise evaluate at the
    end of ``fit``, minutes of a two-minute notice on ImageNet.
    """

    def __init__(self) -> None:
        self.signalled = False
        self.stopped_at: Timestamp | None = None
        self._installed = False
        self._previous_handler: Any = None

    def init(self, state: State, logger: Logger) -> None:
        savers = [
            index for index, callback in enumerate(state.callbacks) if isinstance(callback, CheckpointSaver)
        ]
        if savers and savers[0] < state.callbacks.index(self):
            raise ValueError(
                "Preemption must come before Composer's CheckpointSaver in the Trainer's callbacks: the saver "
                "only saves the stopping batch if training was stopped earlier in the same event."
            )
        # Python lets only the main thread install handlers; a trainer elsewhere keeps Composer's behaviour.
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._note_signal)
            self._installed = True

    def _note_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        self._stop_if_signalled(state)

    def epoch_checkpoint(self, state: State, logger: Logger) -> None:
        self._stop_if_signalled(state)

    def step_contribution(self, state: State) -> Contribution:
        return Contribution(flags={SIGNALLED_FLAG: self.signalled})

    def _stop_if_signalled(self, state: State) -> None:
        """Stop every rank if any was signalled (each rank runs this at the same events, so the readings match).

        One process reads its own flag now, so a signal that arrived during this batch stops it. Several agree on
        the flag as read with the step's other numbers: at a batch, when the first callback asked for them (at
        ``BATCH_END``); at an epoch's end, afresh (the epoch's evaluation may have taken minutes).
        """
        signalled = (
            self.signalled if dist.get_world_size() == 1 else self.step_reading(state).flags[SIGNALLED_FLAG]
        )
        if not signalled or self.stopped_at is not None:
            return
        elapsed = state.get_elapsed_duration()
        if elapsed is not None and elapsed >= 1:
            return  # the last batch: the run ends and saves its final checkpoint anyway
        self.stopped_at = state.timestamp
        stop_early(state, save_checkpoint=True)

    def fit_end(self, state: State, logger: Logger) -> None:
        # After a preemption, further SIGTERMs (Composer's launcher repeats it when a rank exits first) must not cut
        # the checkpoint upload short: the handler stays until raise_if_preempted has closed the trainer.
        if self.stopped_at is None:
            self._restore_handler()

    def close(self, state: State, logger: Logger) -> None:
        if self.stopped_at is None:
            self._restore_handler()

    def _restore_handler(self) -> None:
        if self._installed:
            previous = signal.SIG_DFL if self._previous_handler is None else self._previous_handler
            signal.signal(signal.SIGTERM, previous)
            self._installed = False

    def raise_if_preempted(self, trainer: Trainer, save_folder: str, *, autoresume: bool) -> None:
        """After ``fit``: if stopped by a signal, close the trainer (uploads finish) and raise ``Preempted``."""
        if self.stopped_at is None:
            return
        trainer.close()
        self._restore_handler()
        message = preempted_message(
            self.stopped_at, last_checkpoint(trainer.state), save_folder, autoresume=autoresume
        )
        raise Preempted(message)


def last_checkpoint(state: State) -> tuple[str, Timestamp] | None:
    """The file name and position of the newest checkpoint Composer's CheckpointSaver wrote, if any.

    Usually saved at the stopping batch; when a stop at an epoch end finds that batch already saved (before the
    epoch's end-of-epoch events), it is that earlier checkpoint, and a relaunch continues from its position.
    """
    for callback in state.callbacks:
        if isinstance(callback, CheckpointSaver) and callback.all_saved_checkpoints_to_timestamp:
            name, timestamp = list(callback.all_saved_checkpoints_to_timestamp.items())[-1]
            return Path(name).name, timestamp
    return None


def preempted_message(
    stopped_at: Timestamp, checkpoint: tuple[str, Timestamp] | None, save_folder: str, *, autoresume: bool
) -> str:
    """The one line a preempted run prints: where a relaunch continues, where the checkpoint is, how to go on."""
    how = "relaunch the same command to resume" + ("" if autoresume else " with autoresume=true")
    if checkpoint is None:
        position, saved = stopped_at, "no checkpoint saved (no save_folder)"
    else:
        position, saved = checkpoint[1], f"checkpoint saved to {save_folder.rstrip('/')}/{checkpoint[0]}"
    return (
        f"preempted at epoch {int(position.epoch)} batch {int(position.batch)} "
        f"({int(position.batch_in_epoch)} batches into the epoch); {saved}; {how} "
        f"(exit status {PREEMPTED_EXIT_STATUS})"
    )


class ExactResume(Callback):
    """Resume mid-epoch without reading the seen batches again, with the RNG state saved at the checkpoint.

    The RNG state (every rank's) is saved in this callback's own state dict, at the same moment Composer saves its
    copy, which it restores only at epoch starts or while spinning through a loader.
    """

    def __init__(self) -> None:
        self._rng_state: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Composer builds the state dict on every rank when it saves, so this collective is matched.
        return {"rng": reproducibility.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng_state = state.get("rng")

    def fit_start(self, state: State, logger: Logger) -> None:
        batches_seen = int(state.timestamp.batch_in_epoch)
        loader = state.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if batches_seen == 0 or not isinstance(sampler, ResumableSampler):
            return  # a fresh epoch (Composer restores the RNG), or a loader Composer spins
        sampler.start_epoch_at(int(state.timestamp.epoch), batches_seen * loader.batch_size)
        if self._rng_state is not None:
            reproducibility.load_rng_state(self._rng_state)
            self._rng_state = None
