"""Two machines, simulated on one: two Composer launchers as node 0 and node 1 of one run over loopback.

Each "node" is ``composer --world_size 2 --nproc 1 --node_rank N --master_addr 127.0.0.1 --master_port P train.py``
started in its own working directory and with its own /dev/shm, so neither sees the other's disk: its local checkpoint copies
(``runs/<run_name>``), data cache and logs are its own, and the only place both reach is the save_folder on S3
(moto's server on loopback, tests/conftest.py). A SIGTERM to node 1's training process stops both ranks at the
same batch (callbacks.preemption), rank 0 saves and uploads the checkpoint, and both nodes are relaunched on fresh
disks, as replaced spot machines would be: every node must get the checkpoint from S3, and the run must end with
the parameters of a two-node run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest

from bench.streaming import OWN_SHARED_MEMORY, free_port
from callbacks.metrics_file import last_logged_step
from callbacks.preemption import PREEMPTED_EXIT_STATUS
from tests.test_ddp import COMPOSER, launcher_environment

pytestmark = pytest.mark.usefixtures("aws_env")  # dummy credentials, nothing from ~/.aws

REPO = Path(__file__).resolve().parents[2]
RUN_NAME = "two-nodes"
NODES = 2
# Two epochs of 8 steps, a global batch of 4 (2 images per node) of 32 px synthetic images, on resnet18.
BATCH, STEPS_PER_EPOCH, EPOCHS = 4, 8, 2
# Per launch of both nodes on 2 busy cores: ~15 s to start, ~0.2 s a step.
LAUNCH_TIMEOUT_S = 300


# The generated images both sources train on: synthetic draws them, streaming reads them as MDS shards.
SYNTHETIC = [
    "data.source=synthetic", "data.num_classes=10", f"data.synthetic_train_samples={BATCH * STEPS_PER_EPOCH}",
    "data.synthetic_val_samples=8", "data.train_resolution=32", "data.eval_resolution=32",
]  # fmt: skip


def tiny_recipe(save_folder: str, endpoint: str, node: Path, *extra: str) -> list[str]:
    """The smoke recipe shrunk to seconds, deterministic, with momentum-free SGD and one scheduled checkpoint (at
    the end) so that uploads stay small; the data cache on the node's own disk; a rank stuck in a collective
    fails after 2 minutes. ``{node}`` in ``extra`` is the node's folder."""
    return [
        "smoke", "device=cpu", "model.name=resnet18", "optimizer.name=decoupled_sgdw", "optimizer.momentum=0",
        "deterministic=true", *SYNTHETIC, "data.num_workers=0", f"data.cache_dir={node}/cache",
        f"global_batch_size={BATCH}", f"eval_batch_size={BATCH}", f"max_duration={EPOCHS}ep",
        f"eval_interval={EPOCHS}ep", f"save_interval={EPOCHS}ep", f"save_folder={save_folder}",
        f"s3_endpoint_url={endpoint}", f"run_name={RUN_NAME}", "logging.progress_bar=false",
        "logging.metrics_every_n_batches=1", "dist_timeout=120", *(item.format(node=node) for item in extra),
    ]  # fmt: skip


def launch_nodes(base: Path, save_folder: str, endpoint: str, *extra: str) -> list[subprocess.Popen]:
    """Both nodes' launchers, each in ``base``/node<N> (its working directory and disk), on one loopback port."""
    port = free_port()
    # One core each: two processes on 2 cores.
    environment = {**launcher_environment(), "OMP_NUM_THREADS": "1"}
    launchers = []
    for node_rank in range(NODES):
        node = base / f"node{node_rank}"
        node.mkdir(parents=True)
        command = [
            *OWN_SHARED_MEMORY, str(COMPOSER), "--world_size", str(NODES), "--nproc", "1", "--node_rank", str(node_rank),
            "--master_addr", "127.0.0.1", "--master_port", str(port),
            str(REPO / "train.py"), *tiny_recipe(save_folder, endpoint, node, *extra),
        ]  # fmt: skip
        # Its own session, so a timeout can stop the launcher and its rank together.
        with (node / "launcher.log").open("wb") as log:
            launchers.append(
                subprocess.Popen(
                    command,
                    cwd=node,
                    env=environment,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return launchers


def finish(launchers: list[subprocess.Popen], base: Path) -> list[int]:
    """Every launcher's exit status; on a timeout, both nodes are killed and the test fails with their output."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        return [launcher.wait(timeout=max(1.0, deadline - time.monotonic())) for launcher in launchers]
    except subprocess.TimeoutExpired:
        for launcher in launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
        pytest.fail(f"the nodes did not finish in {LAUNCH_TIMEOUT_S} s:\n{node_logs(base)}")


def node_logs(base: Path) -> str:
    """The end of each node's output (its one rank prints through the launcher), for failure messages."""
    return "\n".join(
        f"--- {path.relative_to(base)}\n{path.read_text(errors='replace')[-3000:]}"
        for path in sorted(base.glob("node*/launcher.log"))
    )


def run_folder(base: Path, node_rank: int) -> Path:
    return base / f"node{node_rank}" / "runs" / RUN_NAME


def summary(base: Path) -> dict:
    """Rank 0's summary.json, on node 0's disk."""
    return json.loads((run_folder(base, 0) / "summary.json").read_text())


def logged_step(base: Path) -> int:
    """The last training step rank 0 logged."""
    return last_logged_step(run_folder(base, 0) / "metrics.jsonl")


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"two-nodes-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def streamed_shards(s3_endpoint: str, bucket: str) -> list[str]:
    """The generated images as MDS shards of ~5 images on S3 (scripts/convert_to_mds.py), read by data.source=
    streaming into each node's own cache."""
    script = [sys.executable, str(REPO / "scripts/convert_to_mds.py"), "smoke", *SYNTHETIC, "--out",
              f"s3://{bucket}/mds", "--endpoint-url", s3_endpoint, "--shard-size", "16kb", "--workers", "1"]  # fmt: skip
    subprocess.run(script, check=True, capture_output=True, timeout=LAUNCH_TIMEOUT_S)
    return ["data.source=streaming", f"data.remote=s3://{bucket}/mds", "data.local={node}/mds"]


def fetched(base: Path, node_rank: int, split: str) -> set[str]:
    """The shards a node downloaded: what its cache holds (no cache limit, so nothing was evicted)."""
    cache = base / f"node{node_rank}" / "mds" / split
    return {str(path.relative_to(cache)) for path in cache.rglob("shard.*.mds")}


@pytest.mark.parametrize("source", ["synthetic", "streaming"])
def test_two_nodes_preempted_and_relaunched_on_fresh_disks_end_as_if_never_stopped(
    s3_endpoint: str, bucket: str, tmp_path: Path, source: str, record_property: Any
) -> None:
    data = streamed_shards(s3_endpoint, bucket) if source == "streaming" else []
    reference = tmp_path / "uninterrupted"
    statuses = finish(
        launch_nodes(reference, f"s3://{bucket}/uninterrupted/{{run_name}}", s3_endpoint, *data), reference
    )
    assert statuses == [0, 0], node_logs(reference)
    expected = summary(reference)
    assert expected["world_size"] == NODES and expected["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert len(set(expected["parameters_sha256_by_rank"])) == 1
    if source == "streaming":  # each node downloaded its own partition's shards, together all of them
        index = boto3.client("s3", endpoint_url=s3_endpoint).get_object(
            Bucket=bucket, Key="mds/train/index.json"
        )
        shards = len(json.loads(index["Body"].read())["shards"])
        node_shards = [fetched(reference, rank, "train") for rank in range(NODES)]
        assert shards >= 6 and all(len(mine) <= shards // 2 + 1 for mine in node_shards), (
            shards,
            node_shards,
        )
        assert len(node_shards[0] | node_shards[1]) == shards

    save_folder = f"s3://{bucket}/preempted/{{run_name}}"
    first = tmp_path / "first"
    launchers = launch_nodes(first, save_folder, s3_endpoint, *data)
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while logged_step(first) < 3:  # mid-way through the first epoch
        assert all(launcher.poll() is None for launcher in launchers), node_logs(first)
        assert time.monotonic() < deadline, node_logs(first)
        time.sleep(0.02)
    # Node 1's training process, as the spot notice reaches it; node 0 only learns through the all-reduce.
    (rank_one,) = psutil.Process(launchers[1].pid).children()
    rank_one.send_signal(signal.SIGTERM)
    assert finish(launchers, first) == [PREEMPTED_EXIT_STATUS] * NODES, node_logs(first)
    preempted = [line for line in node_logs(first).splitlines() if line.startswith("preempted at epoch")]
    assert preempted, node_logs(first)
    checkpoint = preempted[0].split("checkpoint saved to ")[1].split(";")[0]
    assert checkpoint.startswith(f"s3://{bucket}/preempted/{RUN_NAME}/ep")

    second = tmp_path / "second"  # new machines: nothing of the first launch on either disk
    statuses = finish(launch_nodes(second, save_folder, s3_endpoint, "autoresume=true", *data), second)
    assert statuses == [0, 0], node_logs(second)
    assert f"resuming from {checkpoint}" in (second / "node0" / "launcher.log").read_text()
    resumed = summary(second)
    assert resumed["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert resumed["parameters_sha256_by_rank"] == expected["parameters_sha256_by_rank"]
    record_property(
        "figure",
        f"two nodes ({source} data), SIGTERM to node 1, relaunched on fresh disks: parameters sha256 "
        f"{resumed['parameters_sha256_by_rank'][0][:12]} on both ranks, the uninterrupted run's",
    )
