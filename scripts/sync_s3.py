"""Copy an S3 prefix (an ImageNet tree) onto local disk in parallel, resumably, for data.source=ilsvrc/imagefolder.

Standalone on purpose: it needs only boto3 (tqdm optional), so it can fill a fresh machine's NVMe before the
project and torch are installed. That is also why it has its own ``UsageError`` rather than importing
``recipes.errors``.

An object is skipped when the local file has the object's size and its ETag is known to match: either the manifest
(``.s3-sync-manifest.jsonl`` in the destination, one line per completed download) records that ETag for a file of
the same size and mtime, or, without such a record, the file's MD5 equals a single-part ETag. A multipart ETag
(one with a '-') is not an MD5 of the content, so an unrecorded local file is then trusted on size alone. Objects
land under a temporary ``NAME.partial-XXXXXXXX`` name and are renamed into place when complete, so an interrupted
sync never leaves a truncated file under its final name; leftovers are removed by the next run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ProfileNotFound

try:
    from tqdm import tqdm
except ImportError:
    tqdm = None

MANIFEST_NAME = ".s3-sync-manifest.jsonl"
# Our own temp suffix, optionally followed by the '.XXXXXXXX' temp suffix s3transfer adds while it writes.
PARTIAL_PATTERN = re.compile(r"\.partial-[0-9a-f]{8}(\.[0-9a-fA-F]{8})?$")
TRANSFER = TransferConfig()  # boto3's defaults: multipart above 8 MiB, 10 threads per large object
PROGRESS_INTERVAL_S = 10.0

EPILOG = """\
examples:
  # a tree laid out as ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG
  python scripts/sync_s3.py s3://my-bucket/imagenet /nvme/imagenet
  python train.py g4dn_xlarge data.source=imagefolder data.path=/nvme/imagenet

  # the Kaggle/ILSVRC layout (ROOT/Data/CLS-LOC/..., ROOT/LOC_val_solution.csv)
  python scripts/sync_s3.py s3://my-bucket/ILSVRC /nvme/ILSVRC --workers 64
  python train.py g4dn_xlarge data.source=ilsvrc data.path=/nvme/ILSVRC

Rerun the same command to resume: complete files are skipped, interrupted ones fetched again.
A bucket mounted with mountpoint-s3 or s3fs needs no sync at all: point data.path at the mount
(each epoch then reads from S3, slower than local NVMe, but there is nothing to copy).
The endpoint may also come from AWS_ENDPOINT_URL (boto3 reads it); credentials come from the
usual AWS chain (AWS_PROFILE, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an instance role)."""


class UsageError(Exception):
    """A failure the user can fix (bad URL, missing bucket, no credentials); its message names it and the fix."""


@dataclass(frozen=True)
class RemoteObject:
    """One S3 object to mirror, with the path it gets under the destination."""

    key: str
    size: int
    etag: str  # without the surrounding quotes S3 returns
    relative: str


@dataclass
class Summary:
    """What a sync did; the exit status and the final report come from it."""

    downloaded: list[RemoteObject] = field(default_factory=list)
    skipped: list[RemoteObject] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    elapsed_s: float = 0.0


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into bucket and a folder-like prefix ('' or ending in '/'), as `aws s3 sync`."""
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
    if not match:
        raise UsageError(f"source must look like s3://BUCKET/PREFIX, got '{url}'")
    bucket, prefix = match.groups()
    return bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/"


def relative_path(key: str, prefix: str) -> str:
    """The key's path under the destination; refuses keys that would land outside it."""
    relative = key[len(prefix) :]
    parts = PurePosixPath(relative).parts
    if relative.startswith("/") or ".." in parts or not parts:
        raise ValueError(
            f"key '{key}' would be written outside the destination ('..' or absolute path); not copied"
        )
    return relative


def make_client(endpoint_url: str | None, region: str | None, profile: str | None, workers: int) -> Any:
    """One S3 client shared by every worker (clients are thread-safe), with a connection per possible request."""
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except ProfileNotFound as error:
        raise UsageError(
            f"AWS profile '{profile}' not found; list yours with `aws configure list-profiles`"
        ) from error
    config = Config(
        max_pool_connections=workers * TRANSFER.max_request_concurrency,
        retries={"mode": "standard", "max_attempts": 5},
    )
    # endpoint_url=None lets boto3 apply AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 or the config file itself.
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def list_objects(client: Any, bucket: str, prefix: str) -> tuple[list[RemoteObject], list[tuple[str, str]]]:
    """Every object under the prefix, minus directory markers; keys that would escape come back as failures."""
    endpoint = client.meta.endpoint_url
    objects, rejected = [], []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):
                    continue
                try:
                    relative = relative_path(item["Key"], prefix)
                except ValueError as error:
                    rejected.append((item["Key"], str(error)))
                    continue
                objects.append(RemoteObject(item["Key"], item["Size"], item["ETag"].strip('"'), relative))
    except NoCredentialsError as error:
        raise UsageError(
            "no AWS credentials found: pass --profile or set AWS_PROFILE, or set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        ) from error
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise UsageError(
                f"bucket '{bucket}' does not exist at endpoint {endpoint}; check the URL "
                "and --endpoint-url / AWS_ENDPOINT_URL"
            ) from error
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
            raise UsageError(f"bucket '{bucket}' is in another region; pass --region") from error
        raise UsageError(
            f"cannot list s3://{bucket}/{prefix} at {endpoint}: {code or error}; check the "
            "credentials (--profile / AWS_PROFILE) and their s3:ListBucket permission"
        ) from error
    except BotoCoreError as error:
        raise UsageError(f"cannot list s3://{bucket}/{prefix} at {endpoint}: {error}") from error
    if not objects and not rejected:
        raise UsageError(
            f"no objects under s3://{bucket}/{prefix} at {endpoint}; check the prefix (case matters)"
        )
    return objects, rejected


class Manifest:
    """ETags of completed downloads, appended line by line so a killed sync keeps what it finished."""

    def __init__(self, destination: Path) -> None:
        self.path = destination / MANIFEST_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        for line in lines:
            try:
                entry = json.loads(line)
                self.entries[entry["path"]] = entry
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a kill mid-write
        self._lock = threading.Lock()
        self._file: Any = None

    def open(self) -> None:
        """Rewrite the manifest compactly (dropping torn lines and superseded entries), then append to it."""
        temporary = self.path.with_name(MANIFEST_NAME + ".tmp")
        temporary.write_text("".join(json.dumps(entry) + "\n" for entry in self.entries.values()))
        os.replace(temporary, self.path)
        self._file = self.path.open("a")

    def record(self, obj: RemoteObject, path: Path) -> None:
        """Note that ``path`` now holds ``obj`` (size and mtime tell a later run if it was touched since)."""
        stat = path.stat()
        entry = {"path": obj.relative, "size": stat.st_size, "etag": obj.etag, "mtime_ns": stat.st_mtime_ns}
        with self._lock:
            self.entries[obj.relative] = entry
            if self._file is not None:
                self._file.write(json.dumps(entry) + "\n")
                self._file.flush()

    def close(self) -> None:
        """Stop appending; entries stay readable in memory."""
        if self._file is not None:
            self._file.close()


def md5_of(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks; equal to a single-part ETag of the same bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def local_state(obj: RemoteObject, path: Path, manifest: Manifest) -> str:
    """'recorded' (manifest vouches for it), 'missing', 'hash' (compare MD5) or 'size-only' (multipart ETag)."""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    if stat.st_size != obj.size:
        return "missing"
    entry = manifest.entries.get(obj.relative)
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return "recorded" if entry.get("etag") == obj.etag else "missing"
    return "size-only" if "-" in obj.etag else "hash"


def remove_stale_partials(destination: Path) -> int:
    """Delete temporary files an earlier, killed sync left behind."""
    removed = 0
    for folder, _, names in os.walk(destination):
        for name in names:
            if PARTIAL_PATTERN.search(name):
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed


class Progress:
    """Downloaded bytes on stderr: a tqdm bar on a terminal, else a line every PROGRESS_INTERVAL_S for logs."""

    def __init__(self, total_bytes: int) -> None:
        self.total, self.done, self._last = total_bytes, 0, time.monotonic()
        self._lock = threading.Lock()
        use_bar = tqdm is not None and sys.stderr.isatty()
        self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, file=sys.stderr) if use_bar else None

    def __call__(self, count: int) -> None:
        with self._lock:
            self.done += count
            if self._bar is not None:
                self._bar.update(count)
            elif time.monotonic() - self._last >= PROGRESS_INTERVAL_S:
                self._last = time.monotonic()
                percent = 100 * self.done / max(self.total, 1)
                print(
                    f"{format_bytes(self.done)} / {format_bytes(self.total)} ({percent:.0f}%)",
                    file=sys.stderr,
                )

    def close(self) -> None:
        """Finish the bar's line, if there is a bar."""
        if self._bar is not None:
            self._bar.close()


def download(
    client: Any, bucket: str, obj: RemoteObject, path: Path, progress: Progress, manifest: Manifest
) -> None:
    """Fetch one object through a temporary name, so the final name only ever holds a complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial-{secrets.token_hex(4)}")
    try:
        # If the object is replaced between listing and this GET, the manifest records the listed (older) ETag,
        # so the next run sees a mismatch and fetches it again.
        client.download_file(bucket, obj.key, str(partial), Callback=progress, Config=TRANSFER)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    manifest.record(obj, path)  # here, not in the caller, so downloads that finish after Ctrl-C count too


def plan(
    objects: list[RemoteObject], destination: Path, manifest: Manifest, pool: ThreadPoolExecutor
) -> dict[RemoteObject, str]:
    """Each object's local state; the MD5s (the slow part) run in parallel and settle to 'verified' or 'missing'."""
    states = {obj: local_state(obj, destination / obj.relative, manifest) for obj in objects}
    to_hash = [obj for obj, state in states.items() if state == "hash"]
    hashes = pool.map(lambda obj: md5_of(destination / obj.relative), to_hash)
    for obj, digest in zip(to_hash, hashes, strict=True):
        states[obj] = "verified" if digest == obj.etag else "missing"
    return states


def sync(
    client: Any, bucket: str, objects: list[RemoteObject], destination: Path, workers: int, dry_run: bool
) -> Summary:
    """Download what is missing or changed, keeping the manifest current; stops cleanly on Ctrl-C."""
    start, summary, manifest = time.monotonic(), Summary(), Manifest(destination)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        states = plan(objects, destination, manifest, pool)
        summary.skipped = [obj for obj in objects if states[obj] != "missing"]
        wanted = [obj for obj in objects if states[obj] == "missing"]
        if dry_run:
            for obj in objects:
                action = "download" if states[obj] == "missing" else "skip"
                print(f"{action:<9} {obj.relative}  ({format_bytes(obj.size)})")
            summary.downloaded = wanted
            return summary
        if removed := remove_stale_partials(destination):
            print(f"removed {removed} partial file(s) left by an interrupted sync", file=sys.stderr)
        manifest.open()
        for obj in summary.skipped:
            if states[obj] in ("verified", "size-only"):
                manifest.record(obj, destination / obj.relative)  # so the next run need not hash it again
        progress = Progress(sum(obj.size for obj in wanted))
        futures = {
            pool.submit(download, client, bucket, obj, destination / obj.relative, progress, manifest): obj
            for obj in wanted
        }
        try:
            for future in as_completed(futures):
                try:
                    future.result()
                    summary.downloaded.append(futures[future])
                except Exception as error:
                    summary.failed.append((futures[future].key, f"{type(error).__name__}: {error}"))
        except KeyboardInterrupt:
            summary.interrupted = True
            pool.shutdown(wait=True, cancel_futures=True)  # let running downloads land; start no more
            finished = {future: obj for future, obj in futures.items() if not future.cancelled()}
            summary.downloaded = [obj for future, obj in finished.items() if future.exception() is None]
        finally:
            progress.close()
            manifest.close()
    summary.elapsed_s = time.monotonic() - start
    return summary


def format_bytes(count: float) -> str:
    """Decimal units, as the MB/s rate uses."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def report(summary: Summary, dry_run: bool) -> None:
    """The closing lines: counts and bytes per outcome, each failure with its reason, and the rate."""
    down = sum(obj.size for obj in summary.downloaded)
    skipped = sum(obj.size for obj in summary.skipped)
    verb = "would download" if dry_run else "downloaded"
    print(
        f"{verb} {len(summary.downloaded)} objects ({format_bytes(down)}), skipped {len(summary.skipped)} "
        f"already present ({format_bytes(skipped)}), failed {len(summary.failed)}"
    )
    for key, reason in summary.failed:
        print(f"  failed: {key}: {reason}")
    if dry_run:
        print("dry run: nothing was transferred")
        return
    rate = down / 1e6 / max(summary.elapsed_s, 1e-9)
    print(f"elapsed {summary.elapsed_s:.1f} s, {rate:.1f} MB/s")
    if summary.interrupted:
        print("interrupted: rerun the same command to resume", file=sys.stderr)


def positive_int(text: str) -> int:
    """argparse type for --workers."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; --help carries the examples and the mountpoint-s3 / s3fs note."""
    parser = argparse.ArgumentParser(
        prog="sync_s3.py",
        description="Copy every object under an S3 prefix into a local folder (resumable, parallel).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="s3://BUCKET/PREFIX to copy (the prefix is treated as a folder)")
    parser.add_argument("destination", type=Path, help="local folder; keys map to paths below it")
    parser.add_argument(
        "--endpoint-url", help="S3-compatible endpoint (MinIO, R2, ...); default AWS_ENDPOINT_URL or AWS"
    )
    parser.add_argument("--workers", type=positive_int, default=32, help="parallel downloads (default 32)")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be downloaded or skipped; copy nothing"
    )
    parser.add_argument("--region", help="bucket region (default from AWS_DEFAULT_REGION or the profile)")
    parser.add_argument("--profile", help="AWS profile from ~/.aws/config (default AWS_PROFILE)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Sync, report, and exit 0 when every object is in place, 1 when some failed, 2 on usage errors."""
    args = parse_args(argv)
    destination = args.destination.expanduser()
    try:
        if destination.exists() and not destination.is_dir():
            raise UsageError(f"destination '{destination}' exists and is not a folder; pass a folder path")
        bucket, prefix = parse_s3_url(args.source)
        client = make_client(args.endpoint_url, args.region, args.profile, args.workers)
        objects, rejected = list_objects(client, bucket, prefix)
        if not args.dry_run:
            destination.mkdir(parents=True, exist_ok=True)
    except (UsageError, OSError) as error:
        print(f"sync_s3: error: {error}", file=sys.stderr)
        return 2
    try:
        summary = sync(client, bucket, objects, destination, args.workers, args.dry_run)
    except KeyboardInterrupt:  # while checking local files, before any download started
        print("interrupted before downloading; nothing changed", file=sys.stderr)
        return 130
    summary.failed[:0] = rejected
    report(summary, args.dry_run)
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
