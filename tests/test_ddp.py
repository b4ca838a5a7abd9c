"""DDP through Composer's launcher: ``composer -n N train.py`` trains what one process trains with the same global
batch, every rank ends with the same parameters, evaluation counts each validation image once, and only rank 0
writes and prints the run's outputs.

BatchNorm is the one layer where DDP does not compute what one process computes: each rank normalises over its
own images (no SyncBatchNorm) and keeps its own running statistics. So every run here gives BatchNorm one image
per call (one process and 2 ranks with ``device_train_microbatch_size=1``, 4 ranks with one image each): then
1, 2 and 4 processes, with or without microbatches, run the same forward and backward passes on the same 4-image
global batch, and the loss curves agree to 1e-5 and the parameters to rounding error. The running
statistics still differ (rank 0 updates them from its own images only: 1 or 2 per step, against 4 in one
process), and evaluation uses them, so validation metrics are compared within a stated tolerance. A one-image
BatchNorm needs more than one value per channel: 64 px, where resnet18's last stage is 2x2. Data augmentation is
off (full-image crops, no flip) because Composer seeds each rank differently. The two-rank run is here (shared
with the step breakdown's tests: tests/conftest.py's ``two_processes``); the four-rank run is an end-to-end claim,
tests/proof/test_ddp_four_ranks.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import evaluate
import train
from training.summary import weights_digest
from training.weights import extract_model_state, read_checkpoint

# The runs train without warmup, so the LR is the same at every step of the short comparison.
pytestmark = pytest.mark.filterwarnings("ignore:The warmup duration is 0")

REPO = Path(__file__).resolve().parent.parent
COMPOSER = Path(sys.executable).parent / "composer"
# A run stuck in a collective would otherwise hang the suite; a quiet 2-core machine needs ~20 s for 4 ranks.
LAUNCH_TIMEOUT_S = 300
# Left out of the launcher's environment so it picks its single-node defaults, a free MASTER_PORT included,
# and train.py shares the CPU cores between the ranks (training.runtime.start_distributed).
LAUNCHER_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "BASE_RANK", "MASTER_ADDR", "MASTER_PORT",
    "OMP_NUM_THREADS",
)  # fmt: skip
VAL_IMAGES = 21  # odd, so the DistributedSampler pads the last eval batch of 2 ranks by 1 and of 4 ranks by 3
STEPS = 4
# Measured: parameters 1.6e-4 apart at most (summation order of the gradient average, amplified where a
# one-image BatchNorm divides by a small deviation); halving the LR moves them 0.04, 2-image BatchNorm 0.1.
PARAMETER_ATOL = 2e-3
# Measured: running statistics from rank 0's images alone move val/loss by 1-3% and top-1 by one image of 21.
VAL_LOSS_RTOL = 0.1
VAL_ACC1_ATOL = 3 / VAL_IMAGES
# BatchNorm's running statistics and counter: per-rank state, not trained parameters.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class Run:
    """A finished training run: its folder, summary.json, metrics.jsonl lines and console output per rank."""

    folder: Path
    summary: dict[str, Any]
    lines: list[dict[str, Any]]
    stdout_by_rank: dict[int, str]

    def train_losses(self) -> list[float]:
        return [line["train/loss"] for line in self.lines if line["phase"] == "train"]

    def parameters(self) -> dict[str, torch.Tensor]:
        """The checkpoint's parameters, without BatchNorm's running statistics and counters."""
        weights = extract_model_state(read_checkpoint(self.folder / "latest-rank0.pt"))
        return {name: value for name, value in weights.items() if not name.endswith(BUFFER_SUFFIXES)}


def overrides(world_size: int) -> list[str]:
    """A 4-image global batch of deterministic 64 px images, one image per eval batch per rank, SGD, 4 steps."""
    return [
        "device=cpu", "model.name=resnet18", "data.source=synthetic", "data.num_classes=10",
        f"data.synthetic_train_samples={4 * STEPS}", f"data.synthetic_val_samples={VAL_IMAGES}",
        "data.train_resolution=64", "data.eval_resolution=64", "data.crop_scale=[1.0,1.0]",
        "data.crop_ratio=[1.0,1.0]", "data.horizontal_flip=false", "data.num_workers=0",
        # One eval image per rank and batch: Composer's CrossEntropy averages batch means, so only then is
        # val/loss the per-image mean whatever the process count.
        "global_batch_size=4", f"eval_batch_size={world_size}", f"max_duration={STEPS}ba",
        f"eval_interval={STEPS}ba", f"save_interval={STEPS}ba", "optimizer.name=decoupled_sgdw",
        "optimizer.base_lr=3.2", "scheduler.t_warmup=0ba", "deterministic=true", "logging.progress_bar=false",
        "logging.metrics_every_n_batches=1",
    ]  # fmt: skip


def finished_run(folder: Path, stdout_by_rank: dict[int, str]) -> Run:
    summary = json.loads((folder / "summary.json").read_text())
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return Run(folder, summary, lines, stdout_by_rank)


def launcher_environment() -> dict[str, str]:
    """This process's environment for a ``composer`` launch on the CPU: without the launcher's own variables (so it
    picks its single-node defaults) and without CUDA devices."""
    environment = {name: value for name, value in os.environ.items() if name not in LAUNCHER_VARIABLES}
    environment["CUDA_VISIBLE_DEVICES"] = ""
    return environment


def launch(processes: int, base: Path, extra: list[str]) -> Run:
    """``composer -n N train.py smoke ...`` from the repository root on the CPU (gloo), with a run name left to
    the ranks to agree on; local rank 0 prints to the launcher's output, the others to their own log files."""
    logs = base / "logs"
    logs.mkdir()
    command = [
        str(COMPOSER), "-n", str(processes), "--stdout", f"{logs}/rank{{rank}}.stdout.txt",
        "--stderr", f"{logs}/rank{{rank}}.stderr.txt", "train.py", "smoke",
        *overrides(processes), f"save_folder={base}/runs/{{run_name}}", *extra,
    ]  # fmt: skip
    # Its own session, so a timeout can stop the launcher and every rank it started.
    launcher = subprocess.Popen(
        command, cwd=REPO, env=launcher_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = launcher.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        output, _ = launcher.communicate()
        pytest.fail(f"composer -n {processes} did not finish in {LAUNCH_TIMEOUT_S} s:\n{output[-4000:]}")
    assert launcher.returncode == 0, output[-4000:]
    folders = list((base / "runs").iterdir())
    assert len(folders) == 1, f"one run folder expected under {base / 'runs'}: {folders}"
    others = {rank: (logs / f"rank{rank}.stdout.txt").read_text() for rank in range(1, processes)}
    return finished_run(folders[0], {0: output, **others})


def train_one_process(folder: Path) -> Run:
    """The reference, in this process: the 4-image global batch in microbatches of one image."""
    status = train.main(
        ["smoke", *overrides(1), "device_train_microbatch_size=1", f"save_folder={folder}", "run_name=one"]
    )
    assert status == 0
    return finished_run(folder, {})


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return train_one_process(tmp_path_factory.mktemp("one_process"))


def assert_same_training(run: Run, reference: Run) -> None:
    """Same loss at every step and the same parameters, to floating-point rounding."""
    assert len(run.train_losses()) == STEPS
    assert run.train_losses() == pytest.approx(reference.train_losses(), rel=1e-5)
    reference_parameters = reference.parameters()
    for name, value in run.parameters().items():
        torch.testing.assert_close(value, reference_parameters[name], rtol=0, atol=PARAMETER_ATOL, msg=name)


def assert_close_val_metrics(run: Run, reference: Run) -> None:
    """Validation metrics within the BatchNorm running-statistics tolerance (see the module docstring)."""
    assert run.summary["val/loss"] == pytest.approx(reference.summary["val/loss"], rel=VAL_LOSS_RTOL)
    assert run.summary["val/acc1"] == pytest.approx(reference.summary["val/acc1"], abs=VAL_ACC1_ATOL)


def test_two_processes_train_like_one_process_with_the_same_global_batch(
    one_process: Run, two_processes: Run
) -> None:
    assert (one_process.summary["world_size"], one_process.summary["per_device_batch_size"]) == (1, 4)
    assert (two_processes.summary["world_size"], two_processes.summary["per_device_batch_size"]) == (2, 2)
    # The LR rule reads the global batch, not the per-device one.
    assert two_processes.summary["peak_lr"] == one_process.summary["peak_lr"] == pytest.approx(3.2 * 4 / 256)
    assert_same_training(two_processes, one_process)


def test_two_processes_report_the_val_metrics_of_one_process(one_process: Run, two_processes: Run) -> None:
    assert_close_val_metrics(two_processes, one_process)


def assert_every_rank_ends_with_the_checkpointed_parameters(run: Run) -> None:
    digests = run.summary["parameters_sha256_by_rank"]
    assert len(digests) == run.summary["world_size"] and len(set(digests)) == 1, digests
    assert weights_digest(run.parameters().values()) == digests[0]


def assert_eval_counts_each_val_image_once(run: Run, tmp_path: Path) -> None:
    """The ranks' metrics are reduced without the sampler's padding: one process evaluating the checkpoint
    image by image gets exactly the reported numbers."""
    output = tmp_path / "eval.json"
    checkpoint = run.folder / "latest-rank0.pt"
    assert evaluate.main(["--checkpoint", str(checkpoint), "eval_batch_size=1", "--output", str(output)]) == 0
    alone = json.loads(output.read_text())
    assert run.summary["val_images"] == alone["images"] == VAL_IMAGES
    for key in ("val/acc1", "val/acc5", "val/loss"):
        assert run.summary[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-6), key


def assert_only_rank_zero_writes_and_prints(run: Run) -> None:
    assert {path.name for path in run.folder.iterdir()} >= {"recipe.yaml", "metrics.jsonl", "summary.json"}
    assert [line["step"] for line in run.lines if line["phase"] == "train"] == list(range(1, STEPS + 1))
    # One eval, at the end of training: the run does not evaluate the same final weights again.
    assert len([line for line in run.lines if line["phase"] == "eval"]) == 1
    assert run.stdout_by_rank[0].count("Run summary") == 1
    assert run.stdout_by_rank[0].count(f"{run.summary['world_size']} process(es) x batch") == 1
    for rank, stdout in run.stdout_by_rank.items():
        if rank:
            assert "Run summary" not in stdout and "process(es) x batch" not in stdout, (rank, stdout)


def test_every_rank_ends_with_the_checkpointed_parameters(two_processes: Run) -> None:
    assert_every_rank_ends_with_the_checkpointed_parameters(two_processes)


def test_eval_counts_each_val_image_once(two_processes: Run, tmp_path: Path) -> None:
    assert_eval_counts_each_val_image_once(two_processes, tmp_path)


def test_only_rank_zero_writes_and_prints(two_processes: Run) -> None:
    assert_only_rank_zero_writes_and_prints(two_processes)
