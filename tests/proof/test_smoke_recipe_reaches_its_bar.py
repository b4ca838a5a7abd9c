"""The smoke recipe as shipped, trained exactly as `make train` trains it, reaches its bar on the digits; the doctor
stays silent on it; evaluate.py reproduces its accuracy from the checkpoint alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import evaluate
from callbacks.findings import read_findings
from tests.test_train import SMOKE_ACCURACY_BAR, read_jsonl


def test_smoke_recipe_learns_on_digits(smoke_run: dict[str, Any], record_property: Any) -> None:
    summary = smoke_run["summary"]
    record_property(
        "figure",
        f"smoke recipe: val top-1 {summary['val/acc1']:.4f} (bar {SMOKE_ACCURACY_BAR}) in {summary['steps']} "
        f"steps, {summary['wall_time_s']:.0f} s",
    )
    assert summary["val/acc1"] >= SMOKE_ACCURACY_BAR, summary
    assert summary["val/acc5"] >= summary["val/acc1"]
    lines = read_jsonl(smoke_run["folder"] / "metrics.jsonl")
    train_losses = [line["train/loss"] for line in lines if line["phase"] == "train"]
    evaluations = [line for line in lines if line["phase"] == "eval"]
    assert len(evaluations) == 10 and train_losses[-1] < train_losses[0]  # one evaluation an epoch


def test_the_doctor_finds_nothing_wrong_with_a_healthy_run(smoke_run: dict[str, Any]) -> None:
    assert smoke_run["summary"]["doctor_findings"] == 0 and smoke_run["summary"]["findings"] == []
    assert [finding for finding in read_findings(smoke_run["folder"]) if finding.source == "doctor"] == []


def test_evaluate_reproduces_the_trained_accuracy(smoke_run: dict[str, Any], tmp_path: Path) -> None:
    output = tmp_path / "eval.json"
    assert (
        evaluate.main(["--checkpoint", str(smoke_run["folder"] / "latest-rank0.pt"), "--output", str(output)])
        == 0
    )
    assert json.loads(output.read_text())["val/acc1"] == pytest.approx(
        smoke_run["summary"]["val/acc1"], abs=1e-6
    )
