"""Preemption and exact resume (callbacks.preemption, data.resumable_sampler) and scripts/run_until_done.sh.

The resume tests stop train.py with a real signal (a subprocess where the signal's delivery is the point: SIGTERM
to a process group with DataLoader workers, SIGKILL; in this process otherwise), relaunch it with autoresume=true
and compare the final weights and every logged metric with a run that was never interrupted. The
tiny recipe keeps everything that draws random numbers: random crops and flips, Composer's RandAugment (numpy, in
the data loader) and MixUp (numpy and torch, in the training process).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import pytest
import torch
from composer.core import Time, Timestamp
from composer.devices import DeviceCPU
from composer.utils import dist
from PIL import Image

import train
from callbacks.metrics_file import last_logged_step
from callbacks.preemption import PREEMPTED_EXIT_STATUS, Preemption, preempted_message
from data.samples import LabelledImages

REPO = Path(__file__).resolve().parents[1]
WRAPPER = REPO / "scripts" / "run_until_done.sh"
RUN_NAME = "preemption-test"
BATCHES_PER_EPOCH, EPOCHS, BATCH = 4, 2, 8
TRAIN_IMAGES = BATCHES_PER_EPOCH * BATCH
# Per run on 2 busy cores: ~10 s to start, ~1 s a batch.
RUN_TIMEOUT_S = 300
# Compared between runs: everything logged except timings.
TIMING_PREFIXES = ("throughput/", "wall", "time/")


def tiny_recipe(folder: Path, workers: int, *extra: str) -> list[str]:
    """Two epochs of four batches of eight synthetic 32 px images on resnet18, in Composer's deterministic mode,
    with ImageNet's crop and flip, RandAugment and MixUp; a checkpoint every two batches, a metrics line every batch.
    """
    return [
        "smoke", "model.name=resnet18", "optimizer.name=decoupled_sgdw", "deterministic=true",
        "data.source=synthetic", "data.num_classes=10", f"data.synthetic_train_samples={TRAIN_IMAGES}",
        "data.synthetic_val_samples=8", "data.train_resolution=32", "data.eval_resolution=32",
        "data.crop_scale=[0.08,1.0]", "data.horizontal_flip=true", f"data.num_workers={workers}",
        "algorithms.randaugment={}", "algorithms.mixup={}",
        f"global_batch_size={BATCH}", f"eval_batch_size={BATCH}", f"max_duration={EPOCHS}ep", "eval_interval=1ep",
        "save_interval=2ba", f"save_folder={folder}", f"run_name={RUN_NAME}", "logging.progress_bar=false",
        "logging.metrics_every_n_batches=1", *extra,
    ]  # fmt: skip


def launch(folder: Path, workers: int, *extra: str, own_group: bool = False) -> subprocess.Popen:
    """train.py with the tiny recipe in a subprocess, its output in ``folder``.log (own_group: a new session)."""
    log = folder.with_suffix(".log").open("ab")
    return subprocess.Popen(
        [sys.executable, "train.py", *tiny_recipe(folder, workers, *extra)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=own_group,
    )


def finish(process: subprocess.Popen) -> int:
    """The exit status, failing the test (and killing the run) if it takes longer than RUN_TIMEOUT_S."""
    try:
        return process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def wait_until(condition: Callable[[], bool], process: subprocess.Popen) -> None:
    """Poll ``condition`` every 20 ms while ``process`` runs."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not condition():
        assert process.poll() is None, (
            f"the run ended (status {process.returncode}) before the test could stop it"
        )
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.02)


def logged_step(folder: Path, step: int) -> Callable[[], bool]:
    """True once the run in ``folder`` has logged ``step``."""
    return lambda: last_logged_step(folder / "metrics.jsonl") >= step


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The model state dict of the run's final checkpoint."""
    latest = (folder / "latest-rank0.pt").resolve()
    assert latest.name.endswith(f"-ba{EPOCHS * BATCHES_PER_EPOCH}-rank0.pt"), latest.name
    return torch.load(latest, weights_only=False)["state"]["model"]


def metrics_by_step(folder: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Every logged value without timings, by (phase, step); a line logged again after a resume replaces the first."""
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {
        (line["phase"], line["step"]): {k: v for k, v in line.items() if not k.startswith(TIMING_PREFIXES)}
        for line in lines
    }


def assert_same_run(folder: Path, reference: Path, lines_lost_up_to: int = 0) -> None:
    """Bit-identical weights (BatchNorm statistics included), and the same value for everything logged.

    ``lines_lost_up_to``: a SIGKILLed run may lack training lines up to that step (metrics.jsonl writes a step's
    line when the next step logs, and the relaunch starts after the checkpoint).
    """
    weights, expected = final_weights(folder), final_weights(reference)
    assert weights.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(weights[name], expected[name])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"
    logged, expected_logged = metrics_by_step(folder), metrics_by_step(reference)
    assert logged == {key: expected_logged[key] for key in logged}
    missing = set(expected_logged) - set(logged)
    assert all(phase == "train" and step <= lines_lost_up_to for phase, step in missing), sorted(missing)
    summary, expected_summary = (json.loads((f / "summary.json").read_text()) for f in (folder, reference))
    for key in ("val/acc1", "val/acc5", "val/loss", "train/loss"):
        assert summary[key] == expected_summary[key], key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe run once from start to end, in this process, with no DataLoader workers (the relaunches
    below, with or without workers, in a subprocess or not, must end exactly where it ends)."""
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    with deterministic_settings_restored():
        assert train.main(tiny_recipe(folder, workers=0)) == 0
    return folder


def test_sigterm_to_the_process_group_checkpoints_at_the_next_batch_and_the_relaunch_ends_identical(
    uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_torch_settings: None
) -> None:
    """A real SIGTERM to a real run's whole process group, as systemd and Slurm send it: the DataLoader worker
    gets it too and must leave the stopping to the trainer. The relaunch runs in this process (what it tests is
    the resume, not the signal)."""
    folder = tmp_path / "run"
    process = launch(folder, workers=1, own_group=True)
    wait_until(logged_step(folder, 2), process)
    os.killpg(process.pid, signal.SIGTERM)
    assert finish(process) == PREEMPTED_EXIT_STATUS
    log = folder.with_suffix(".log").read_text()
    lines = [line for line in log.splitlines() if line.startswith("preempted at epoch")]
    assert len(lines) == 1, log
    checkpoint = lines[0].split("checkpoint saved to ")[1].split(";")[0]
    assert Path(checkpoint).is_file(), lines[0]
    assert "relaunch the same command to resume with autoresume=true" in lines[0]

    capsys.readouterr()
    assert train.main(tiny_recipe(folder, 1, "autoresume=true")) == 0
    assert f"resuming from {checkpoint}" in capsys.readouterr().out
    assert_same_run(folder, uninterrupted)


def test_sigkill_after_a_checkpoint_and_the_relaunch_ends_identical(
    uninterrupted: Path, tmp_path: Path, keep_torch_settings: None
) -> None:
    """SIGKILL gives the run no chance to save: the relaunch resumes from the last periodic checkpoint."""
    folder = tmp_path / "run"
    process = launch(folder, workers=0, own_group=True)
    # ep0-ba2: half way through the first epoch. Composer links latest-rank0.pt once the file is written, so
    # waiting for the link (not the file, which appears first) kills the run after a complete checkpoint.
    latest = folder / "latest-rank0.pt"
    wait_until(lambda: latest.is_symlink() and latest.resolve().name.startswith("ep0-ba"), process)
    os.killpg(process.pid, signal.SIGKILL)
    assert finish(process) == -signal.SIGKILL
    last_saved = int(latest.resolve().name.split("-ba")[1].split("-")[0])
    assert train.main(tiny_recipe(folder, 0, "autoresume=true")) == 0
    assert_same_run(folder, uninterrupted, lines_lost_up_to=last_saved)


@contextmanager
def deterministic_settings_restored() -> Iterator[None]:
    """Composer's deterministic mode switches torch-wide settings on; put them back afterwards."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@pytest.fixture
def keep_torch_settings() -> Iterator[None]:
    """For the tests after this one: the settings of Composer's deterministic mode undone."""
    with deterministic_settings_restored():
        yield


def sigterm_during_batch(monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    """Make the in-process run send itself a SIGTERM as batch ``batch`` ends, before Preemption checks."""
    check = Preemption._stop_if_signalled

    def signal_then_check(self: Preemption, state: Any) -> None:
        if int(state.timestamp.batch) == batch:
            os.kill(os.getpid(), signal.SIGTERM)
        check(self, state)

    monkeypatch.setattr(Preemption, "_stop_if_signalled", signal_then_check)


def test_mid_epoch_resume_reads_only_the_unseen_images_and_ends_identical(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_torch_settings: None
) -> None:
    folder = tmp_path / "run"
    with monkeypatch.context() as patch:
        sigterm_during_batch(patch, 3)
        assert train.main(tiny_recipe(folder, workers=0)) == PREEMPTED_EXIT_STATUS
    # Composer's handler is back.
    assert not isinstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None), Preemption)
    assert (folder / "ep0-ba3-rank0.pt").is_file()

    reads: list[int] = []
    get_item = LabelledImages.__getitem__

    def counted(self: LabelledImages, index: int) -> Any:
        if len(self) == TRAIN_IMAGES:
            reads.append(int(index))
        return get_item(self, index)

    monkeypatch.setattr(LabelledImages, "__getitem__", counted)
    assert train.main(tiny_recipe(folder, 0, "autoresume=true")) == 0
    # The last batch of epoch 0, then all of epoch 1; Composer's spinning would first read the 3 batches seen.
    first_epoch = [int(i) for i in torch.utils.data.DistributedSampler(range(TRAIN_IMAGES), 1, 0, seed=17)]
    assert reads[:BATCH] == first_epoch[3 * BATCH :]
    assert len(reads) == BATCH + TRAIN_IMAGES
    assert_same_run(folder, uninterrupted)


def test_streamed_data_resumes_mid_epoch_by_spinning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_torch_settings: None
) -> None:
    """A streamed Hugging Face set cannot skip to a sample: Composer reads the seen batches again. Without workers
    (the augmentations draw from the training process's RNG, which Composer restores) it ends identical."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})

    def split(count: int) -> datasets.Dataset:
        images = [Image.new("RGB", (40, 40), (60 * (i % 4), 9 * i, 0)) for i in range(count)]
        return datasets.Dataset.from_dict(
            {"image": images, "label": [i % 2 for i in range(count)]}, features=features
        )

    datasets.DatasetDict(train=split(TRAIN_IMAGES), validation=split(8)).save_to_disk(str(tmp_path / "hf"))
    streamed = [
        "data.source=hf", f"data.path={tmp_path / 'hf'}", "data.hf_streaming=true",
        "data.val_split=validation", f"data.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    reference, folder = tmp_path / "uninterrupted", tmp_path / "run"
    assert train.main(tiny_recipe(reference, 0, *streamed)) == 0
    with monkeypatch.context() as patch:
        sigterm_during_batch(patch, 6)  # half way through the second epoch
        assert train.main(tiny_recipe(folder, 0, *streamed)) == PREEMPTED_EXIT_STATUS
    assert train.main(tiny_recipe(folder, 0, *streamed, "autoresume=true")) == 0
    assert_same_run(folder, reference)


def fake_state(batch: int, max_batches: int = 100) -> SimpleNamespace:
    """The parts of Composer's State that Preemption reads, at the end of batch ``batch``."""
    state = SimpleNamespace(
        device=DeviceCPU(),
        timestamp=Timestamp(epoch=0, batch=batch, batch_in_epoch=batch),
        max_duration=Time(max_batches, "ba"),
        evaluators=[SimpleNamespace(eval_interval="1ep")],
    )
    state.get_elapsed_duration = lambda: Time(batch / max_batches, "dur")
    state.stop_training = lambda: setattr(state, "max_duration", Time(batch, "ba"))
    return state


def test_a_signal_on_any_rank_stops_every_rank_after_the_same_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    preemption = Preemption()  # this rank was not signalled
    state = fake_state(batch=7)
    preemption.batch_checkpoint(state, logger=None)
    assert preemption.stopped_at is None and state.max_duration == Time(100, "ba")

    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda flag, reduce_operation: flag.fill_(1))  # another rank was
    preemption.batch_checkpoint(state, logger=None)
    assert preemption.stopped_at == state.timestamp
    assert state.max_duration == Time(7, "ba")  # so Composer's CheckpointSaver saves this batch as the last
    assert state.evaluators[0].eval_interval(state, None) is False  # no evaluation at the end of fit


def test_a_signal_during_the_last_batch_lets_the_run_finish() -> None:
    preemption = Preemption()
    preemption.signalled = True
    state = fake_state(batch=100)
    preemption.batch_checkpoint(state, logger=None)
    assert preemption.stopped_at is None  # training ends and saves its final checkpoint anyway


def test_preempted_message_names_the_position_the_checkpoint_and_the_next_step() -> None:
    checkpoint = ("ep3-ba1234-rank0.pt", Timestamp(epoch=3, batch=1234, batch_in_epoch=34))
    stopped_at = Timestamp(epoch=3, batch=1234, batch_in_epoch=34)
    assert preempted_message(stopped_at, checkpoint, "s3://bucket/runs/r50", autoresume=True) == (
        "preempted at epoch 3 batch 1234 (34 batches into the epoch); checkpoint saved to "
        "s3://bucket/runs/r50/ep3-ba1234-rank0.pt; relaunch the same command to resume (exit status 75)"
    )
    assert preempted_message(stopped_at, None, "runs/x", autoresume=False).endswith(
        "no checkpoint saved (no save_folder); relaunch the same command to resume with autoresume=true "
        "(exit status 75)"
    )


def fake_train(tmp_path: Path, script: str) -> Path:
    """A stand-in for train.py: a bash script that counts its launches in ``tmp_path``/launches."""
    path = tmp_path / "fake_train.sh"
    path.write_text(f"#!/usr/bin/env bash\nn=$(( $(cat {tmp_path}/launches 2>/dev/null || echo 0) + 1 ))\n"
                    f"echo $n > {tmp_path}/launches\n{script}\n")  # fmt: skip
    path.chmod(0o755)
    return path


def test_wrapper_relaunches_while_preempted_and_returns_the_last_status(tmp_path: Path) -> None:
    command = fake_train(tmp_path, "(( n < 3 )) && exit 75; exit 0")
    result = subprocess.run([WRAPPER, "--", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and (tmp_path / "launches").read_text() == "3\n"
    assert result.stderr.count("preempted (status 75)") == 2


def test_wrapper_stops_after_the_relaunch_limit(tmp_path: Path) -> None:
    command = fake_train(tmp_path, "exit 75")
    result = subprocess.run([WRAPPER, "--max-relaunches", "2", command], capture_output=True, text=True)
    assert result.returncode == 75 and (tmp_path / "launches").read_text() == "3\n"


def test_wrapper_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    command = fake_train(tmp_path, "exit 0")
    result = subprocess.run([WRAPPER, "--dry-run", command, "a b"], capture_output=True, text=True)
    assert result.returncode == 0 and not (tmp_path / "launches").exists()
    assert f"would run: {command} a\\ b" in result.stderr


@pytest.mark.parametrize("seconds", ["0", "0.0", "five", "-1"])
def test_wrapper_refuses_a_spot_poll_interval_that_is_not_a_positive_number(
    seconds: str, tmp_path: Path
) -> None:
    command = fake_train(tmp_path, "exit 0")
    result = subprocess.run(
        [WRAPPER, "--watch-spot", "--spot-poll-seconds", seconds, "--", command],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--spot-poll-seconds needs a number of seconds above 0" in result.stderr
    assert not (tmp_path / "launches").exists()


def test_wrapper_help_shows_how_to_watch_the_spot_notice() -> None:
    result = subprocess.run([WRAPPER, "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "X-aws-ec2-metadata-token" in result.stdout and "meta-data/spot/instance-action" in result.stdout


class FakeMetadataService(http.server.BaseHTTPRequestHandler):
    """IMDSv2: a token for a PUT; the spot path answers 404 until ``notice`` is set, then 200."""

    notice = threading.Event()

    def do_PUT(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"token")

    def do_GET(self) -> None:
        ready = self.notice.is_set() and self.headers.get("X-aws-ec2-metadata-token") == "token"
        self.send_response(200 if ready else 404)
        self.end_headers()
        if ready:
            self.wfile.write(b'{"action": "terminate", "time": "2026-11-23T22:30:00Z"}')

    def log_message(self, *args: Any) -> None:
        pass


def test_wrapper_turns_a_spot_notice_into_sigterm_and_does_not_relaunch(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), FakeMetadataService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ready = tmp_path / "trap_set"
    command = fake_train(tmp_path, f"trap 'exit 75' TERM\ntouch {ready}\nwhile true; do sleep 0.1; done")
    environment = {
        **os.environ,
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
    }
    wrapper = subprocess.Popen(
        [WRAPPER, "--watch-spot", "--spot-poll-seconds", "0.2", "--", command],
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while (
            not ready.exists()
        ):  # a notice before the trap is set would kill it (exit 143) on a loaded machine
            assert time.monotonic() < deadline and wrapper.poll() is None
            time.sleep(0.05)
        FakeMetadataService.notice.set()
        _, stderr = wrapper.communicate(timeout=30)
    finally:
        server.shutdown()
    assert wrapper.returncode == 75, stderr
    assert "spot interruption notice received" in stderr and "not relaunching" in stderr
    assert (tmp_path / "launches").read_text() == "1\n"
