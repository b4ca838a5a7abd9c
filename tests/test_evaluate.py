"""evaluate.py: a checkpoint alone is enough, its top-1 equals train.py's, EMA runs report both weight sets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

import evaluate
import train
from training.preflight import load_run_recipe
from training.weights import (
    build_model_for_checkpoint,
    extract_model_state,
    read_checkpoint,
    to_torchvision_state_dict,
)


def evaluate_to_json(tmp_path: Path, *args: str) -> dict[str, Any]:
    output = tmp_path / "eval.json"
    assert evaluate.main([*args, "--output", str(output)]) == 0
    return json.loads(output.read_text())


def test_evaluate_reproduces_train_top1(trained_run: dict[str, Any], tmp_path: Path) -> None:
    """The shared short run's metrics, to 1e-6: top-1 alone could agree by chance on a barely trained network, the
    loss cannot."""
    results = evaluate_to_json(tmp_path, "--checkpoint", str(trained_run["folder"] / "latest-rank0.pt"))
    for metric in ("val/acc1", "val/acc5", "val/loss"):
        assert results[metric] == pytest.approx(trained_run["summary"][metric], abs=1e-6), metric
    assert results["images"] == trained_run["summary"]["val_images"] == 360
    assert results["weights_reported"] == "model" and set(results["by_weights"]) == {"model"}


def test_smoke_weights_load_into_torchvision_resnet50(trained_run: dict[str, Any]) -> None:
    folder = trained_run["folder"]
    recipe = load_run_recipe(folder / "recipe.yaml")
    weights = extract_model_state(read_checkpoint(folder / "latest-rank0.pt"))
    network = torchvision.models.resnet50(num_classes=10)
    network.load_state_dict(to_torchvision_state_dict(weights, recipe), strict=True)
    ours = build_model_for_checkpoint(recipe, 10, weights)
    images = torch.randn(2, 3, 32, 32)
    network.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(network(images), ours.module(images))


def test_checkpoint_without_saved_recipe_asks_for_one(
    trained_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lone = tmp_path / "lone.pt"
    shutil.copy(trained_run["folder"] / "latest-rank0.pt", lone)
    assert evaluate.main(["--checkpoint", str(lone)]) == 2
    assert "--recipe" in capsys.readouterr().err


def test_missing_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(["--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_a_missing_checkpoint_lists_the_ones_its_run_holds_or_the_runs_beside_it(
    trained_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped checkpoint name, or the README's run folder when the run was named otherwise: the error says
    what there is to evaluate instead."""
    folder = trained_run["folder"]
    assert evaluate.main(["--checkpoint", str(folder / "ep9-ba1-rank0.pt")]) == 2
    error = capsys.readouterr().err
    assert f"Checkpoints in {folder}: " in error and "latest-rank0.pt" in error
    assert evaluate.main(["--checkpoint", str(folder.parent / "smoke-default" / "latest-rank0.pt")]) == 2
    assert f"runs in {folder.parent}: {folder.name}." in capsys.readouterr().err


def tiny_run(folder: Path, *overrides: str) -> dict[str, Any]:
    args = [
        "smoke", f"save_folder={folder}", "max_duration=3ba", "eval_interval=3ba", "save_interval=3ba",
        "global_batch_size=16", "data.num_workers=0", "logging.progress_bar=false", *overrides,
    ]  # fmt: skip
    assert train.main(args) == 0
    return json.loads((folder / "summary.json").read_text())


def test_ema_run_reports_ema_and_raw_weights(tmp_path: Path) -> None:
    summary = tiny_run(
        tmp_path / "run", "data.source=synthetic", "data.num_classes=10", "data.synthetic_train_samples=48",
        "data.synthetic_val_samples=20", "algorithms.ema.half_life=2ba",
    )  # fmt: skip
    assert summary["weights_evaluated"] == "ema"
    results = evaluate_to_json(tmp_path, "--checkpoint", str(tmp_path / "run" / "latest-rank0.pt"))
    assert results["weights_reported"] == "ema" and set(results["by_weights"]) == {"ema", "raw"}
    assert results["val/acc1"] == pytest.approx(summary["val/acc1"], abs=1e-6)
    assert results["by_weights"]["ema"]["val/loss"] != results["by_weights"]["raw"]["val/loss"]


def test_moved_image_folder_evaluates_with_data_path_override(
    trained_run: dict[str, Any], tmp_path: Path, digits_cache: Path
) -> None:
    # An ImageFolder that is not the bundled source: the digits JPEGs (written by the shared run) copied to a
    # folder of our own.
    written = next(p for p in digits_cache.iterdir() if (p / "train").is_dir())
    original = tmp_path / "images"
    shutil.copytree(written, original)
    summary = tiny_run(tmp_path / "run", "data.source=imagefolder", f"data.path={original}")
    moved = tmp_path / "moved"
    original.rename(moved)
    checkpoint = str(tmp_path / "run" / "latest-rank0.pt")
    results = evaluate_to_json(tmp_path, "--checkpoint", checkpoint, f"data.path={moved}")
    assert results["val/acc1"] == pytest.approx(summary["val/acc1"], abs=1e-6)
