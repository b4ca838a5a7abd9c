"""The LR range test (``train.py --find-lr``): the JSON and plot, stopping on divergence, ``--apply``, the
base_lr <-> LR conversion. That its suggestion is a sane LR is tests/proof/test_lr_range_test_on_digits.py's claim."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from composer.optim import DecoupledAdamW

import train
from tests.test_train import tiny_synthetic_overrides
from tools.lr_range_curve import MINIMUM_ITERATIONS, LossCurve, RangeTestSettings, analyse
from tools.lr_range_test import RangeTestRecorder, RangeTestResult, plot_marks, plot_range_test
from training.optimization import base_lr_for, scale_learning_rate
from training.preflight import load_run_recipe

SMOKE_RECIPE = Path("recipes/smoke.yaml")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def short_range_test(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``train.py smoke --find-lr --apply`` with the shortest sweep, on a few synthetic images: what the command
    writes. Whether its suggestion is a sane LR is tests/proof/test_lr_range_test_on_digits.py's claim."""
    folder = tmp_path_factory.mktemp("lr-range") / "run"
    original = SMOKE_RECIPE.read_text()
    status = train.main(
        [str(SMOKE_RECIPE), *tiny_synthetic_overrides(folder), "--find-lr", "--apply", "--iterations",
         str(MINIMUM_ITERATIONS)]
    )  # fmt: skip
    assert status == 0
    result = json.loads((folder / "lr_range_test.json").read_text())
    return {"folder": folder, "result": result, "original": original}


def test_writes_the_curve_as_json_and_a_real_png(short_range_test: dict[str, Any]) -> None:
    result = short_range_test["result"]
    steps = result["steps"]
    assert len(steps) == result["steps_run"] and result["stop_reason"]
    lrs = [step["lr"] for step in steps]
    assert lrs[0] == pytest.approx(result["settings"]["min_lr"]) and lrs == sorted(lrs)
    assert all({"loss", "smoothed_loss"} <= set(step) for step in steps)
    # Stopped early only if it stopped before its last iteration; diverged only if the stop reason says so.
    assert result["stopped_early"] == (result["steps_run"] < result["settings"]["iterations"])
    assert result["diverged"] == result["stop_reason"].startswith(("diverged", "the loss became"))
    # The recipe's own LR (the peak its run would apply) is in the JSON beside the suggestions.
    assert result["recipe_lr"] == pytest.approx(scale_learning_rate(result["recipe_base_lr"], 8, "linear").lr)
    header = (short_range_test["folder"] / "lr_range_test.png").read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", header[16:24])
    assert width >= 600 and height >= 400


def test_plot_marks_the_recipe_lr_and_says_diverged_only_when_it_did(tmp_path: Path) -> None:
    """A synthetic valley that never diverges, plotted: the recipe's LR is one of the marks and the title has no
    'diverged' (the smoke sweep's title once said "diverged at LR 1" while its plot showed no divergence)."""
    settings = RangeTestSettings(1e-6, 1.0, 40)
    curve = LossCurve(settings)
    for step in range(settings.iterations):
        curve.record(settings.min_lr * settings.multiplier(step), 1.0 + 0.05 * (step - 25) ** 2 / 25)
    result = RangeTestResult(
        recipe_path="recipes/smoke.yaml", output_folder=tmp_path, optimizer_name="decoupled_adamw",
        global_batch_size=32, lr_scaling="linear", recipe_base_lr=0.008, recipe_lr=0.001, algorithms_used=[],
        algorithms_left_out={}, curve=curve, analysis=analyse(curve, 32, "linear"), wall_time_s=0.0,
    )  # fmt: skip
    recipe_marks = [label for label, lr, *_ in plot_marks(result) if lr == 0.001]
    assert recipe_marks and "base_lr 0.008" in recipe_marks[0]
    assert not curve.diverged and "diverged" not in curve.stop_reason.replace("without diverging", "")
    assert "diverged" not in curve.headline and "did not diverge up to LR 1" in curve.headline
    assert plot_range_test(result, tmp_path / "plot.png").read_bytes()[:8] == PNG_SIGNATURE


def test_apply_writes_a_loadable_copy_and_leaves_the_original(short_range_test: dict[str, Any]) -> None:
    applied = load_run_recipe(short_range_test["folder"] / "smoke-suggested-lr.yaml")
    assert applied.optimizer.base_lr == short_range_test["result"]["suggestions"]["moderate"]["base_lr"]
    # The copy is the recipe as swept: command-line overrides included, everything else the recipe's.
    assert applied.data.source == "synthetic" and applied.global_batch_size == 8
    original = load_run_recipe(SMOKE_RECIPE)
    assert (
        applied.optimizer.name == original.optimizer.name
        and applied.data.crop_scale == original.data.crop_scale
    )
    assert applied.scheduler == original.scheduler
    assert SMOKE_RECIPE.read_text() == short_range_test["original"]


def test_sweep_stops_when_the_loss_diverges(tmp_path: Path) -> None:
    iterations = 40
    status = train.main(
        ["smoke", *tiny_synthetic_overrides(tmp_path), "--find-lr", "--min-lr", "1e-3", "--max-lr", "1e6",
         "--iterations", str(iterations)]
    )  # fmt: skip
    assert status == 0
    result = json.loads((tmp_path / "lr_range_test.json").read_text())
    assert result["stopped_early"] and result["steps_run"] < iterations, result["stop_reason"]


def test_algorithms_that_corrupt_the_reading_are_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """g4dn_xlarge trains with EMA and data-side progressive resizing; the sweep runs without them, and says so."""
    status = train.main(
        ["g4dn_xlarge", *tiny_synthetic_overrides(tmp_path), "--find-lr", "--iterations", "20"]
    )
    assert status == 0
    result = json.loads((tmp_path / "lr_range_test.json").read_text())
    assert set(result["algorithms_left_out"]) == {"ema", "data_progressive_resizing"}
    assert result["algorithms_used"] and not {"ema", "data_progressive_resizing"} & set(
        result["algorithms_used"]
    )
    assert "left out algorithm ema" in capsys.readouterr().out


def test_weight_decay_keeps_the_recipe_strength_across_the_sweep() -> None:
    """Composer scales decoupled weight decay by lr / initial_lr; the recorder pins initial_lr so a 1e4x sweep
    does not decay 1e4x harder (with a zero gradient, one step scales the weights by exactly 1 - weight_decay)."""
    weights = torch.nn.Parameter(torch.ones(4))
    optimizer = DecoupledAdamW([weights], lr=1e-4, weight_decay=1e-3)
    settings = RangeTestSettings(min_lr=1e-4, max_lr=1.0, iterations=MINIMUM_ITERATIONS)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.multiplier)
    for _ in range(settings.iterations - 1):
        scheduler.step()
    RangeTestRecorder(settings).batch_start(SimpleNamespace(optimizers=[optimizer]), logger=None)
    weights.grad = torch.zeros(4)
    optimizer.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)
    assert torch.allclose(weights.detach(), torch.full((4,), 1 - 1e-3))


@pytest.mark.parametrize("rule", ["linear", "sqrt", "none"])
@pytest.mark.parametrize("batch", [32, 256, 1024])
def test_base_lr_and_lr_round_trip(rule: str, batch: int) -> None:
    assert base_lr_for(scale_learning_rate(0.123, batch, rule).lr, batch, rule) == pytest.approx(0.123)


def test_base_lr_inverts_each_rule() -> None:
    assert base_lr_for(0.4, 1024, "linear") == pytest.approx(0.1)
    assert base_lr_for(0.2, 1024, "sqrt") == pytest.approx(0.1)
    assert base_lr_for(0.1, 1024, "none") == pytest.approx(0.1)


def test_range_test_flags_need_find_lr(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        train.main(["smoke", "--apply"])
    assert stop.value.code == 2 and "add --find-lr" in capsys.readouterr().err
