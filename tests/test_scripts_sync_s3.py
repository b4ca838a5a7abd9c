"""scripts/sync_s3.py end to end against a real S3 API on loopback (moto's server): copy, resume, skip, errors."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

from tests.script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sync_s3.py"
sync_s3 = load_script("sync_s3")

pytestmark = pytest.mark.usefixtures("aws_env")  # dummy credentials, nothing from ~/.aws

PREFIX = "imagenet"
BIG = "extras/ILSVRC2012_bbox_train_v2.tar.gz"  # uploaded multipart, so its ETag ends in '-3'
MiB = 1024 * 1024


def s3(endpoint: str) -> Any:
    """A client for arranging bucket contents (explicit credentials: module fixtures run outside monkeypatch)."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip


def make_bucket(endpoint: str, name: str, files: dict[str, bytes], tmp: Path) -> None:
    """Create ``name`` holding ``files`` under PREFIX, plus a directory marker and a look-alike sibling prefix."""
    client = s3(endpoint)
    client.create_bucket(Bucket=name)
    client.put_object(Bucket=name, Key=f"{PREFIX}/train/", Body=b"")  # a console-made "folder"
    client.put_object(Bucket=name, Key=f"{PREFIX}-old/stray.JPEG", Body=b"not under the prefix")
    for relative, body in files.items():
        if len(body) > 5 * MiB:
            (tmp / "big").write_bytes(body)
            config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
            client.upload_file(str(tmp / "big"), name, f"{PREFIX}/{relative}", Config=config)
        else:
            client.put_object(Bucket=name, Key=f"{PREFIX}/{relative}", Body=body)


def imagenet_like_files(seed: int = 0) -> dict[str, bytes]:
    """Two classes of small train and val "JPEGs" of varied sizes, and one 11 MiB archive."""
    rng = random.Random(seed)
    files = {}
    for wnid in ("n01440764", "n01443537"):
        for index in range(12):
            files[f"train/{wnid}/{wnid}_{index}.JPEG"] = rng.randbytes(rng.randint(500, 20_000))
        for index in range(4):
            files[f"val/{wnid}/ILSVRC2012_val_{wnid[-4:]}{index}.JPEG"] = rng.randbytes(
                rng.randint(500, 20_000)
            )
    files[BIG] = rng.randbytes(11 * MiB)
    return files


@pytest.fixture(scope="module")
def imagenet(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The read-only bucket 'imagenet' shared by the tests that do not change S3; returns relative path -> bytes."""
    files = imagenet_like_files()
    make_bucket(s3_endpoint, "imagenet", files, tmp_path_factory.mktemp("upload"))
    assert "-" in s3(s3_endpoint).head_object(Bucket="imagenet", Key=f"{PREFIX}/{BIG}")["ETag"]
    return files


def sync(endpoint: str, destination: Path, *extra: str, bucket: str = "imagenet") -> int:
    """Run the script in-process as a user would, with the endpoint on the command line."""
    argv = [f"s3://{bucket}/{PREFIX}", str(destination), "--endpoint-url", endpoint, "--workers", "4", *extra]
    return sync_s3.main(argv)


def counts(output: str) -> tuple[int, int, int]:
    """(downloaded, skipped, failed) from the summary line."""
    match = re.search(r"download(?:ed)? (\d+) objects .*skipped (\d+) already present .*failed (\d+)", output)
    assert match, output
    downloaded, skipped, failed = (int(group) for group in match.groups())
    return downloaded, skipped, failed


def local_files(destination: Path) -> dict[str, bytes]:
    """Every file under the destination except the manifest, by relative path."""
    return {
        path.relative_to(destination).as_posix(): path.read_bytes()
        for path in destination.rglob("*")
        if path.is_file() and path.name != sync_s3.MANIFEST_NAME
    }


def test_full_sync_copies_every_object_to_its_relative_path(
    s3_endpoint: str, imagenet: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sync(s3_endpoint, tmp_path / "data") == 0
    assert local_files(tmp_path / "data") == imagenet  # no marker, no sibling prefix, byte-identical
    assert counts(capsys.readouterr().out) == (len(imagenet), 0, 0)


def test_second_sync_downloads_nothing_and_leaves_files_untouched(
    s3_endpoint: str, imagenet: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    destination = tmp_path / "data"
    assert sync(s3_endpoint, destination) == 0
    mtimes = {
        path: path.stat().st_mtime_ns
        for path in destination.rglob("*.*")
        if path.name != sync_s3.MANIFEST_NAME
    }
    capsys.readouterr()
    assert sync(s3_endpoint, destination) == 0
    assert counts(capsys.readouterr().out) == (0, len(imagenet), 0)
    assert {path: path.stat().st_mtime_ns for path in mtimes} == mtimes


def test_interrupted_sync_resumes_with_only_the_missing_objects(
    s3_endpoint: str,
    imagenet: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real_make_client = sync_s3.make_client
    calls = 0

    def client_interrupted_after_five_downloads(*args: Any) -> Any:
        client = real_make_client(*args)
        real_download = client.download_file

        def download_file(*args: Any, **kwargs: Any) -> None:
            nonlocal calls
            calls += 1
            if calls > 5:
                raise KeyboardInterrupt  # Ctrl-C: this and every later download stops
            real_download(*args, **kwargs)

        client.download_file = download_file
        return client

    destination = tmp_path / "data"
    monkeypatch.setattr(sync_s3, "make_client", client_interrupted_after_five_downloads)
    assert sync(s3_endpoint, destination, "--workers", "1") == 130
    assert len(local_files(destination)) == 5
    # What a SIGKILL mid-transfer leaves: temporary files (ours, and s3transfer's inside it) and a torn manifest line.
    folder = destination / "train" / "n01443537"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "n01443537_0.JPEG.partial-0123abcd").write_bytes(b"half")
    (folder / "n01443537_1.JPEG.partial-4567cdef.a1B2c3D4").write_bytes(b"half")
    with (destination / sync_s3.MANIFEST_NAME).open("a") as manifest:
        manifest.write('{"path": "train/n014')
    monkeypatch.setattr(sync_s3, "make_client", real_make_client)
    capsys.readouterr()

    assert sync(s3_endpoint, destination) == 0
    output = capsys.readouterr()
    assert counts(output.out) == (len(imagenet) - 5, 5, 0)
    assert "removed 2 partial file(s) left by an interrupted sync" in output.err
    assert local_files(destination) == imagenet  # which also means no partial file is left


def test_same_size_local_file_with_other_content_is_replaced(
    s3_endpoint: str, imagenet: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    destination = tmp_path / "data"
    for relative, body in imagenet.items():  # a copy made some other way, one file corrupted in place
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        (destination / relative).write_bytes(body)
    corrupted = "train/n01440764/n01440764_3.JPEG"
    (destination / corrupted).write_bytes(bytes(len(imagenet[corrupted])))
    assert sync(s3_endpoint, destination) == 0
    assert counts(capsys.readouterr().out) == (1, len(imagenet) - 1, 0)
    assert (destination / corrupted).read_bytes() == imagenet[corrupted]


def test_dry_run_lists_what_it_would_do_and_transfers_nothing(
    s3_endpoint: str,
    imagenet: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # boto3 reads it; the script need not
    destination = tmp_path / "data"
    (destination / "val" / "n01440764").mkdir(parents=True)
    present = next(relative for relative in imagenet if relative.startswith("val/n01440764/"))
    (destination / present).write_bytes(imagenet[present])

    assert sync_s3.main([f"s3://imagenet/{PREFIX}/", str(destination), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^skip +{present} ", out, re.MULTILINE)
    assert re.search(rf"^download +{BIG}  \(11\.5 MB\)$", out, re.MULTILINE)
    assert counts(out) == (len(imagenet) - 1, 1, 0)
    assert local_files(destination) == {present: imagenet[present]}
    assert not (destination / sync_s3.MANIFEST_NAME).exists()


def test_missing_bucket_exits_2_naming_bucket_and_endpoint(
    s3_endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sync(s3_endpoint, tmp_path / "data", bucket="no-such-bucket") == 2
    error = capsys.readouterr().err
    assert f"bucket 'no-such-bucket' does not exist at endpoint {s3_endpoint}" in error
    assert "Traceback" not in error


def test_non_s3_url_exits_2_showing_the_expected_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sync_s3.main(["imagenet/train", str(tmp_path)]) == 2
    assert "source must look like s3://BUCKET/PREFIX, got 'imagenet/train'" in capsys.readouterr().err


def test_object_changed_on_s3_is_downloaded_again(
    s3_endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {f"train/n01440764/n01440764_{index}.JPEG": bytes([index]) * 1000 for index in range(3)}
    make_bucket(s3_endpoint, "changing", files, tmp_path)
    destination = tmp_path / "data"
    assert sync(s3_endpoint, destination, bucket="changing") == 0
    changed = "train/n01440764/n01440764_1.JPEG"
    s3(s3_endpoint).put_object(Bucket="changing", Key=f"{PREFIX}/{changed}", Body=b"\xff" * 1000)  # same size
    capsys.readouterr()

    assert sync(s3_endpoint, destination, bucket="changing") == 0
    assert counts(capsys.readouterr().out) == (1, 2, 0)
    assert (destination / changed).read_bytes() == b"\xff" * 1000


@pytest.mark.parametrize(
    "key", ["imagenet/../../etc/cron.d/job", "imagenet//etc/passwd", "imagenet/a/../../b"]
)
def test_keys_that_would_escape_the_destination_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="outside the destination"):
        sync_s3.relative_path(key, "imagenet/")
