"""tools.ablate end to end on a short digits study: interrupted by SIGTERM, relaunched two at a time, a variant
stopped by the doctor, a retry; the table, the plots, and a resumed run bit-identical to one never interrupted."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

import train
from recipes.studies import load_study
from tests.test_tools_ablate import study_file
from tools import ablate
from tools.ablation_results import HELPS, HURTS, WITHIN_NOISE, run_folder

ROOT = Path(__file__).resolve().parents[2]


STUDY = """
description: CI version of the ablation tool's whole path
recipe: smoke
overrides:
  max_duration: 2ep
  model.name: resnet18
  data.subset_size: 64
  data.val_subset_size: 60
  data.cache_dir: {cache}
  logging.metrics_every_n_batches: 1
seeds: [0, 1]
output: {output}
variants:
  # An LR that overflows the weights: the doctor stops the run at the NaN.
  diverges: {{optimizer.base_lr: 1.0e+30}}
one_at_a_time:
  add: {{label_smoothing: {{smoothing: 0.1}}}}
"""


def launches(folder: Path) -> int:
    """How many times the study started this run's train.py."""
    log = folder / "train.log"
    return sum(line.startswith("$ ") for line in log.read_text().splitlines()) if log.is_file() else 0


def test_study_runs_survives_an_interruption_and_a_failing_variant(
    tmp_path: Path, digits_cache: Path, record_property: Any
) -> None:
    output = tmp_path / "study"
    path = study_file(tmp_path, STUDY.format(cache=digits_cache, output=output))
    study = load_study(path)
    command = [sys.executable, "-m", "tools.ablate", str(path)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}

    # First launch, stopped by SIGTERM while the second run trains.
    process = subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    second = run_folder(study, "base", 1)
    deadline = time.monotonic() + 300
    while not ((second / "metrics.jsonl").is_file() and (second / "metrics.jsonl").read_text().strip()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0].decode()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 75, process.communicate()[0].decode()
    assert json.loads((second / "ablate_status.json").read_text())["status"] == "interrupted"
    assert "| base | 1 | interrupted |" in (output / "results.md").read_text()

    # Relaunch, two at a time: the finished run is skipped, the interrupted one resumed, the diverging one failed.
    relaunch = subprocess.run(
        [*command, "--jobs", "2"], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert relaunch.returncode == 1, relaunch.stdout + relaunch.stderr
    assert launches(run_folder(study, "base", 0)) == 1
    assert launches(second) == 2
    rows = {row["variant"]: row for row in csv.DictReader((output / "results.csv").open())}
    assert rows["base"]["finished"] == rows["plus_label_smoothing"]["finished"] == "2"
    assert rows["diverges"]["finished"] == "0" and rows["diverges"]["verdict"] == "no finished runs"
    assert rows["plus_label_smoothing"]["verdict"] in (HELPS, HURTS, WITHIN_NOISE)
    report = (output / "results.md").read_text()
    failed_log = run_folder(study, "diverges", 0) / "train.log"
    assert "| diverges | 0 | failed | stopped by the training doctor" in report and str(failed_log) in report
    results = json.loads((output / "results.json").read_text())
    assert {run["status"] for run in results["runs"] if run["variant"] != "diverges"} == {"done"}
    record_property(
        "figure",
        f"ablation study (2 seeds, 2 epochs): plus_label_smoothing {rows['plus_label_smoothing']['verdict']}; "
        "diverges failed, stopped by the doctor; the interrupted run resumed bit-identically",
    )
    for plot in ("accuracy_vs_time.png", "validation_curves.png"):
        assert Image.open(output / plot).size[0] > 400

    # The resumed run is the run that was never interrupted: the same final weights, bit for bit.
    uninterrupted = tmp_path / "uninterrupted"
    overrides = [
        item for item in ablate.run_overrides(study, study.variants[0], 1) if "save_folder" not in item
    ]
    assert train.main(["smoke", *overrides, f"save_folder={uninterrupted}"]) == 0
    digest = json.loads((uninterrupted / "summary.json").read_text())["parameters_sha256_by_rank"]
    assert json.loads((second / "summary.json").read_text())["parameters_sha256_by_rank"] == digest

    # A further relaunch retries only the failed runs, keeping their first attempt's folder.
    retry = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    assert retry.returncode == 1
    assert (run_folder(study, "diverges", 0).with_name("seed0.failed-1") / "train.log").is_file()
    assert json.loads((run_folder(study, "diverges", 0) / "ablate_status.json").read_text())["attempts"] == 2
    assert launches(second) == 2
