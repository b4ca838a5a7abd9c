"""MoCo v3 pretraining is worth its compute: on the digits at 32 px, the linear probe of a pretrained backbone beats
the same probe of a randomly initialised backbone (the MoCo model moco_v3_smoke builds, seeded alike, never
trained), and the k-NN monitor climbs above its step-0 reading while pretraining.

Both recipes run as written (ResNet-50, batch 64, LARS at the official per-256 LR, the probe's SGD); only the
durations are cut, to fit the suite: two epochs of pretraining instead of four, four epochs of probing instead of
ten. Measured on the 2-core machine with exactly this configuration (docs/self-supervised.md):

    seed   probe top-1: pretrained  random init  margin   k-NN top-1: step 0  after 2 epochs  rise
    0                   0.475        0.119        0.356               0.328   0.581           0.253
    1                   0.444        0.156        0.289               0.322   0.536           0.214
    2                   0.481        0.111        0.369               0.344   0.619           0.275

The asserted margins are about half the smallest measured ones (0.289 and 0.214).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from composer.utils import reproducibility

import train
from callbacks.knn_monitor import KNN_ACC1
from model import build_moco_model
from recipes.loading import load_recipe

SEED = 0
PRETRAIN_EPOCHS, PROBE_EPOCHS = 2, 4
# Measured over seeds 0-2 (module docstring); each margin is about half the smallest measured one.
PROBE_MARGIN = 0.15
KNN_RISE = 0.10


def summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text())


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory: pytest.TempPathFactory, digits_cache: Path) -> Path:
    """moco_v3_smoke as written, for two epochs."""
    folder = tmp_path_factory.mktemp("pretraining") / "run"
    status = train.main(
        ["moco_v3_smoke", f"seed={SEED}", f"max_duration={PRETRAIN_EPOCHS}ep", f"save_interval={PRETRAIN_EPOCHS}ep",
         f"data.cache_dir={digits_cache}", f"save_folder={folder}", "run_name=pays", "logging.progress_bar=false"]
    )  # fmt: skip
    assert status == 0
    return folder


@pytest.fixture(scope="module")
def random_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MoCo v3 model moco_v3_smoke builds, as initialised and never trained (its state dict)."""
    config = load_recipe("moco_v3_smoke", [f"seed={SEED}"])
    reproducibility.seed_all(SEED)
    path = tmp_path_factory.mktemp("random") / "moco-init.pt"
    torch.save(build_moco_model(config.model, config.moco, device="cpu").state_dict(), path)
    return path


def probe(folder: Path, backbone: Path, digits_cache: Path) -> float:
    """linear_probe_smoke as written on ``backbone``, for four epochs; its validation top-1."""
    status = train.main(
        ["linear_probe_smoke", f"seed={SEED}", f"model.backbone_checkpoint={backbone}",
         f"max_duration={PROBE_EPOCHS}ep", f"save_interval={PROBE_EPOCHS}ep", f"data.cache_dir={digits_cache}",
         f"save_folder={folder}", "run_name=probe", "logging.progress_bar=false"]
    )  # fmt: skip
    assert status == 0
    return summary(folder)["val/acc1"]


def test_probing_the_pretrained_backbone_beats_probing_its_random_init(
    pretraining: Path, random_backbone: Path, digits_cache: Path, tmp_path: Path, record_property: Any
) -> None:
    (checkpoint,) = pretraining.glob("ep*-ba*-rank0.pt")
    pretrained = probe(tmp_path / "pretrained", checkpoint, digits_cache)
    random = probe(tmp_path / "random", random_backbone, digits_cache)
    record_property(
        "figure",
        f"MoCo v3 pretraining ({PRETRAIN_EPOCHS} epochs): linear probe top-1 {pretrained:.3f} against {random:.3f} "
        f"on a random backbone (margin {pretrained - random:.3f}, bar {PROBE_MARGIN})",
    )
    assert pretrained >= random + PROBE_MARGIN, (pretrained, random)


def test_the_knn_monitor_climbs_above_its_step_0_reading(pretraining: Path, record_property: Any) -> None:
    lines = [json.loads(line) for line in (pretraining / "metrics.jsonl").read_text().splitlines()]
    readings = {line["step"]: line[KNN_ACC1] for line in lines if KNN_ACC1 in line}
    steps = sorted(readings)
    record_property(
        "figure",
        f"k-NN monitor during pretraining: top-1 {readings[steps[0]]:.3f} at step 0, {readings[steps[-1]]:.3f} at "
        f"step {steps[-1]} (rise bar {KNN_RISE})",
    )
    assert steps[0] == 0 and len(steps) == PRETRAIN_EPOCHS + 1, steps  # step 0, then each epoch's end
    assert readings[steps[-1]] >= readings[0] + KNN_RISE, readings


def test_the_doctor_stays_silent_and_the_summary_reports_the_last_knn_reading(pretraining: Path) -> None:
    """The healthy smoke pretraining: no doctor finding, and summary.json carries the k-NN reading, not the
    classifier's training accuracy a pretraining run does not have."""
    run = summary(pretraining)
    assert run["doctor_findings"] == 0 and run["findings"] == []
    lines = [json.loads(line) for line in (pretraining / "metrics.jsonl").read_text().splitlines()]
    last = [line[KNN_ACC1] for line in lines if KNN_ACC1 in line][-1]
    assert run[KNN_ACC1] == last and "train/acc1" not in run
