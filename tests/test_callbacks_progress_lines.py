"""Progress in a log file: plain lines, one per progress step, instead of Composer's redrawn bar."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import train
from tests.test_train import tiny_synthetic_overrides

TRAIN_LINE = re.compile(r"train epoch (\d+) batch (\d+)/(\d+) step (\d+) loss (\d+\.\d+)")


def test_a_run_logged_to_a_file_prints_one_plain_line_per_step(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Two epochs of two batches with the bar asked for, the console captured to files (not a terminal): no
    carriage return, one line per batch with its epoch, batch and loss (the loss the metrics file has), and one
    per evaluation."""
    overrides = [
        *tiny_synthetic_overrides(tmp_path),
        "logging.progress_bar=true",
        "logging.metrics_every_n_batches=1",
        "max_duration=4ba",
        "save_interval=4ba",
        "model.name=resnet18",
    ]
    assert train.main(["smoke", *overrides]) == 0
    captured = capfd.readouterr()
    assert "\r" not in captured.out + captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith(("train epoch", "val epoch"))]
    assert [line.split(" step ")[0] for line in lines] == [
        "train epoch 1 batch 1/2",
        "train epoch 1 batch 2/2",
        "val epoch 1",
        "train epoch 2 batch 1/2",
        "train epoch 2 batch 2/2",
        "val epoch 2",
    ]
    logged = {
        line["step"]: line["train/loss"]
        for line in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
        if line["phase"] == "train"
    }
    printed = {int(m[4]): float(m[5]) for m in map(TRAIN_LINE.fullmatch, lines) if m}
    assert printed == pytest.approx({step: round(logged[step], 4) for step in (1, 2, 3, 4)}, abs=1e-4)
    assert re.fullmatch(r"val epoch 2 step 4 acc1 \d\.\d{4} acc5 \d\.\d{4} loss \d+\.\d{4}", lines[-1])
