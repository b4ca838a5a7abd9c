"""bench/gpu_check.py (`make gpu-check`) on a CPU: every step runs in its CPU-sized version and the run it
preempts resumes and finishes, so the command a GPU machine is proved with keeps working in CI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.gpu_check import fsdp_run

REPOSITORY = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_its_cpu_version_end_to_end(tmp_path: Path) -> None:
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
