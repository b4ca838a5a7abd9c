"""Write a recipe's data as MDS shards, to a folder or ``s3://``, for ``data.source: streaming``.

    python scripts/convert_to_mds.py RECIPE [data.KEY=VALUE ...] --out s3://bucket/imagenet-mds \\
        [--endpoint-url URL] [--workers 8] [--group-size 10000] [--shard-size 64mb] \\
        [--short-side 256 [--quality 90]] [--verify 64|all] [--dry-run]

Any source this project reads (imagefolder, ilsvrc, hf, digits, synthetic) is read as the recipe describes it,
subset keys included, and written split by split to ``OUT/<train_split>/`` and ``OUT/<val_split>/``:

* each image as stored (its file's or Hugging Face row's bytes; generated images as PNG), or, with
  ``--short-side N``, decoded and re-encoded as JPEG with its short side at most N px (the size is recorded in
  the index). The fast pipeline decodes a JPEG at 1/2, 1/4 or 1/8 scale when the crop allows, so a smaller
  stored image costs less to decode in the low-resolution phases;
* in groups of ``--group-size`` images, written in parallel by ``--workers`` processes, each group its own MDS
  folder (``group-00000/``) whose ``index.json`` lands last: a group with an index is complete. A rerun skips
  complete groups (resumable), and an interrupted one leaves nothing a reader would take as data;
* then one ``index.json`` per split over all groups, with the class names and per-class counts under
  ``mosaic_resnet50`` (``data.streaming.METADATA_KEY``);
* then a verification pass: the index's sample count and per-class counts against the source's, and ``--verify``
  samples read back through MosaicML Streaming (only their shards are downloaded), each compared with the
  source's bytes and label and decoded; ``--verify all`` reads every label and counts them per class.

``--dry-run`` prints what would be written (groups done and to do, images and bytes per split) and writes nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent
# Run as `python scripts/convert_to_mds.py`, the repository is not on sys.path (as in bench/).
sys.path.insert(0, str(REPOSITORY))

from PIL import Image  # noqa: E402

from data import SOURCES  # noqa: E402
from data.samples import Split  # noqa: E402
from data.streaming import COLUMNS, HASHES, METADATA_KEY, require_streaming  # noqa: E402
from data.subsets import subset_catalog  # noqa: E402
from recipes.errors import UsageError  # noqa: E402
from recipes.loading import load_recipe  # noqa: E402

INDEX = "index.json"


@dataclass(frozen=True)
class Encoding:
    """How images are stored: as read (``short_side`` None), or re-encoded as JPEG at most ``short_side`` px."""

    short_side: int | None = None
    quality: int = 90

    def describe(self) -> dict[str, Any]:
        if self.short_side is None:
            return {"images": "as stored in the source"}
        return {"images": "JPEG", "short_side_max": self.short_side, "quality": self.quality}


def image_bytes(split: Split, sample: Any, encoding: Encoding) -> bytes:
    """The sample's image as it will be stored: the source's own bytes, or re-encoded per ``encoding``."""
    stored = _stored_bytes(split, sample)
    if encoding.short_side is None:
        return stored
    image = Image.open(io.BytesIO(stored)).convert("RGB")
    scale = encoding.short_side / min(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=encoding.quality)
    return out.getvalue()


def _stored_bytes(split: Split, sample: Any) -> bytes:
    """A file's bytes, a Hugging Face row's encoded cell, or (generated images) a lossless PNG."""
    if isinstance(sample, str):
        return Path(sample).read_bytes()
    encoded = getattr(split.load, "encoded", None)
    if encoded is not None:
        return encoded(sample)
    out = io.BytesIO()
    split.load(sample).convert("RGB").save(out, format="PNG")
    return out.getvalue()


class Destination:
    """``OUT`` as a folder or an S3 prefix: existence checks, file placement and reads."""

    def __init__(self, out: str, endpoint_url: str | None) -> None:
        self.out = out.rstrip("/")
        self.is_s3 = self.out.startswith("s3://")
        self.endpoint_url = endpoint_url
        if self.is_s3:
            bucket, _, prefix = self.out[len("s3://") :].partition("/")
            if not bucket:
                raise UsageError(f"--out {out} names no bucket; use s3://BUCKET/PREFIX.")
            self.bucket, self.prefix = bucket, prefix.strip("/")
            import boto3

            self.client = boto3.client("s3", endpoint_url=endpoint_url)
            try:
                self.client.head_bucket(Bucket=bucket)
            except Exception as error:
                raise UsageError(
                    f"Cannot reach bucket '{bucket}' of --out {out} ({type(error).__name__}: {error}). Create it, "
                    "check the credentials, or pass --endpoint-url for an S3-compatible store."
                ) from error
        else:
            self.root = Path(os.path.expandvars(os.path.expanduser(self.out)))

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def exists(self, relative: str) -> bool:
        if not self.is_s3:
            return (self.root / relative).is_file()
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(relative))
        except self.client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def read(self, relative: str) -> bytes:
        if not self.is_s3:
            return (self.root / relative).read_bytes()
        return self.client.get_object(Bucket=self.bucket, Key=self._key(relative))["Body"].read()

    def put_folder(self, folder: Path, relative: str) -> None:
        """Place ``folder``'s files under ``relative``, index.json last, so a complete index means a complete group."""
        files = sorted(folder.iterdir(), key=lambda path: path.name == INDEX)
        if self.is_s3:
            for path in files:
                self.client.upload_file(str(path), self.bucket, self._key(f"{relative}/{path.name}"))
            return
        target = self.root / relative
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.move(str(path), target / path.name)

    def put_bytes(self, relative: str, content: bytes) -> None:
        if self.is_s3:
            self.client.put_object(Bucket=self.bucket, Key=self._key(relative), Body=content)
            return
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".partial")
        temporary.write_bytes(content)
        temporary.replace(path)

    def url(self, relative: str) -> str:
        return f"{self.out}/{relative}"


def write_group(
    split: Split, samples: list[tuple[Any, int]], encoding: Encoding, shard_size: str, folder: str
) -> int:
    """One group as an MDS folder under ``folder`` (a worker process); the bytes written."""
    from streaming import MDSWriter

    written = 0
    with MDSWriter(out=folder, columns=COLUMNS, size_limit=shard_size, hashes=HASHES) as writer:
        for sample, label in samples:
            image = image_bytes(split, sample, encoding)
            written += len(image)
            writer.write({"image": image, "label": int(label)})
    return written


def group_name(number: int) -> str:
    return f"group-{number:05d}"


def convert_split(
    name: str,
    split: Split,
    classes: list[str],
    destination: Destination,
    arguments: argparse.Namespace,
    encoding: Encoding,
) -> dict[str, Any]:
    """Write the split's pending groups, then its merged index; returns what was done, for the summary."""
    samples = list(split.samples)
    groups = [
        samples[start : start + arguments.group_size]
        for start in range(0, len(samples), arguments.group_size)
    ]
    done = [
        number for number in range(len(groups)) if destination.exists(f"{name}/{group_name(number)}/{INDEX}")
    ]
    pending = [number for number in range(len(groups)) if number not in done]
    report = {"split": name, "images": len(samples), "groups": len(groups), "already_done": len(done)}
    if arguments.dry_run:
        sizes = [os.path.getsize(s) for s, _ in samples if isinstance(s, str)]
        report["source_bytes"] = sum(sizes) if len(sizes) == len(samples) else None
        return report
    staging = Path(tempfile.mkdtemp(prefix=f"mds-{name}-", dir=arguments.staging))
    written = 0
    progress = _progress(total=sum(len(groups[n]) for n in pending), description=f"{name}")
    try:
        with ProcessPoolExecutor(max_workers=arguments.workers) as pool:
            futures = {
                pool.submit(
                    write_group,
                    split,
                    groups[n],
                    encoding,
                    arguments.shard_size,
                    str(staging / group_name(n)),
                ): n
                for n in pending
            }
            for future in as_completed(futures):
                number = futures[future]
                written += future.result()
                destination.put_folder(staging / group_name(number), f"{name}/{group_name(number)}")
                progress.update(len(groups[number]))
    finally:
        progress.close()
        shutil.rmtree(staging, ignore_errors=True)
    counts = Counter(label for _, label in samples)
    merge_index(
        name, len(groups), destination, classes, [counts.get(c, 0) for c in range(len(classes))], encoding
    )
    report.update(written_groups=len(pending), written_bytes=written)
    return report


def merge_index(
    name: str,
    group_count: int,
    destination: Destination,
    classes: list[str],
    counts: list[int],
    encoding: Encoding,
) -> None:
    """One MDS index over the split's groups (shard paths relative to the split), with this project's metadata."""
    shards = []
    for number in range(group_count):
        group = json.loads(destination.read(f"{name}/{group_name(number)}/{INDEX}"))
        for shard in group["shards"]:
            for key in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
                if shard.get(key):
                    shard[key]["basename"] = f"{group_name(number)}/{shard[key]['basename']}"
            shards.append(shard)
    index = {
        "version": 2,
        "shards": shards,
        METADATA_KEY: {"classes": classes, "counts": counts, "columns": COLUMNS, **encoding.describe()},
    }
    destination.put_bytes(f"{name}/{INDEX}", json.dumps(index).encode())


def verify_split(
    name: str, split: Split, classes: list[str], destination: Destination, arguments: argparse.Namespace,
    encoding: Encoding,
) -> dict[str, Any]:  # fmt: skip
    """Read the split back through Streaming and compare it with the source; raise UsageError on a mismatch."""
    streaming = require_streaming()
    samples = list(split.samples)
    index = json.loads(destination.read(f"{name}/{INDEX}"))
    expected = Counter(label for _, label in samples)
    metadata = index[METADATA_KEY]
    problems = []
    if metadata["classes"] != classes:
        problems.append("the class names differ from the source's")
    if metadata["counts"] != [expected.get(c, 0) for c in range(len(classes))]:
        problems.append("the per-class counts differ from the source's")
    total = sum(shard["samples"] for shard in index["shards"])
    if total != len(samples):
        problems.append(f"the shards hold {total} samples, the source {len(samples)}")
    if arguments.endpoint_url:
        os.environ["S3_ENDPOINT_URL"] = arguments.endpoint_url
    local = tempfile.mkdtemp(prefix=f"mds-verify-{name}-", dir=arguments.staging)
    checked = 0
    try:
        stream = streaming.StreamingDataset(remote=destination.url(name), local=local, batch_size=1)
        everything = arguments.verify == "all"
        ids = (
            range(len(samples))
            if everything
            else random.Random(0).sample(range(len(samples)), min(int(arguments.verify), len(samples)))
        )
        read_counts: Counter[int] = Counter()
        for sample_id in ids:
            row = stream.get_item(sample_id)
            sample, label = samples[sample_id]
            read_counts[int(row["label"])] += 1
            if int(row["label"]) != label:
                problems.append(f"sample {sample_id} has label {row['label']}, the source {label}")
            elif everything and checked >= 64:
                continue  # the labels of every sample, the images of the first 64
            elif encoding.short_side is None and row["image"] != image_bytes(split, sample, encoding):
                problems.append(f"sample {sample_id}'s image bytes differ from {sample}")
            else:
                Image.open(io.BytesIO(row["image"])).convert("RGB")
            checked += 1
        if everything and read_counts != expected:
            problems.append("the labels read back do not match the source's per-class counts")
    finally:
        shutil.rmtree(local, ignore_errors=True)
    if problems:
        raise UsageError(f"Verification of {destination.url(name)} failed: " + "; ".join(problems[:5]))
    return {"split": name, "verified_images": checked, "counted_labels": arguments.verify == "all"}


def _progress(total: int, description: str) -> Any:
    """A tqdm bar on a terminal (and in logs), images as the unit."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", mininterval=5.0, file=sys.stderr)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="recipe name or path (its data section is what is converted)")
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. data.source=imagefolder data.path=DIR"
    )
    parser.add_argument("--out", required=True, help="destination folder or s3://bucket/prefix")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, R2, moto, ...)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--group-size", type=int, default=10_000, help="images per resumable group")
    parser.add_argument(
        "--shard-size", default="64mb", help="MDS shard size limit (Streaming's form: 64mb, 512kb)"
    )
    parser.add_argument("--short-side", type=int, help="re-encode as JPEG with the short side at most this")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality with --short-side")
    parser.add_argument("--splits", nargs="+", choices=("train", "val"), default=["train", "val"])
    parser.add_argument("--verify", default="64", help="samples to read back and compare, or 'all'")
    parser.add_argument("--staging", help="folder for groups being written (default: the system temp folder)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be written; write nothing")
    arguments = parser.parse_args(argv)
    for key in ("workers", "group_size"):
        if getattr(arguments, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    if arguments.verify != "all" and not arguments.verify.isdigit():
        parser.error("--verify takes a number of samples or 'all'")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        config = load_recipe(arguments.recipe, arguments.overrides)
        data = config.data
        if data.source == "streaming":
            raise UsageError("data.source=streaming is already MDS; convert the source it was written from.")
        catalog = subset_catalog(
            SOURCES[data.source](data, seed=config.seed, train="train" in arguments.splits), data, config.seed
        )
        splits = {"train": (data.train_split, catalog.train), "val": (data.val_split, catalog.val)}
        encoding = Encoding(arguments.short_side, arguments.quality)
        destination = Destination(arguments.out, arguments.endpoint_url)
        reports = []
        for which in arguments.splits:
            name, split = splits[which]
            if not isinstance(split, Split):
                raise UsageError(
                    f"The {which} split of data.source={data.source} is a stream; set data.hf_streaming=false (or "
                    "a subset key, which draws the subset into data.cache_dir) to convert it."
                )
            report = convert_split(name, split, catalog.classes, destination, arguments, encoding)
            if not arguments.dry_run:
                report.update(verify_split(name, split, catalog.classes, destination, arguments, encoding))
            reports.append(report)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for report in reports:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
