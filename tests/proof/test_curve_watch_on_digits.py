"""The curve watch on the CPU, end to end: the smoke recipe's own finished run is the reference; a second run of the
same recipe (another seed) stays inside the band, and one with a learning rate 1000 times too low is flagged and
stopped with a checkpoint and exit status 4 (issue 25)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import train
from callbacks.curve_watch import CURVE_WATCH_PLOT, OUTSIDE_BAND, REFERENCE_ACC1, WATCH_STOPPED_EXIT_STATUS
from callbacks.findings import read_findings
from tests.test_train import read_jsonl

SMOKE_BASE_LR = 0.008
# Stop a run 20 points under the reference at two evaluations in a row (after the default grace, 25 %).
STOP_BELOW = 20


def watched_run(folder: Path, cache: Path, reference: Path, *overrides: str) -> int:
    """The smoke recipe as shipped, watched against ``reference``."""
    return train.main(
        ["recipes/smoke.yaml", f"save_folder={folder}", f"data.cache_dir={cache}", "logging.progress_bar=false",
         f"watch.reference={reference}", f"watch.stop_below={STOP_BELOW}", *overrides]
    )  # fmt: skip


def watch_codes(folder: Path) -> list[str]:
    return [finding.code for finding in read_findings(folder) if finding.source == "curve_watch"]


def gaps(folder: Path) -> list[tuple[int, float, float]]:
    """(step, val/acc1, the reference's) at each compared evaluation, from metrics.jsonl."""
    lines = read_jsonl(folder / "metrics.jsonl")
    accuracy = {line["step"]: line["val/acc1"] for line in lines if "val/acc1" in line}
    return [
        (line["step"], accuracy[line["step"]], line[REFERENCE_ACC1])
        for line in lines
        if REFERENCE_ACC1 in line
    ]


def test_the_watch_leaves_a_healthy_rerun_alone_and_stops_a_broken_learning_rate(
    smoke_run: dict[str, Any], tmp_path: Path, digits_cache: Path, record_property: Any
) -> None:
    reference = smoke_run["folder"]

    healthy = tmp_path / "healthy"
    assert watched_run(healthy, digits_cache, reference, "run_name=healthy", "seed=18") == 0
    healthy_gaps = gaps(healthy)
    assert len(healthy_gaps) == 10  # every evaluation compared, at the same fraction as the reference's
    assert watch_codes(healthy) == []
    outside = [line[OUTSIDE_BAND] for line in read_jsonl(healthy / "metrics.jsonl") if OUTSIDE_BAND in line]
    assert all(abs(count) < 2 for count in outside), outside
    assert (healthy / CURVE_WATCH_PLOT).is_file()

    broken = tmp_path / "broken"
    status = watched_run(
        broken, digits_cache, reference, "run_name=broken", f"optimizer.base_lr={SMOKE_BASE_LR / 1000}"
    )
    assert status == WATCH_STOPPED_EXIT_STATUS
    assert watch_codes(broken) == ["below_reference_curve", "stopped_below_reference_curve"]
    summary = json.loads((broken / "summary.json").read_text())
    # Judged from epoch 3 of 10 (the grace is 25 %): under at epochs 3 and 4, stopped at 4 with its checkpoint.
    assert summary["epochs"] == 4
    assert (broken / "latest-rank0.pt").resolve().name == f"ep4-ba{summary['steps']}-rank0.pt"
    broken_gaps = gaps(broken)
    assert all(100 * (ref - acc1) >= STOP_BELOW for _, acc1, ref in broken_gaps[2:])

    largest = max(100 * abs(ref - acc1) for _, acc1, ref in healthy_gaps[2:])
    record_property(
        "figure",
        f"curve watch: a healthy rerun (seed 18) at most {largest:.1f} points from the smoke reference after the "
        f"grace, no finding; LR / 1000 stopped at epoch {summary['epochs']} "
        f"({100 * broken_gaps[-1][1]:.1f} % against {100 * broken_gaps[-1][2]:.1f} %), exit status {status}",
    )
