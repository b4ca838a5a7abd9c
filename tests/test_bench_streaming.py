"""bench/streaming.py at its smallest: the stream delivers the folder's labels, the ratio is printed, and each of
two simulated nodes downloads only part of the training split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "streaming.py"


def test_small_bench_reports_the_ratio_and_each_nodes_share(tmp_path: Path) -> None:
    output = tmp_path / "streaming.json"
    command = [sys.executable, str(BENCH), "--images", "96", "--rounds", "1", "--resolutions", "128"]
    finished = subprocess.run([*command, "--output", str(output)], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    report = json.loads(output.read_text())
    row = report["per_worker_img_s"]["128"]
    assert (
        row["ratio"] == round(row["streaming"] / row["folder"], 2)
        and f"{row['ratio']:.2f}x" in finished.stdout
    )
    nodes = report["nodes"]
    assert nodes["dataset_shards"] >= 3  # 96 photos of ~60 KB in 2 MB shards
    per_node = nodes["per_node"]
    assert sum(node["samples"] for node in per_node) == 96  # the epoch split between them, nothing read twice
    for (
        node
    ) in per_node:  # its half of the samples, and of the shards only those that hold them (plus a straddler)
        assert node["shards"] <= nodes["dataset_shards"] // 2 + 1 and node["bytes"] < nodes["dataset_bytes"]
