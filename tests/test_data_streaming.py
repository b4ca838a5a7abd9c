"""``data.source: streaming``: the digits as MDS shards read back through ``build_data`` like the folder they came
from, a stream that resumes at the next sample with the same augmentations, and clear errors for a corrupt shard,
a missing bucket and shards written without this project's index metadata.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
import torch
from omegaconf import OmegaConf

from data import build_data
from recipes.errors import UsageError
from recipes.schema import RecipeConfig

BATCH = 16


def recipe(digits_cache: Path, **data: object):
    """The smoke recipe's data settings (32 px, its crops), loading in one worker, small batches."""
    settings = {
        "cache_dir": str(digits_cache),
        "num_workers": 1,
        "train_resolution": 32,
        "eval_resolution": 32,
    }
    return OmegaConf.merge(
        OmegaConf.structured(RecipeConfig),
        {"global_batch_size": BATCH, "eval_batch_size": 64, "data": {**settings, **data}},
    )


def streaming(digits_cache: Path, remote: Path | str, local: Path, **data: object):
    return recipe(digits_cache, source="streaming", remote=str(remote), local=str(local), **data)


def batches(loader, count: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for images, labels in loader:
        out.append((images.clone(), labels.clone()))
        if count is not None and len(out) == count:
            break
    return out


def test_streamed_validation_is_the_folder_validation_batch_for_batch(
    digits_mds: Path, digits_cache: Path, tmp_path: Path
) -> None:
    folder = build_data(recipe(digits_cache))
    shards = build_data(streaming(digits_cache, digits_mds, tmp_path / "cache"))
    assert shards.class_names == folder.class_names and shards.num_classes == 10
    assert (shards.train_size, shards.val_size) == (folder.train_size, folder.val_size) == (1437, 360)
    expected, got = batches(folder.val.dataloader), batches(shards.val.dataloader)
    assert len(got) == len(expected) == 6
    for (images, labels), (want_images, want_labels) in zip(got, expected, strict=True):
        assert torch.equal(labels, want_labels) and torch.equal(images, want_images)


def test_resumed_stream_continues_with_the_batches_an_uninterrupted_one_draws(
    digits_mds: Path, digits_cache: Path, tmp_path: Path
) -> None:
    """What Composer does on resume: the checkpoint holds ``state_dict(samples seen, True)``, a new process loads
    it into a fresh dataset, and the next epoch pass starts there (no spinning)."""
    uninterrupted = build_data(streaming(digits_cache, digits_mds, tmp_path / "a")).train.dataloader
    reference = batches(uninterrupted, 12)
    state = uninterrupted.dataset.state_dict(5 * BATCH, True)
    assert state["epoch"] == 0 and state["sample_in_epoch"] == 5 * BATCH

    relaunched = build_data(streaming(digits_cache, digits_mds, tmp_path / "b")).train.dataloader
    relaunched.dataset.load_state_dict(state)
    resumed = batches(relaunched, 7)
    for (images, labels), (want_images, want_labels) in zip(resumed, reference[5:], strict=True):
        assert torch.equal(labels, want_labels) and torch.equal(images, want_images)
    # ... and a shuffled, augmented stream: another seed gives other batches.
    other = build_data(streaming(digits_cache, digits_mds, tmp_path / "c", streaming={"shuffle_seed": 1}))
    assert not torch.equal(batches(other.train.dataloader, 1)[0][1], reference[0][1])


def test_corrupt_shard_stops_the_run_naming_it(digits_mds: Path, digits_cache: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    for split in ("train", "val"):
        (remote / split).mkdir(parents=True)
        for path in (digits_mds / split).rglob("*"):
            target = remote / split / path.relative_to(digits_mds / split)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_file():
                target.write_bytes(path.read_bytes())
    shard = remote / "val/group-00000/shard.00000.mds"
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0xFF  # one flipped byte inside an image
    shard.write_bytes(bytes(content))
    bundle = build_data(streaming(digits_cache, remote, tmp_path / "cache"))
    with pytest.raises(UsageError, match=r"group-00000/shard\.00000\.mds") as error:
        batches(bundle.val.dataloader)
    assert "Checksum failure" in str(error.value) and "autoresume=true" in str(error.value)


def test_missing_bucket_is_named(s3_endpoint: str, digits_cache: Path, tmp_path: Path, aws_env: None) -> None:
    config = streaming(digits_cache, "s3://no-such-bucket/digits", tmp_path / "cache")
    config.s3_endpoint_url = s3_endpoint
    with pytest.raises(UsageError, match="no-such-bucket/digits/val"):
        build_data(config)


def upload(s3_endpoint: str, folder: Path) -> str:
    """``folder`` copied to a new bucket of the loopback S3 server, as ``s3://bucket/digits``."""
    bucket = f"shards-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    for path in folder.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"digits/{path.relative_to(folder)}")
    return bucket


def test_a_run_killed_with_sigkill_does_not_block_the_next_on_the_same_cache(
    digits_mds: Path, digits_cache: Path, tmp_path: Path
) -> None:
    """SIGKILL (out of memory, a spot instance's hard stop) leaves Streaming's shared memory and its lock files
    behind; the relaunch on the same data.local starts and streams the whole split from the cache."""
    local = tmp_path / "cache"
    victim = (
        "import os, signal, sys; from streaming import StreamingDataset; "
        "next(iter(StreamingDataset(remote=sys.argv[1], local=sys.argv[2], batch_size=4))); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    killed = subprocess.run([sys.executable, "-c", victim, str(digits_mds / "train"), str(local / "train")])
    assert killed.returncode == -signal.SIGKILL and list((local / "train").rglob("*.mds"))
    stream = build_data(streaming(digits_cache, digits_mds, local)).train.dataloader.dataset
    assert sum(1 for _ in stream) == 1437


def test_shards_from_s3_through_the_recipe_endpoint(
    s3_endpoint: str, digits_mds: Path, digits_cache: Path, tmp_path: Path, aws_env: None
) -> None:
    bucket = upload(s3_endpoint, digits_mds)
    config = streaming(digits_cache, f"s3://{bucket}/digits", tmp_path / "cache")
    config.s3_endpoint_url = s3_endpoint
    bundle = build_data(config)
    images, labels = next(iter(bundle.train.dataloader))
    assert images.shape == (BATCH, 3, 32, 32) and labels.max() < 10
    assert sorted(path.name for path in (tmp_path / "cache/val").iterdir()) == [
        "index.json"
    ]  # nothing read yet


def test_shards_without_class_names_are_refused(digits_mds: Path, digits_cache: Path, tmp_path: Path) -> None:
    remote = tmp_path / "foreign"
    for split in ("train", "val"):
        index = json.loads((digits_mds / split / "index.json").read_text())
        index.pop("mosaic_resnet50")
        (remote / split).mkdir(parents=True)
        (remote / split / "index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match=r"has no class names.*convert_to_mds"):
        build_data(streaming(digits_cache, remote, tmp_path / "cache"))


def test_subset_keys_are_refused_with_the_converter_as_the_fix(
    digits_mds: Path, digits_cache: Path, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match=r"data\.subset_size.*convert the subset"):
        build_data(streaming(digits_cache, digits_mds, tmp_path / "cache", subset_size="tiny"))
