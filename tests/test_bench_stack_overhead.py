"""bench/stack_overhead.py: its quick version times both trainers and trains both on both data sets, and the
generated set is what its docstring says."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bench.stack_overhead import SHAPE_IMAGES, SHAPE_SIZE, SHAPES, write_shapes

BENCH = Path(__file__).resolve().parent.parent / "bench" / "stack_overhead.py"


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("bench") / "stack_overhead.json"
    finished = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--output", str(output)], capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return {"report": json.loads(output.read_text()), "stdout": finished.stdout}


def test_quick_bench_reports_time_per_step_for_both_and_the_ratio(quick_report: dict[str, Any]) -> None:
    timing = quick_report["report"]["timing"]
    assert timing["ours_s_per_step"] > 0 and timing["bare_s_per_step"] > 0
    assert timing["ratio"] == pytest.approx(timing["ours_s_per_step"] / timing["bare_s_per_step"], abs=1e-3)
    assert len(timing["ours_steps_s"]) == len(timing["bare_steps_s"]) == timing["steps"]
    assert "ratio" in quick_report["stdout"] and "target <= 1.03" in quick_report["stdout"]


def test_quick_bench_trains_both_stacks_alike_on_both_data_sets(quick_report: dict[str, Any]) -> None:
    report = quick_report["report"]
    assert set(report["accuracy"]) == {"digits", "shapes"}
    for result in report["accuracy"].values():
        assert 0 <= result["bare_acc1"] <= result["ours_acc1"] <= 1
        assert result["same_losses"] is True and result["steps"] > 0
    assert report["ours_not_lower"] is True
    assert "digits" in quick_report["stdout"] and "shapes" in quick_report["stdout"]


def test_generated_shapes_are_balanced_and_the_same_for_the_same_seed(tmp_path: Path) -> None:
    first = write_shapes(tmp_path / "a")
    counts = Counter(path.parent.name for path in (first / "val").glob("*/*.jpg"))
    assert counts == dict.fromkeys(SHAPES, SHAPE_IMAGES["val"])
    assert Image.open(next((first / "train" / "ring").iterdir())).size == (SHAPE_SIZE, SHAPE_SIZE)
    again, other = write_shapes(tmp_path / "b"), write_shapes(tmp_path / "c", seed=1)
    image = Path("train/star/0007.jpg")
    assert (first / image).read_bytes() == (again / image).read_bytes() != (other / image).read_bytes()
