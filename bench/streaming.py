"""Benchmark MDS shards read through MosaicML Streaming against the fast ImageFolder path on the same images.

    python bench/streaming.py [--output FILE] [--images N] [--rounds R] [--nodes K] [--resolutions PX ...]

On the ImageNet-like JPEGs of ``bench/data_pipeline.py`` (500x375, quality 90), written once as MDS shards by
``scripts/convert_to_mds.py`` into a local folder (the remote Streaming copies from, as it would from S3):

* images/s per worker, training transform (RandomResizedCrop + flip, fast decode) at 224, 160 and 128 px:
  ``data.source=imagefolder`` read by index (the baseline) and ``data.source=streaming`` iterated as a DataLoader
  worker iterates it, both in one process with one thread, passes alternating, best of ``--rounds``; the ratio is
  streaming over folder. The first streaming pass, which copies the shards into ``data.local``, is timed apart
  ("cold"). Both must deliver the same multiset of labels.
* the bytes each of ``--nodes`` simulated nodes downloads for one epoch: one process per node, in turn, with
  the launcher's environment (``WORLD_SIZE=K``, ``RANK``, ``LOCAL_WORLD_SIZE=1``), a cache folder and a /dev/shm
  of its own (a mount namespace: run as root, as in CI, or the node part is skipped with the reason).
  Streaming assigns each node its own partition of the samples and fetches only the shards that hold them, so the
  share should be about 1/K of the shards (a shard that straddles two partitions goes to both).
* the same stream re-encoded by the converter with the short side at 256 px (quality 90): its bytes against the
  originals', and images/s per worker against the original shards at each resolution.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

REPOSITORY = Path(__file__).resolve().parent.parent
# Run as a script, this folder is first on sys.path and this file would shadow the ``streaming`` package.
sys.path[:] = [str(REPOSITORY)] + [
    entry for entry in sys.path if Path(entry or ".").resolve() != REPOSITORY / "bench"
]

from bench.data_pipeline import generate_images, our_dataset, timed_pass  # noqa: E402
from data import build_data  # noqa: E402
from recipes.schema import RecipeConfig  # noqa: E402

RESOLUTIONS = (224, 160, 128)
# scripts/convert_to_mds.py --short-side: the size the low-resolution phases could stream instead of the originals.
REENCODED_SIDE = 256
CONVERTER = REPOSITORY / "scripts" / "convert_to_mds.py"


def convert(root: Path, out: Path, scratch: Path, *extra: str) -> None:
    """The generated folder as MDS shards under ``out`` (2 MB shards: ~16 for 512 images, so a
    node's share shows as it would over ImageNet's ~2,200 shards of 64 MB)."""
    command = [
        sys.executable, str(CONVERTER), "smoke", "data.source=imagefolder", f"data.path={root}",
        f"data.cache_dir={scratch}", "data.index_cache=false", "--out", str(out), "--shard-size", "2mb",
        "--group-size", "100000", "--workers", "1", "--verify", "0", *extra,
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def streaming_config(remote: Path, local: Path, resolution: int, batch: int = 8) -> Any:
    """The recipe of a streaming run over ``remote`` (the fast pipeline, no workers: this process is the worker)."""
    data = {"source": "streaming", "remote": str(remote), "local": str(local), "pipeline": "fast"}
    data |= {"num_workers": 0, "train_resolution": resolution, "eval_resolution": resolution}
    return OmegaConf.merge(OmegaConf.structured(RecipeConfig), {"global_batch_size": batch, "data": data})


def streamed_dataset(remote: Path, local: Path, resolution: int) -> torch.utils.data.IterableDataset:
    return build_data(streaming_config(remote, local, resolution)).train.dataloader.dataset


def stream_pass(dataset: torch.utils.data.IterableDataset) -> tuple[float, Counter]:
    """One epoch of the stream as a worker iterates it: images per second and the labels it delivered."""
    labels: Counter = Counter()
    started = time.perf_counter()
    for _, label in dataset:
        labels[int(label)] += 1
    return sum(labels.values()) / (time.perf_counter() - started), labels


def folder_bytes(folder: Path, pattern: str = "*.mds") -> int:
    return sum(path.stat().st_size for path in folder.rglob(pattern))


def node_main(remote: Path, local: Path) -> int:
    """One simulated node (the launcher's environment is set by the caller): read one epoch, report what it got."""
    torch.set_num_threads(1)
    dataset = streamed_dataset(remote, local, 64)
    _, labels = stream_pass(dataset)
    report = {
        "samples": sum(labels.values()),
        "bytes": folder_bytes(local),
        "shards": len(list(local.rglob("*.mds"))),
    }
    print(json.dumps(report))
    return 0


# Each simulated node gets its own /dev/shm, as separate machines have: Streaming names its shared memory after the
# first free prefix, which two nodes on one /dev/shm would both take. A mount namespace with a fresh tmpfs (needs
# root or CAP_SYS_ADMIN); ``unshare`` execs the command in place.
OWN_SHARED_MEMORY = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"', "node"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shared_memory_namespace_refused() -> str | None:
    """Why a simulated node cannot get its own /dev/shm here, or None when it can."""
    probe = subprocess.run([*OWN_SHARED_MEMORY, "true"], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    return f"a mount namespace for a private /dev/shm was refused ({probe.stderr.strip()}); run as root"


def simulated_nodes(remote: Path, scratch: Path, nodes: int) -> list[dict[str, Any]]:
    """All nodes at once, each a process with its own rank, cache folder and /dev/shm, as ``composer --node_rank``
    starts them (Streaming joins them in a process group over loopback to agree on the partition)."""
    port = str(free_port())
    launched = []
    for node in range(nodes):
        environment = dict(
            os.environ, WORLD_SIZE=str(nodes), RANK=str(node), LOCAL_RANK="0", NODE_RANK=str(node)
        )
        environment |= {"LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        environment["CUDA_VISIBLE_DEVICES"] = ""
        local = scratch / f"node{node}-cache"
        command = [*OWN_SHARED_MEMORY, sys.executable, __file__, "--as-node", "--remote", str(remote)]
        command += ["--local", str(local)]
        # Output to files, not pipes: a node blocked on a full pipe would hold the other at their collectives.
        log = (scratch / f"node{node}.log").open("w")
        launched.append(
            (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=environment), log)
        )
    reports = []
    for node, (process, log) in enumerate(launched):
        status = process.wait(timeout=900)
        log.close()
        output = (scratch / f"node{node}.log").read_text()
        if status != 0:
            raise SystemExit(f"simulated node {node} failed (status {status}):\n{output[-3000:]}")
        line = next(line for line in reversed(output.splitlines()) if line.startswith("{"))
        reports.append({"node": node, **json.loads(line)})
    return reports


def measure(images: int, rounds: int, nodes: int, resolutions: list[int], scratch: Path) -> dict[str, Any]:
    root = scratch / "images"
    print(f"Generating {images} ImageNet-like JPEGs and converting them to MDS ...", flush=True)
    generate_images(root, images)
    remote = scratch / "mds"
    convert(root, remote, scratch / "cache")
    total = folder_bytes(remote / "train")  # what a node streams; validation is read by index, apart
    small = scratch / f"mds-{REENCODED_SIDE}"
    convert(root, small, scratch / "cache", "--short-side", str(REENCODED_SIDE))
    results: dict[str, Any] = {"per_worker_img_s": {}}
    results["reencoded"] = {
        "short_side": REENCODED_SIDE,
        "bytes_ratio": round(folder_bytes(small / "train") / total, 3),
    }
    print(
        f"{'px':>5}{'folder img/s':>14}{'streaming':>11}{'ratio':>8}{'cold (copy)':>13}{f'short {REENCODED_SIDE}':>11}{'ratio':>7}"
    )
    for resolution in resolutions:
        folder = our_dataset(root, "train", resolution, scratch / "cache")
        stream = streamed_dataset(remote, scratch / f"local-{resolution}", resolution)
        smaller = streamed_dataset(small, scratch / f"local-{REENCODED_SIDE}-{resolution}", resolution)
        cold, _ = stream_pass(stream)  # copies the shards into data.local
        stream_pass(smaller)
        best_folder = best_stream = best_small = 0.0
        for _ in range(rounds):
            rate, labels, _ = timed_pass(folder)
            folder_labels = Counter(int(label) for label in labels)
            best_folder = max(best_folder, rate)
            rate, stream_labels = stream_pass(stream)
            best_stream = max(best_stream, rate)
            best_small = max(best_small, stream_pass(smaller)[0])
        if folder_labels != stream_labels:
            raise SystemExit(f"{resolution}px: the stream delivered other labels than the folder holds")
        row = {"folder": round(best_folder, 1), "streaming": round(best_stream, 1)}
        row |= {"ratio": round(best_stream / best_folder, 2), "streaming_cold": round(cold, 1)}
        row |= {f"streaming_short_{REENCODED_SIDE}": round(best_small, 1)}
        row |= {"reencoded_over_original": round(best_small / best_stream, 2)}
        results["per_worker_img_s"][str(resolution)] = row
        print(
            f"{resolution:>5}{row['folder']:>14.0f}{row['streaming']:>11.0f}{row['ratio']:>7.2f}x{cold:>13.0f}"
            f"{best_small:>11.0f}{row['reencoded_over_original']:>6.2f}x"
        )
    print(
        f"re-encoded with the short side at {REENCODED_SIDE} px: {results['reencoded']['bytes_ratio']:.0%} of the bytes"
    )

    shards = len(list((remote / "train").rglob("*.mds")))
    results["nodes"] = {"count": nodes, "dataset_bytes": total, "dataset_shards": shards}
    reason = shared_memory_namespace_refused()
    if reason:
        results["nodes"]["skipped"] = reason
        print(f"simulated nodes skipped: {reason}")
    else:
        reports = simulated_nodes(remote, scratch, nodes)
        for report in reports:
            report["share_of_bytes"] = round(report["bytes"] / total, 3)
            print(
                f"node {report['node']}: {report['samples']} samples, {report['shards']} of {shards} shards, "
                f"{report['bytes'] / 2**20:.1f} MiB = {report['share_of_bytes']:.0%} of the training split",
                flush=True,
            )
        results["nodes"]["per_node"] = reports
    results["setup"] = {
        "images": images,
        "rounds": rounds,
        "threads": 1,
        "torch": torch.__version__,
        "streaming": __import__("streaming").__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--images", type=int, default=512, help="generated JPEGs (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating passes per setting; best counts")
    parser.add_argument(
        "--nodes", type=int, default=2, help="simulated nodes for the download share (default 2)"
    )
    parser.add_argument(
        "--resolutions", type=int, nargs="+", default=list(RESOLUTIONS), help="(default 224 160 128)"
    )
    parser.add_argument("--as-node", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--remote", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--local", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.as_node:
        return node_main(args.remote, args.local)
    torch.set_num_threads(1)  # a DataLoader worker runs with one thread
    with tempfile.TemporaryDirectory() as scratch:
        results = measure(args.images, args.rounds, args.nodes, args.resolutions, Path(scratch))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
