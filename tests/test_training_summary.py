"""The run summary says what happened: a part of an epoch, the peak and the last learning rate, and the findings
the run folder records, read from the shared ten-batch smoke run (tests/conftest.py's ``trained_run``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import pytest

from callbacks.findings import read_findings
from training.summary import format_summary


def test_a_run_inside_its_first_epoch_reports_the_part_it_trained(trained_run: dict[str, Any]) -> None:
    summary = trained_run["summary"]
    # Ten batches of the digits' 44 per epoch: 0.227 of an epoch, not 0.
    assert (summary["steps"], summary["batches_per_epoch"]) == (10, 44)
    assert summary["epochs"] == pytest.approx(10 / 44, abs=1e-3)
    assert "epochs                      0.227 (10 steps of 44 per epoch)" in format_summary(summary)


def test_summary_findings_are_the_run_folders_record(trained_run: dict[str, Any]) -> None:
    """Ten batches inside a one-epoch warmup draw the recipe check's warning into findings.jsonl; the summary
    lists the same findings (it once listed only the doctor's, so this one was missing)."""
    folder, summary = trained_run["folder"], trained_run["summary"]
    recorded = read_findings(folder)
    assert "warmup_longer_than_run" in [finding.code for finding in recorded]
    assert summary["findings"] == [asdict(finding) for finding in recorded]
    assert f"{len(recorded)} warning(s) (findings.jsonl)" in format_summary(summary)


def test_summary_names_the_peak_and_the_last_learning_rate(trained_run: dict[str, Any]) -> None:
    """Stopped inside its warmup, the run never reached the schedule's peak: final_lr is the last LR logged in
    metrics.jsonl, below peak_lr."""
    folder, summary = trained_run["folder"], trained_run["summary"]
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    last_lr = [line["lr"] for line in lines if "lr" in line][-1]
    assert summary["final_lr"] == pytest.approx(last_lr)
    assert summary["final_lr"] < summary["peak_lr"] == pytest.approx(0.001)
    assert "lr" not in summary
    assert f"peak 0.001, final {last_lr:.4g}" in format_summary(summary)
