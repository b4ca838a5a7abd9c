"""scripts/convert_to_mds.py: any source as MDS shards, to a folder or the loopback S3 server, resumable, verified.

The digits and a generated ImageFolder of JPEGs are converted; what is checked is what a reader gets back through
MosaicML Streaming: the source's bytes and labels in the source's order, the class names and counts in the index,
and that an interrupted conversion redoes only its unfinished group.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import boto3
import pytest
from PIL import Image
from streaming import StreamingDataset

from data.digits import ensure_digits_folder
from data.streaming import METADATA_KEY
from data.synthetic import SyntheticImages
from recipes.loading import load_recipe
from tests.script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_to_mds.py"
convert_to_mds = load_script("convert_to_mds")
pytestmark = pytest.mark.usefixtures("aws_env")


def convert(*arguments: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict]]:
    status = convert_to_mds.main(list(arguments))
    out = capsys.readouterr().out
    return status, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated ImageFolder: 3 classes of 40x56 JPEGs, 7 per class in train and 2 in val."""
    root = tmp_path_factory.mktemp("jpegs")
    for split, count in (("train", 21), ("val", 6)):
        images = SyntheticImages(seed=1, split=split, size=56, num_classes=3)
        for index in range(count):
            folder = root / split / f"class_{images.label(index)}"
            folder.mkdir(parents=True, exist_ok=True)
            images(index).crop((0, 0, 40, 56)).save(folder / f"{index:03d}.jpg", quality=85)
    return root


def folder_recipe(root: Path) -> list[str]:
    return ["smoke", "data.source=imagefolder", f"data.path={root}", "data.index_cache=false"]


def test_digits_on_s3_read_back_with_the_source_classes_counts_and_labels(
    s3_endpoint: str, digits_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    bucket = f"mds-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    out = f"s3://{bucket}/digits"
    status, reports = convert(
        "smoke", f"data.cache_dir={digits_cache}", "--out", out, "--endpoint-url", s3_endpoint,
        "--workers", "2", "--group-size", "400", "--verify", "all", capsys=capsys,
    )  # fmt: skip
    assert status == 0
    by_split = {report["split"]: report for report in reports}
    assert by_split["train"]["images"] == 1437 and by_split["train"]["groups"] == 4
    assert by_split["val"]["images"] == 360 and by_split["train"]["counted_labels"]
    index = json.loads(s3.get_object(Bucket=bucket, Key="digits/train/index.json")["Body"].read())
    metadata = index[METADATA_KEY]
    assert metadata["classes"] == [str(digit) for digit in range(10)]
    assert sum(metadata["counts"]) == 1437 and min(metadata["counts"]) > 130  # stratified: ~144 per digit
    assert metadata["images"] == "as stored in the source"
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix="digits/train/")["Contents"]}
    assert {f"digits/train/group-0000{n}/index.json" for n in range(4)} <= keys

    # A reader through Streaming, from S3, gets the JPEG files' bytes in the source's order.
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_endpoint)
    stream = StreamingDataset(remote=f"{out}/val", local=str(tmp_path / "cache"), batch_size=1)
    smoke = load_recipe("smoke", [f"data.cache_dir={digits_cache}"])
    folder = ensure_digits_folder(
        digits_cache, smoke.data.digits_val_fraction, smoke.seed
    )  # the one it converted
    first = sorted(folder.glob("val/0/*.jpg"))[0]
    assert stream.get_item(0)["image"] == first.read_bytes() and stream.get_item(0)["label"] == 0


def test_interrupted_conversion_rewrites_only_the_unfinished_group(
    jpeg_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mds"
    arguments = [*folder_recipe(jpeg_folder), "--out", str(out), "--workers", "1", "--group-size", "5"]
    assert convert(*arguments, "--splits", "train", capsys=capsys)[0] == 0
    shards = {path: path.read_bytes() for path in sorted(out.glob("train/group-*/*.mds"))}
    assert len(shards) == 5  # 21 images in groups of 5
    # Killed while writing group 3: its shard landed, its index (written last) did not.
    (out / "train/group-00003/index.json").unlink()
    status, (report,) = convert(*arguments, "--splits", "train", capsys=capsys)
    assert status == 0
    assert report["already_done"] == 4 and report["written_groups"] == 1
    assert {path: path.read_bytes() for path in sorted(out.glob("train/group-*/*.mds"))} == shards


def test_images_are_stored_as_the_source_files_unless_re_encoded_smaller(
    jpeg_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    as_stored, smaller = tmp_path / "as-stored", tmp_path / "smaller"
    for out, extra in ((as_stored, []), (smaller, ["--short-side", "20", "--quality", "80"])):
        status, _ = convert(
            *folder_recipe(jpeg_folder), "--out", str(out), "--splits", "val", *extra, capsys=capsys
        )
        assert status == 0
    files = sorted((jpeg_folder / "val").glob("*/*.jpg"))
    originals = StreamingDataset(local=str(as_stored / "val"), batch_size=1)
    assert [originals.get_item(i)["image"] for i in range(len(files))] == [
        path.read_bytes() for path in files
    ]
    reencoded = StreamingDataset(local=str(smaller / "val"), batch_size=1)
    sizes = [Image.open(io.BytesIO(reencoded.get_item(i)["image"])).size for i in range(len(files))]
    assert set(sizes) == {(20, 28)}  # 40x56 with the short side at 20, aspect kept
    metadata = json.loads((smaller / "val/index.json").read_text())[METADATA_KEY]
    assert metadata["short_side_max"] == 20 and metadata["quality"] == 80


def test_dry_run_reports_the_groups_and_writes_nothing(
    jpeg_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mds"
    status, reports = convert(
        *folder_recipe(jpeg_folder), "--out", str(out), "--group-size", "4", "--dry-run", capsys=capsys
    )
    assert status == 0 and not out.exists()
    train = next(report for report in reports if report["split"] == "train")
    assert train["groups"] == 6 and train["already_done"] == 0
    assert train["source_bytes"] == sum(
        path.stat().st_size for path in (jpeg_folder / "train").glob("*/*.jpg")
    )


def test_missing_bucket_exits_2_naming_it(
    s3_endpoint: str, jpeg_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = convert_to_mds.main(
        [*folder_recipe(jpeg_folder), "--out", "s3://no-such-bucket/x", "--endpoint-url", s3_endpoint]
    )
    assert status == 2
    assert "no-such-bucket" in capsys.readouterr().err
