"""The benchmarks run end to end at their smallest, on the CPU, and print their ratios: `make gpu-check`'s CPU
version (every step, the recipe run preempted and resumed, the FSDP command refused without CUDA),
bench/streaming.py (MDS stream against the folder, each simulated node's share) and bench/stack_overhead.py --quick
(train.py against a plain Composer script, whole processes on both data sets; our trainer against a bare one per
step; both trained alike)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.gpu_check import fsdp_run

REPOSITORY = Path(__file__).resolve().parents[2]
BENCH = REPOSITORY / "bench"


def test_gpu_check_runs_its_cpu_version_end_to_end(tmp_path: Path, record_property: Any) -> None:
    output = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--output", str(output), "--work", str(tmp_path / "work")],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "needs a GPU for real figures" in result.stdout
    report = json.loads(output.read_text())
    run = report["recipe_run"]
    assert run["preempted_status"] == 75 and run["relaunch_status"] == 0 and run["resumed"], run
    assert run["steps"] == 16 and run["ok"]
    assert 0 < run["preempted_after_step"] < 16
    record_property(
        "figure",
        f"make gpu-check on the CPU: the recipe run preempted after step {run['preempted_after_step']}, resumed "
        f"and finished its {run['steps']} steps",
    )
    assert "fp32" in report["throughput"]["modes"] and report["environment"]["gpus"] == 0
    assert "skipped" in report["fsdp_run"] and "FSDP" in result.stdout


def test_the_fsdp_run_is_a_valid_command_that_a_cpu_refuses(tmp_path: Path) -> None:
    """Its overrides load (a wrong key would fail differently) and, without CUDA, the runtime's refusal is reported.

    Not the exit status itself: Composer's launcher returns the first non-zero code in rank order
    (composer/cli/launcher.py _aggregate_process_returncode), 2 when rank 0 refused first, 1 or -15 when rank 1
    refused first and the launcher stopped rank 0; it prints each failed rank's output either way.
    """
    run = fsdp_run(tmp_path, gpus=2)
    assert run["status"] != 0 and not run["ok"], run
    assert "parallelism.strategy=fsdp needs CUDA GPUs" in run["log_tail"], run


def test_small_bench_reports_the_ratio_and_each_nodes_share(tmp_path: Path, record_property: Any) -> None:
    output = tmp_path / "streaming.json"
    command = [
        sys.executable,
        str(BENCH / "streaming.py"),
        "--images",
        "96",
        "--rounds",
        "1",
        "--resolutions",
        "128",
    ]
    finished = subprocess.run([*command, "--output", str(output)], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    report = json.loads(output.read_text())
    row = report["per_worker_img_s"]["128"]
    assert (
        row["ratio"] == round(row["streaming"] / row["folder"], 2)
        and f"{row['ratio']:.2f}x" in finished.stdout
    )
    record_property(
        "figure",
        f"bench/streaming.py (96 images, 128 px): MDS stream {row['ratio']:.2f}x the folder's images/s per worker",
    )
    nodes = report["nodes"]
    assert nodes["dataset_shards"] >= 3  # 96 photos of ~60 KB in 2 MB shards
    per_node = nodes["per_node"]
    assert sum(node["samples"] for node in per_node) == 96  # the epoch split between them, nothing read twice
    for (
        node
    ) in per_node:  # its half of the samples, and of the shards only those that hold them (plus a straddler)
        assert node["shards"] <= nodes["dataset_shards"] // 2 + 1 and node["bytes"] < nodes["dataset_bytes"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("bench") / "stack_overhead.json"
    finished = subprocess.run(
        [sys.executable, str(BENCH / "stack_overhead.py"), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return {"report": json.loads(output.read_text()), "stdout": finished.stdout}


def test_quick_bench_times_whole_processes_on_both_data_sets(
    quick_report: dict[str, Any], record_property: Any
) -> None:
    """Each side is a process timed launch to exit (so longer than its own training clock), with its top-1."""
    whole = quick_report["report"]["whole_run"]
    assert set(whole) == {"digits", "photos"}
    for result in whole.values():
        (run,) = result["runs"]
        for side in ("ours", "plain"):
            steps = 6  # two epochs of three batches
            assert run[f"{side}_s"] > run[f"{side}_s_per_step"] * steps > 0
            assert 0 <= run[f"{side}_acc1"] <= 1
        assert result["ratio"] == pytest.approx(run["ours_s"] / run["plain_s"], abs=1e-3)
    digits = whole["digits"]
    record_property(
        "figure",
        f"bench/stack_overhead.py --quick: train.py {digits['ours_s']:.1f} s launch to exit against a plain Composer "
        f"script's {digits['plain_s']:.1f} s on the digits (ratio {digits['ratio']:.2f})",
    )
    stdout = quick_report["stdout"]
    assert "whole run" in stdout and "target ratio <= 1.03" in stdout and "photos" in stdout


def test_quick_bench_reports_time_per_step_for_both_and_the_ratio(quick_report: dict[str, Any]) -> None:
    timing = quick_report["report"]["timing"]
    assert timing["ours_s_per_step"] > 0 and timing["bare_s_per_step"] > 0
    assert timing["ratio"] == pytest.approx(timing["ours_s_per_step"] / timing["bare_s_per_step"], abs=1e-3)
    assert len(timing["ours_steps_s"]) == len(timing["bare_steps_s"]) == timing["steps"]
    assert "per step" in quick_report["stdout"]


def test_quick_bench_trains_both_stacks_alike_on_both_data_sets(quick_report: dict[str, Any]) -> None:
    report = quick_report["report"]
    assert set(report["training"]) == {"digits", "photos"}
    for result in report["training"].values():
        assert 0 <= result["bare_acc1"] <= result["ours_acc1"] <= 1
        assert result["same_losses"] is True and result["steps"] > 0
    assert report["same_training"] is True
