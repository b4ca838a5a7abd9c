"""bench/stack_overhead.py: the generated set is what its docstring says (its quick run end to end is
tests/proof/test_benchmarks_run.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import Image

from bench.stack_overhead import SHAPE_IMAGES, SHAPE_SIZE, SHAPES, write_shapes

BENCH = Path(__file__).resolve().parent.parent / "bench" / "stack_overhead.py"


def test_generated_shapes_are_balanced_and_the_same_for_the_same_seed(tmp_path: Path) -> None:
    first = write_shapes(tmp_path / "a")
    counts = Counter(path.parent.name for path in (first / "val").glob("*/*.jpg"))
    assert counts == dict.fromkeys(SHAPES, SHAPE_IMAGES["val"])
    assert Image.open(next((first / "train" / "ring").iterdir())).size == (SHAPE_SIZE, SHAPE_SIZE)
    again, other = write_shapes(tmp_path / "b"), write_shapes(tmp_path / "c", seed=1)
    image = Path("train/star/0007.jpg")
    assert (first / image).read_bytes() == (again / image).read_bytes() != (other / image).read_bytes()
