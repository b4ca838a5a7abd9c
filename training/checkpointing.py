"""Where checkpoints go, a start-up check of an S3 destination, and the checkpoint a relaunch resumes from.

Composer 0.32.1 does the saving and the uploading (``CheckpointSaver``, ``RemoteUploaderDownloader``,
``S3ObjectStore``); this module picks their settings and fills three gaps Composer leaves:

- A checkpoint file appears only once it is complete. Composer opens the final name and ``torch.save``s into it
  (composer/utils/checkpoint.py:1116-1138), so a kill mid-save leaves a truncated ``ep*-ba*-rank0.pt``. That file
  looks like a checkpoint, and its name blocks the next autoresume (Composer's conflict check in
  composer/utils/file_helpers.py:176-192).
- An ``s3://`` save_folder is checked in seconds at start (credentials, bucket, one tiny object written and deleted
  under the prefix), not at the first checkpoint hours later.
- A relaunch resumes from the newest checkpoint that loads, local copy or S3 object, and says which newer ones it
  skipped and why. Composer's own autoresume follows the ``latest`` pointer (trainer.py:1851-1931) and crashes on
  a truncated file. On a run over several machines every machine gets its own copy of the chosen checkpoint, and
  a launch of a run that already finished says so before it does anything.

With ``save_folder=s3://bucket/prefix`` the local copies go to the run's output folder (``runs/<run_name>``),
which keeps the last ``save_num_checkpoints_to_keep``. Every checkpoint is uploaded, and remote copies are never
deleted (Composer only rotates local files: callbacks/checkpoint_saver.py:203-212, 575-584).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import re
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from composer.callbacks import CheckpointSaver
from composer.core import State, Timestamp, TimeUnit
from composer.loggers import Logger, LoggerDestination, RemoteUploaderDownloader
from composer.utils import checkpoint as composer_checkpoint
from composer.utils import dist, parse_uri
from composer.utils.object_store import S3ObjectStore
from omegaconf import DictConfig

from recipes.durations import parse_time
from recipes.errors import UsageError

# Composer's default names (Trainer's save_filename and save_latest_filename), kept so its tools find them.
SAVE_FILENAME = "ep{epoch}-ba{batch}-rank{rank}.pt"
LATEST_FILENAME = "latest-rank{rank}.pt"
CHECKPOINT_NAME = re.compile(r"^ep(?P<epoch>\d+)-ba(?P<batch>\d+)-rank0\.pt$")
UNREADABLE_SUFFIX = ".unreadable"

# Uploads and resume downloads ride out throttling and short outages: botocore's standard mode retries
# throttling, 5xx and connection errors with jittered exponential backoff (up to 20 s a wait); 10 attempts instead
# of its 3. AWS_MAX_ATTEMPTS and AWS_RETRY_MODE still win, as botocore documents.
UPLOAD_RETRIES = {"mode": "standard", "total_max_attempts": 10}
UPLOAD_TIMEOUTS = {"connect_timeout": 10, "read_timeout": 120}
# The start-up check fails in seconds on a wrong endpoint instead of backing off for minutes.
PREFLIGHT_CLIENT_CONFIG = {
    "retries": {"mode": "standard", "total_max_attempts": 2},
    "connect_timeout": 5,
    "read_timeout": 15,
}


@dataclass(frozen=True)
class S3Destination:
    """An ``s3://bucket/prefix`` save_folder and the endpoint and region to reach it (None: the environment's)."""

    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region_name: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/" if self.prefix else f"s3://{self.bucket}/"

    def store_kwargs(self, client_config: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for Composer's ``S3ObjectStore``; object names are relative to the prefix."""
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint_url": self.endpoint_url,
            "region_name": self.region_name,
            # S3ObjectStore adds to the dict it is given.
            "client_config": copy.deepcopy(client_config),
        }

    def store(self, client_config: dict[str, Any]) -> S3ObjectStore:
        return S3ObjectStore(**self.store_kwargs(client_config))


@dataclass
class Checkpointing:
    """What train.py hands the Trainer: the saver, the uploader (S3 only), the checkpoint to resume from, and
    the lines to print at start (where checkpoints go, what is resumed)."""

    saver: CheckpointSaver
    loggers: list[LoggerDestination]
    load_path: str | None
    notes: list[str]


@dataclass(frozen=True)
class RunFolders:
    """Where a run writes: ``save`` is the save_folder with its run name filled in (a local folder or an s3://
    URI); ``output`` the local folder for checkpoint copies, the recipe, metrics, findings and the summary."""

    save: str
    output: Path


def run_folders(save_folder: str, run_name: str) -> RunFolders:
    """The run's folders: ``{run_name}`` filled in; an s3:// save_folder keeps its local copies in runs/<name>."""
    save = save_folder.replace("{run_name}", run_name)
    backend, _, _ = parse_uri(save)
    return RunFolders(save, Path("runs") / run_name if backend else Path(save))


def upload_client_config() -> dict[str, Any]:
    """botocore client settings for uploads and downloads (``UPLOAD_RETRIES``, overridable from the environment)."""
    retries: dict[str, Any] = dict(UPLOAD_RETRIES)
    if "AWS_MAX_ATTEMPTS" in os.environ:
        retries["total_max_attempts"] = int(os.environ["AWS_MAX_ATTEMPTS"])
    if "AWS_RETRY_MODE" in os.environ:
        retries["mode"] = os.environ["AWS_RETRY_MODE"]
    return {"retries": retries, **UPLOAD_TIMEOUTS}


def s3_destination(save_folder: str, endpoint_url: str | None, region: str | None) -> S3Destination | None:
    """The S3 destination of an ``s3://`` save_folder, None for a local folder.

    The URI is read by Composer's ``parse_uri``. Its ``maybe_create_object_store_from_uri`` is not used: it builds
    an ``S3ObjectStore`` without a prefix, endpoint, region or retry settings, all of which a run needs.
    """
    backend, bucket, path = parse_uri(save_folder)
    if not backend:
        return None
    if backend != "s3" or not bucket:
        raise UsageError(
            f"save_folder={save_folder} is not supported: use a local folder or s3://BUCKET/PREFIX "
            "(other object stores through their S3-compatible endpoint: s3_endpoint_url=URL)."
        )
    return S3Destination(bucket, path.strip("/"), endpoint_url, region)


def check_autoresume(config: DictConfig) -> None:
    """Autoresume finds a run again by its name, so the name must be fixed before any work starts."""
    if config.autoresume and not config.run_name:
        raise UsageError(
            "autoresume=true needs a fixed run_name: without one every launch invents a new name (recipe and "
            "start time) and finds nothing to resume. Add run_name=NAME (e.g. run_name=resnet50-imagenet) and "
            "use the same one on every relaunch."
        )


def write_atomically(
    write: Callable[[dict[str, Any], str], None], state_dict: dict[str, Any], filename: str
) -> None:
    """Run Composer's ``write`` into a hidden partial file beside ``filename``, flush it to disk, rename it."""
    final = Path(filename)
    # Same suffix as the final name: Composer picks compression (.tar, .pt.lz4, ...) from the extension.
    partial = final.with_name(f".partial-{final.name}")
    try:
        write(state_dict, str(partial))
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    folder = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)


class AtomicCheckpointSaver(CheckpointSaver):
    """Composer's ``CheckpointSaver`` whose checkpoint files appear only complete and flushed to disk.

    Composer has no hook for how the file is written, so each save swaps its module-level writer
    (``composer.utils.checkpoint._write_checkpoint_file``, looked up at call time) for ``write_atomically``
    around the call. The ``latest`` link and the upload then only ever see whole files.
    """

    def _save_checkpoint(self, state: State, logger: Logger) -> None:
        composer_write = composer_checkpoint._write_checkpoint_file
        composer_checkpoint._write_checkpoint_file = functools.partial(write_atomically, composer_write)
        try:
            super()._save_checkpoint(state, logger)
        finally:
            composer_checkpoint._write_checkpoint_file = composer_write


def _batch(name: str) -> int:
    match = CHECKPOINT_NAME.match(name)
    return int(match["batch"]) if match else -1


def local_checkpoints(folder: Path) -> set[str]:
    """Names of the checkpoint files directly in ``folder``."""
    if not folder.is_dir():
        return set()
    return {path.name for path in folder.iterdir() if CHECKPOINT_NAME.match(path.name) and path.is_file()}


def remote_checkpoints(store: S3ObjectStore) -> set[str]:
    """Names of the checkpoint objects directly under the store's prefix (``list_objects`` gives full keys)."""
    names = (key[len(store.prefix) :] for key in store.list_objects())
    return {name for name in names if CHECKPOINT_NAME.match(name)}


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a relaunch resumes from, chosen by global rank 0."""

    # The local copy, in the run's output folder (downloaded there when it came from S3).
    path: Path
    # Where it was found: that path, or the s3:// URI it was downloaded from.
    source: str
    # The training position it holds.
    timestamp: Timestamp
    # Whether the same object is under the S3 prefix, where every node can download it.
    in_store: bool
    # One line per newer checkpoint that did not load.
    skipped: list[str]


def saved_position(path: Path, run_name: str) -> Timestamp | str:
    """The training position saved in ``path``, or why it cannot be resumed from (a string); a checkpoint of
    another run is a usage error."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        saved_run = checkpoint["state"]["run_name"]
        timestamp = Timestamp()
        timestamp.load_state_dict(checkpoint["state"]["timestamp"]["Timestamp"])  # Composer keys it by class
    except Exception as error:  # truncation, bad pickles and missing keys all surface as assorted types
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__
    if saved_run != run_name:
        raise UsageError(
            f"{path.name} in this save_folder belongs to run '{saved_run}', not '{run_name}': two runs share the "
            f"folder. Put {{run_name}} in save_folder (the default runs/{{run_name}} does), or use "
            f"run_name={saved_run} to continue that run."
        )
    return timestamp


def choose_resume_checkpoint(
    local_folder: Path, store: S3ObjectStore | None, run_name: str
) -> ResumePoint | None:
    """The newest checkpoint that loads (None when there is none), with one line per newer one that did not.

    Candidates are every ``ep*-ba*-rank0.pt`` in the local folder and under the S3 prefix, newest batch first; a
    local copy is tried before the remote one. A remote checkpoint is downloaded into the local folder (where it
    stays as the local copy). An unreadable local file is renamed ``*.unreadable`` so that it stays for a look but
    neither blocks Composer's folder check nor is picked again.
    """
    local = local_checkpoints(local_folder)
    remote = remote_checkpoints(store) if store is not None else set()
    unreadable: list[tuple[str, str]] = []
    for name in sorted(local | remote, key=_batch, reverse=True):
        path = local_folder / name
        if name in local:
            position = saved_position(path, run_name)
            if isinstance(position, Timestamp):
                return ResumePoint(path, str(path), position, name in remote, _skipped(unreadable, str(path)))
            unreadable.append((str(path), position))
            path.rename(path.with_name(path.name + UNREADABLE_SUFFIX))
        if store is not None and name in remote:
            uri = store.get_uri(name)
            try:
                store.download_object(name, path, overwrite=True)
            except Exception as error:  # boto3 and s3transfer raise several types once retries are spent
                unreadable.append((uri, f"download failed: {error}"))
                continue
            position = saved_position(path, run_name)
            if isinstance(position, Timestamp):
                return ResumePoint(path, uri, position, True, _skipped(unreadable, uri))
            unreadable.append((uri, position))
            path.unlink()
    if unreadable:
        listing = "; ".join(f"{where} ({reason})" for where, reason in unreadable)
        raise UsageError(
            f"autoresume found checkpoints but none loads: {listing}. Restore a good copy, or delete them "
            "(or use a new run_name) to start over."
        )
    return None


def _skipped(unreadable: list[tuple[str, str]], chosen: str) -> list[str]:
    return [
        f"checkpoint {where} is unreadable ({reason}); resuming from the previous one {chosen}"
        for where, reason in unreadable
    ]


def preflight(destination: S3Destination) -> str:
    """Prove in seconds that checkpoints can be written under the prefix; return the endpoint used.

    Checks credentials and the bucket (HeadBucket), then writes one tiny object under the prefix through the same
    ``S3ObjectStore.upload_object`` the uploads use, and deletes it (best effort: checkpoints need no delete).
    """
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    store = destination.store(PREFLIGHT_CLIENT_CONFIG)
    endpoint = store.client.meta.endpoint_url
    probe = f".preflight-{uuid.uuid4().hex}"
    try:
        store.client.head_bucket(Bucket=destination.bucket)
        with tempfile.TemporaryDirectory() as folder:
            tiny = Path(folder) / "probe"
            tiny.write_bytes(b"mosaic-resnet50 preflight")
            store.upload_object(probe, tiny)
    except NoCredentialsError as error:
        raise UsageError(
            f"save_folder={destination.uri}: no AWS credentials found ({error}). Export AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or give the machine an instance role, then start again."
        ) from error
    except ClientError as error:
        raise UsageError(_explain_client_error(error, destination, endpoint)) from error
    except (BotoCoreError, OSError) as error:
        raise UsageError(
            f"save_folder={destination.uri}: cannot reach the S3 endpoint {endpoint} for bucket "
            f"'{destination.bucket}' ({error}). Check the network and s3_endpoint_url (or S3_ENDPOINT_URL / "
            "AWS_ENDPOINT_URL) for an S3-compatible store."
        ) from error
    except Exception as error:  # boto3's S3UploadFailedError wraps the PutObject ClientError in its message
        raise UsageError(
            f"save_folder={destination.uri}: cannot write into bucket '{destination.bucket}' at endpoint "
            f"{endpoint} ({error}). The credentials need s3:PutObject under the prefix (and s3:ListBucket on "
            "the bucket)."
        ) from error
    # A leftover probe is harmless, and checkpoints never need delete permission: best effort.
    with contextlib.suppress(BotoCoreError, ClientError):
        store.client.delete_object(Bucket=destination.bucket, Key=store.get_key(probe))
    return endpoint


def _explain_client_error(error: Any, destination: S3Destination, endpoint: str) -> str:
    """One message for an S3 error response: what went wrong with which bucket, and the fix."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    where = f"save_folder={destination.uri}: bucket '{destination.bucket}' at endpoint {endpoint}"
    if code in ("404", "NoSuchBucket"):
        return (
            f"save_folder={destination.uri}: bucket '{destination.bucket}' does not exist at endpoint {endpoint}. "
            f"Create it (aws s3 mb s3://{destination.bucket}) or fix save_folder; for an S3-compatible store set "
            "s3_endpoint_url (or AWS_ENDPOINT_URL)."
        )
    if code in (
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
    ):
        return (
            f"{where} refused the credentials ({code}). Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
            "AWS_SESSION_TOKEN or AWS_PROFILE: they must belong to an account allowed s3:ListBucket on the bucket "
            "and s3:PutObject under the prefix."
        )
    if code in (
        "301",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
    ):
        region = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
        return f"{where} is in another region{f' ({region})' if region else ''}: set s3_region (or AWS_DEFAULT_REGION)."
    return f"{where} failed the start-up check: {error}."


def build_checkpointing(config: DictConfig, run_name: str, folders: RunFolders) -> Checkpointing:
    """Check the destination, choose the checkpoint to resume from, and build Composer's saver and uploader.

    Global rank 0 does the checking, downloading and choosing; every rank gets its outcome, so under DDP all
    processes stop together with the same message or load the same file. On a run over several machines, every
    other machine then gets its own copy of that file (``copy_to_this_node``).
    """
    local_folder = folders.output
    destination = s3_destination(folders.save, config.s3_endpoint_url, config.s3_region)
    outcome: list[Any] = [None, None]
    if dist.get_global_rank() == 0:
        try:
            outcome[1] = _prepare(config, run_name, local_folder, destination)
        except UsageError as error:
            outcome[0] = str(error)
    dist.broadcast_object_list(outcome, src=0)
    error, plan = outcome
    if error:
        raise UsageError(error)
    load_path = plan.load_path
    if load_path is not None and dist.get_world_size() > dist.get_local_world_size():
        load_path = copy_to_this_node(load_path, plan.in_store, destination)

    saver = AtomicCheckpointSaver(
        folder=str(local_folder),
        filename=SAVE_FILENAME,
        remote_file_name=SAVE_FILENAME if destination else None,
        latest_filename=LATEST_FILENAME,
        latest_remote_file_name=LATEST_FILENAME if destination else None,
        save_interval=config.save_interval,
        overwrite=config.save_overwrite or plan.overwrite,
        num_checkpoints_to_keep=config.save_num_checkpoints_to_keep,
    )
    # Local copies from before the relaunch count towards the last K kept (Composer only counts its own saves).
    saver.saved_checkpoints = list(plan.kept)
    loggers: list[LoggerDestination] = []
    if destination is not None:
        # One upload at a time keeps the latest pointer behind its checkpoint (Composer requires it for
        # autoresume); threads, not spawned processes, since uploads wait on the network, not the CPU.
        loggers.append(
            RemoteUploaderDownloader(
                bucket_uri=f"s3://{destination.bucket}",
                backend_kwargs=destination.store_kwargs(upload_client_config()),
                num_concurrent_uploads=1,
                use_procs=False,
            )
        )
    return Checkpointing(saver=saver, loggers=loggers, load_path=load_path, notes=plan.notes)


@dataclass(frozen=True)
class ResumePlan:
    """Global rank 0's decisions, sent to every rank."""

    # The checkpoint to resume from on global rank 0's disk; None to start from the beginning.
    load_path: str | None
    # The lines to print at start.
    notes: list[str]
    # Whether the resumed run must overwrite newer (skipped, unreadable) checkpoints.
    overwrite: bool = False
    # Local checkpoints from before the relaunch, counted towards the last save_num_checkpoints_to_keep.
    kept: list[str] = field(default_factory=list)
    # Whether the checkpoint is also under the S3 prefix, where every machine can download it.
    in_store: bool = False


def copy_to_this_node(load_path: str, in_store: bool, destination: S3Destination | None) -> str:
    """The path this machine loads the chosen checkpoint from, downloaded onto its own disk when it is not the
    machine of global rank 0; a failure on any machine stops every rank with one message.

    Composer has each machine's local rank 0 read ``load_path`` from that machine's disk
    (composer/utils/checkpoint.py:761-771), where only global rank 0 chose and holds it. So the local rank 0 of
    every other machine downloads the same object from S3 into ``.resume-node<N>/`` beside rank 0's path: a
    folder of its own even where machines share a disk, where it keeps only this copy (no CheckpointSaver rotates
    it). A checkpoint that is not on S3 (a local save_folder, a failed upload) must be on a disk every machine
    mounts.
    """
    node, path, problem = dist.get_node_rank(), Path(load_path), None
    if node != 0 and in_store:
        path = path.parent / f".resume-node{node}" / path.name
    if node != 0 and dist.get_local_rank() == 0:
        problem = _download_for_node(Path(load_path), path, in_store, destination, node)
    problems = [problem for problem in dist.all_gather_object(problem) if problem]
    if problems:
        raise UsageError(problems[0])
    return str(path)


def _download_for_node(
    chosen: Path, copy: Path, in_store: bool, destination: S3Destination | None, node: int
) -> str | None:
    """Machine ``node``'s download of the chosen checkpoint into ``copy``; what went wrong, or None."""
    if destination is None or not in_store:
        if chosen.is_file():  # a folder all machines mount
            return None
        return (
            f"autoresume chose {chosen}, which is on the disk of machine 0 only (not under an s3:// save_folder): "
            f"machine {node} cannot load it. A run on several machines resumes from an s3:// save_folder "
            "(save_folder=s3://BUCKET/PREFIX/{run_name}) or a folder every machine mounts."
        )
    store = destination.store(upload_client_config())
    for old in copy.parent.glob("*.pt") if copy.parent.is_dir() else []:
        old.unlink()
    try:
        store.download_object(chosen.name, copy, overwrite=True)
    except Exception as error:  # boto3 and s3transfer raise several types once retries are spent
        return (
            f"machine {node} could not download the resume checkpoint {store.get_uri(chosen.name)} ({error}); "
            "check this machine's network and AWS credentials, then relaunch every machine."
        )
    return None


def _prepare(
    config: DictConfig, run_name: str, local_folder: Path, destination: S3Destination | None
) -> ResumePlan:
    """Rank 0's part: check the destination, choose the checkpoint, say what will happen."""
    keep = config.save_num_checkpoints_to_keep
    kept = "all" if keep < 0 else f"the last {keep}"
    store = None
    if destination is None:
        notes = [f"checkpoints: {local_folder}/ (keeps {kept})"]
    else:
        endpoint = preflight(destination)
        store = destination.store(upload_client_config())
        notes = [
            f"checkpoints: {local_folder}/ (keeps {kept}) and uploaded to {destination.uri} at {endpoint} "
            "(remote copies are never deleted)"
        ]
    if not config.autoresume:
        found = sorted(
            local_checkpoints(local_folder) | (remote_checkpoints(store) if store else set()), key=_batch
        )
        if found and not config.save_overwrite:
            where = destination.uri if destination else f"{local_folder}/"
            raise UsageError(
                f"{where} already holds checkpoints ({', '.join(found[-3:])}) and this run would collide with "
                "them. Continue that run with autoresume=true (and the same run_name), replace them with "
                "save_overwrite=true, or choose another run_name or save_folder."
            )
        return ResumePlan(None, notes)

    point = choose_resume_checkpoint(local_folder, store, run_name)
    if point is None:
        where = f"{local_folder}/" + (f" or {destination.uri}" if destination else "")
        return ResumePlan(
            None, [*notes, f"autoresume: no checkpoint in {where} yet; starting from the beginning"]
        )
    notes += [*point.skipped, f"resuming from {point.source} (batch {_batch(point.path.name)})"]
    if finished(point.timestamp, config.max_duration):
        notes.append(finished_note(config, run_name, point))
    older = sorted(
        (name for name in local_checkpoints(local_folder) if _batch(name) <= _batch(point.path.name)),
        key=_batch,
    )
    return ResumePlan(
        str(point.path),
        notes,
        bool(point.skipped),
        [str(local_folder / name) for name in older],
        point.in_store,
    )


def finished(timestamp: Timestamp, max_duration: object) -> bool:
    """Whether a run at ``timestamp`` has reached ``max_duration`` (Composer then ends ``fit`` at once)."""
    duration = parse_time(max_duration, "max_duration")
    if duration.unit not in (TimeUnit.EPOCH, TimeUnit.BATCH, TimeUnit.SAMPLE, TimeUnit.TOKEN):
        return False  # not a length Composer trains to; the recipe checks say so
    return timestamp.get(duration.unit) >= duration


def finished_note(config: DictConfig, run_name: str, point: ResumePoint) -> str:
    """The warning a launch of a finished run starts with: what it will do, and the override for a new run.

    A warning, not an error: the same command runs again after the end when a replaced spot machine's start-up
    script, a systemd unit or a person relaunches it, and a finished run must then end with status 0 (what
    scripts/run_until_done.sh and such loops stop on); the launch also writes a summary.json the run may lack
    if it was stopped during its final evaluation.
    """
    if "{run_name}" in config.save_folder:
        new_run = f"run_name={run_name}-2"
    else:
        new_run = f"save_folder=NEW_FOLDER (this save_folder holds run '{run_name}')"
    position = point.timestamp
    return (
        f"warning: run '{run_name}' already finished: its checkpoint {point.source} is at epoch "
        f"{int(position.epoch)}, batch {int(position.batch)}, the end of max_duration={config.max_duration}. This "
        "launch trains nothing: it loads the final weights, evaluates them and writes summary.json again. For a "
        f"new run, add {new_run}; to train this run further, raise max_duration."
    )
