"""training/checkpointing.py through train.py: S3 checkpoints, preflight, autoresume and its fallback, atomic saves.

S3 is moto's server on loopback (tests/conftest.py); each test has its own bucket. Training runs are a few batches
of resnet18 on 32 px synthetic images, with a momentum-free SGD so that a checkpoint stays small.
"""

from __future__ import annotations

import gc
import io
import json
import shutil
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch
from botocore.exceptions import EndpointConnectionError
from composer.core import Timestamp
from composer.utils import dist, ensure_folder_has_no_conflicting_files
from composer.utils.object_store import S3ObjectStore

import train
from recipes.errors import UsageError
from training.checkpointing import (
    SAVE_FILENAME,
    S3Destination,
    choose_resume_checkpoint,
    copy_to_this_node,
    finished,
    write_atomically,
)
from training.weights import extract_model_states, read_checkpoint

pytestmark = pytest.mark.usefixtures("aws_env")  # dummy credentials, nothing from ~/.aws


def tiny_run(save_folder: str | Path, run_name: str, *overrides: str) -> list[str]:
    """Arguments for train.main: two batches of the smoke recipe shrunk to seconds, saved after batch 2."""
    return [
        "smoke", "data.source=synthetic", "data.num_classes=10", "data.synthetic_train_samples=32",
        "data.synthetic_val_samples=8", "data.train_resolution=32", "data.eval_resolution=32", "data.num_workers=0",
        "global_batch_size=8", "eval_batch_size=8", "max_duration=2ba", "eval_interval=2ba", "save_interval=2ba",
        "model.name=resnet18", "optimizer.name=decoupled_sgdw", "optimizer.momentum=0",
        "logging.progress_bar=false", "logging.metrics_every_n_batches=1",
        f"save_folder={save_folder}", f"run_name={run_name}", *overrides,
    ]  # fmt: skip


def s3_client(endpoint: str) -> Any:
    """A client for arranging and inspecting bucket contents, independent of the code under test."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A new empty bucket for this test."""
    name = f"checkpoints-{uuid.uuid4().hex[:8]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def object_names(endpoint: str, bucket: str, prefix: str) -> set[str]:
    listing = s3_client(endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {item["Key"][len(prefix) :] for item in listing.get("Contents", [])}


def train_steps(run_folder: Path) -> list[int]:
    lines = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    return [line["step"] for line in lines if line["phase"] == "train"]


def fake_checkpoint(path: Path, run_name: str, batch: int = 0) -> None:
    """A file with just what resume validation reads: a loadable Composer-shaped dict."""
    timestamp = {"Timestamp": Timestamp(batch=batch).state_dict()}  # Composer keys it by class
    torch.save({"state": {"run_name": run_name, "timestamp": timestamp}}, path)


def test_relaunch_in_a_fresh_folder_resumes_from_s3(
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # botocore reads it; no recipe key needed
    save_folder = f"s3://{bucket}/resnet50/{{run_name}}"
    (tmp_path / "first").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    assert train.main(tiny_run(save_folder, "spot", "autoresume=true")) == 0
    out = capsys.readouterr().out
    assert (
        f"checkpoints: runs/spot/ (keeps the last 1) and uploaded to s3://{bucket}/resnet50/spot/ at {s3_endpoint}"
        in out
    )
    assert "ep0-ba2-rank0.pt" in object_names(s3_endpoint, bucket, "resnet50/spot/")

    shutil.rmtree(tmp_path / "first")  # the spot machine is gone, and its disk with it
    (tmp_path / "second").mkdir()
    monkeypatch.chdir(tmp_path / "second")
    assert train.main(tiny_run(save_folder, "spot", "autoresume=true", "max_duration=4ba")) == 0
    out = capsys.readouterr().out
    assert f"resuming from s3://{bucket}/resnet50/spot/ep0-ba2-rank0.pt (batch 2)" in out
    assert json.loads(Path("runs/spot/summary.json").read_text())["steps"] == 4
    assert train_steps(Path("runs/spot")) == [3, 4]
    latest = s3_client(s3_endpoint).get_object(Bucket=bucket, Key="resnet50/spot/latest-rank0.pt.symlink")
    assert latest["Body"].read() == b"ep0-ba4-rank0.pt"
    # Locally the last 1 (the smoke recipe's save_num_checkpoints_to_keep), the downloaded copy included; on S3 all,
    # beside Composer's credentials marker (the preflight probe is gone).
    assert sorted(path.name for path in Path("runs/spot").glob("ep*")) == ["ep0-ba4-rank0.pt"]
    assert object_names(s3_endpoint, bucket, "resnet50/spot/") == {
        "ep0-ba2-rank0.pt", "ep0-ba4-rank0.pt", "latest-rank0.pt.symlink", ".credentials_validated_successfully"
    }  # fmt: skip


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    save_folder, endpoint = f"s3://{bucket}/runs/{{run_name}}", f"s3_endpoint_url={s3_endpoint}"
    assert train.main(tiny_run(save_folder, "torn", endpoint, "max_duration=4ba")) == 0
    shutil.rmtree("runs")
    client, newest = s3_client(s3_endpoint), "runs/torn/ep0-ba4-rank0.pt"
    body = client.get_object(Bucket=bucket, Key=newest)["Body"].read()
    client.put_object(Bucket=bucket, Key=newest, Body=body[: len(body) // 2])  # an upload cut short elsewhere
    capsys.readouterr()

    assert train.main(tiny_run(save_folder, "torn", endpoint, "max_duration=4ba", "autoresume=true")) == 0
    out = capsys.readouterr().out
    assert (
        f"checkpoint s3://{bucket}/{newest} is unreadable (RuntimeError: PytorchStreamReader failed reading zip "
        f"archive: failed finding central directory); resuming from the previous one "
        f"s3://{bucket}/runs/torn/ep0-ba2-rank0.pt"
    ) in out
    assert train_steps(Path("runs/torn")) == [3, 4]
    # The resumed run saved batch 4 again over the torn object.
    resaved = torch.load(
        io.BytesIO(client.get_object(Bucket=bucket, Key=newest)["Body"].read()), weights_only=False
    )
    assert resaved["state"]["timestamp"]["Timestamp"]["batch"] == 4


def test_unreadable_local_checkpoint_is_set_aside_and_the_previous_one_chosen(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "ep0-ba2-rank0.pt", "run", batch=2)
    fake_checkpoint(tmp_path / "ep0-ba4-rank0.pt", "run", batch=4)
    torn = tmp_path / "ep0-ba6-rank0.pt"
    fake_checkpoint(torn, "run", batch=6)
    torn.write_bytes(torn.read_bytes()[:100])  # a copy or disk that ran out part-way
    point = choose_resume_checkpoint(tmp_path, None, "run")
    assert point is not None
    path = point.path
    assert path == tmp_path / "ep0-ba4-rank0.pt" and point.source == str(path) and point.timestamp.batch == 4
    assert point.skipped == [
        f"checkpoint {tmp_path}/ep0-ba6-rank0.pt is unreadable (RuntimeError: PytorchStreamReader failed reading "
        f"zip archive: failed finding central directory); resuming from the previous one {path}"
    ]
    # Kept for a look, but no longer in the way of Composer's check for checkpoints newer than the resumed one.
    assert (tmp_path / "ep0-ba6-rank0.pt.unreadable").exists()
    ensure_folder_has_no_conflicting_files(tmp_path, SAVE_FILENAME, Timestamp(batch=4))


def test_ema_run_checkpoint_holds_ema_weights_and_loader_position(tmp_path: Path) -> None:
    assert train.main(tiny_run(tmp_path, "ema", "algorithms.ema.half_life=1ba")) == 0
    checkpoint = read_checkpoint(tmp_path / "latest-rank0.pt")
    states = extract_model_states(checkpoint)
    assert {"ema", "raw"} <= set(states)
    assert any(not torch.equal(states["ema"][key], states["raw"][key]) for key in states["raw"])
    timestamp = checkpoint["state"]["timestamp"]["Timestamp"]
    assert (timestamp["batch"], timestamp["batch_in_epoch"]) == (2, 2)  # where the loader resumes: mid-epoch


# The upload worker thread dies with the error (Composer re-raises it in the run), and closing the run lists what
# was not uploaded: both expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.filterwarnings("ignore:The following objects may not have been uploaded")
def test_failed_uploads_keep_the_local_checkpoint(
    s3_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    real_upload = S3ObjectStore.upload_object

    def network_down_for_checkpoints(
        self: S3ObjectStore, object_name: str, *args: Any, **kwargs: Any
    ) -> None:
        if object_name.endswith(".pt"):
            raise EndpointConnectionError(endpoint_url=s3_endpoint)
        real_upload(self, object_name, *args, **kwargs)

    monkeypatch.setattr(S3ObjectStore, "upload_object", network_down_for_checkpoints)
    with pytest.raises(EndpointConnectionError) as failure:
        train.main(tiny_run(f"s3://{bucket}/runs/{{run_name}}", "offline", f"s3_endpoint_url={s3_endpoint}"))
    assert read_checkpoint("runs/offline/ep0-ba2-rank0.pt")["state"]["run_name"] == "offline"
    assert Path("runs/offline/latest-rank0.pt").resolve() == Path("runs/offline/ep0-ba2-rank0.pt").resolve()
    assert "ep0-ba2-rank0.pt" not in object_names(s3_endpoint, bucket, "runs/offline/")
    # The error (also held by the dead upload thread) pins the run's frames; dropped, the failed run's Trainer is
    # closed here, upload threads included, not in some later test.
    failure.value.__traceback__ = None
    del failure
    gc.collect()


def test_kill_during_save_leaves_no_partial_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save, saves = torch.save, 0

    def killed_during_second_save(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal saves
        saves += 1
        if saves == 2:
            file.write(b"PK\x03\x04 half a checkpoint")
            raise KeyboardInterrupt  # what a SIGINT/SIGTERM mid-write looks like to Python
        real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", killed_during_second_save)
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny_run(tmp_path, "killed", "max_duration=4ba", "save_num_checkpoints_to_keep=-1"))
    checkpoints = sorted(path.name for path in tmp_path.iterdir() if path.suffix == ".pt")
    assert checkpoints == ["ep0-ba2-rank0.pt", "latest-rank0.pt"]
    assert (tmp_path / "latest-rank0.pt").resolve().name == "ep0-ba2-rank0.pt"
    # Composer's autoresume check would refuse a folder holding a later (partial) checkpoint; this one passes.
    ensure_folder_has_no_conflicting_files(tmp_path, SAVE_FILENAME, Timestamp(batch=2))


def test_interrupted_write_leaves_the_previous_file_untouched(tmp_path: Path) -> None:
    final = tmp_path / "ep0-ba2-rank0.pt"
    final.write_bytes(b"the good one")

    def crash_halfway(state_dict: dict[str, Any], filename: str) -> None:
        Path(filename).write_bytes(b"half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomically(crash_halfway, {}, str(final))
    assert final.read_bytes() == b"the good one"
    assert [path.name for path in tmp_path.iterdir()] == [final.name]


def test_wandb_offline_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb = ["logging.wandb=true", "logging.wandb_mode=offline", "autoresume=true"]
    assert train.main(tiny_run(tmp_path, "wandb-offline", *wandb)) == 0
    assert train.main(tiny_run(tmp_path, "wandb-offline", *wandb, "max_duration=4ba")) == 0
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path}/ep0-ba2-rank0.pt (batch 2)" in out
    assert "already finished" not in out  # resumed at batch 2 of 4
    assert train_steps(tmp_path) == [1, 2, 3, 4]
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2


def test_relaunching_a_finished_run_says_so_trains_nothing_and_ends_with_status_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fixed run_name with autoresume (g4dn_12xlarge) finds a finished run again: the launch warns, evaluates
    and writes the summary, and exits 0, so that scripts/run_until_done.sh ends its relaunch loop."""
    run = tiny_run(f"{tmp_path}/{{run_name}}", "done", "autoresume=true")
    assert train.main(run) == 0
    assert "already finished" not in capsys.readouterr().out
    folder = tmp_path / "done"
    (folder / "summary.json").unlink()  # killed during its final evaluation, say

    assert train.main(run) == 0
    out = capsys.readouterr().out
    assert (
        f"warning: run 'done' already finished: its checkpoint {folder}/ep0-ba2-rank0.pt is at epoch 0, batch 2, "
        "the end of max_duration=2ba. This launch trains nothing: it loads the final weights, evaluates them and "
        "writes summary.json again. For a new run, add run_name=done-2; to train this run further, raise "
        "max_duration."
    ) in out
    assert train_steps(folder) == [1, 2]
    assert json.loads((folder / "summary.json").read_text())["steps"] == 2


@pytest.mark.parametrize(
    ("max_duration", "expected"),
    [
        ("10ep", True),
        ("11ep", False),
        ("440ba", True),
        ("441ba", False),
        ("14080sp", True),
        ("14081sp", False),
    ],
)
def test_a_run_has_finished_once_its_position_reaches_max_duration(max_duration: str, expected: bool) -> None:
    # The end of a 10-epoch run of 44 batches of 32 images.
    assert finished(Timestamp(epoch=10, batch=440, sample=14080), max_duration) is expected


def as_machine_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as local rank 0 of machine 1 in a run over two machines; machine 0 found no problem."""
    monkeypatch.setattr(dist, "get_node_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_local_rank", lambda: 0)
    monkeypatch.setattr(dist, "all_gather_object", lambda problem: [None, problem])


def test_another_machine_downloads_the_chosen_checkpoint_into_a_folder_of_its_own(
    s3_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fake_checkpoint(tmp_path / "chosen.pt", "run", batch=4)
    s3_client(s3_endpoint).upload_file(str(tmp_path / "chosen.pt"), bucket, "runs/run/ep0-ba4-rank0.pt")
    earlier = Path("runs/run/.resume-node1/ep0-ba2-rank0.pt")  # this machine's copy from an earlier relaunch
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"older")
    as_machine_one(monkeypatch)
    destination = S3Destination(bucket, "runs/run", s3_endpoint, "us-east-1")
    path = copy_to_this_node("runs/run/ep0-ba4-rank0.pt", True, destination)
    assert path == "runs/run/.resume-node1/ep0-ba4-rank0.pt"
    assert Path(path).read_bytes() == (tmp_path / "chosen.pt").read_bytes()
    assert list(earlier.parent.iterdir()) == [Path(path)]  # one copy kept; no saver rotates these


def test_a_checkpoint_only_on_machine_zeros_disk_stops_every_machine_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    as_machine_one(monkeypatch)
    with pytest.raises(
        UsageError, match=r"machine 1 cannot load it.*save_folder=s3://BUCKET/PREFIX/\{run_name\}"
    ):
        copy_to_this_node("runs/run/ep0-ba4-rank0.pt", False, None)
    # A folder both machines mount holds it: loaded from there.
    Path("runs/run").mkdir(parents=True)
    fake_checkpoint(Path("runs/run/ep0-ba4-rank0.pt"), "run", batch=4)
    assert copy_to_this_node("runs/run/ep0-ba4-rank0.pt", False, None) == "runs/run/ep0-ba4-rank0.pt"


@pytest.mark.parametrize(
    "problem", ["missing bucket", "rejected credentials", "no credentials", "unreachable endpoint"]
)
def test_preflight_fails_in_seconds_naming_the_bucket(
    problem: str,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from moto.core.authorization import enable_iam_authentication

    monkeypatch.chdir(tmp_path)
    target = "no-such-bucket" if problem == "missing bucket" else bucket
    if problem == "no credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup off EC2
    endpoint = (
        "http://127.0.0.1:1" if problem == "unreachable endpoint" else s3_endpoint
    )  # nothing listens there
    started = time.perf_counter()
    with enable_iam_authentication() if problem == "rejected credentials" else nullcontext():
        status = train.main(
            tiny_run(f"s3://{target}/runs/{{run_name}}", "pre", f"s3_endpoint_url={endpoint}")
        )
    assert status == 2 and time.perf_counter() - started < 10
    error = capsys.readouterr().err
    assert f"save_folder=s3://{target}/runs/pre/" in error and "Traceback" not in error
    expected = {
        "missing bucket": f"bucket '{target}' does not exist at endpoint {s3_endpoint}",
        "rejected credentials": f"bucket '{target}' at endpoint {s3_endpoint} refused the credentials",
        "no credentials": "no AWS credentials found",
        "unreachable endpoint": f"cannot reach the S3 endpoint {endpoint} for bucket '{target}'",
    }[problem]
    assert expected in error
    assert not Path("runs").exists()  # nothing built, nothing written


def test_autoresume_without_a_fixed_run_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train.main(["smoke", f"save_folder={tmp_path}", "autoresume=true"]) == 2
    assert "autoresume=true needs a fixed run_name" in capsys.readouterr().err


def test_existing_checkpoints_without_autoresume_are_refused(
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    s3_client(s3_endpoint).put_object(Bucket=bucket, Key="shared/ep0-ba2-rank0.pt", Body=b"an earlier run")
    assert train.main(tiny_run(f"s3://{bucket}/shared", "again", f"s3_endpoint_url={s3_endpoint}")) == 2
    error = capsys.readouterr().err
    assert f"s3://{bucket}/shared/ already holds checkpoints (ep0-ba2-rank0.pt)" in error
    assert "autoresume=true" in error and "save_overwrite=true" in error


def test_resuming_another_runs_checkpoint_is_refused(
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    fake_checkpoint(tmp_path / "other.pt", "someone-else")
    s3_client(s3_endpoint).upload_file(str(tmp_path / "other.pt"), bucket, "shared/ep0-ba2-rank0.pt")
    overrides = tiny_run(f"s3://{bucket}/shared", "mine", f"s3_endpoint_url={s3_endpoint}", "autoresume=true")
    assert train.main(overrides) == 2
    error = capsys.readouterr().err
    assert "belongs to run 'someone-else', not 'mine'" in error and "{run_name}" in error
