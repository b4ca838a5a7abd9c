"""bench/photo_patches.py, the unseen real-image set bench/stack_overhead.py times on: validation patches come from
regions of each photograph that no training patch touches, and the set is balanced and the same for the same seed
(the bench's quick run end to end is tests/proof/test_benchmarks_run.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.photo_patches import GRID, PATCH_SIZE, PHOTOS, patch_boxes, split_tiles, write_photo_patches


def overlaps(first: tuple[int, int, int, int], second: tuple[int, int, int, int]) -> bool:
    """Whether two (left, top, right, bottom) boxes share a pixel."""
    return first[0] < second[2] and second[0] < first[2] and first[1] < second[3] and second[1] < first[3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_validation_patch_shares_a_pixel_with_a_training_patch(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tiles = split_tiles(rng)
    assert (
        sorted(row for row, _ in tiles["val"])
        == sorted(column for _, column in tiles["val"])
        == list(range(GRID))
    )
    train = patch_boxes(300, 451, tiles["train"], 300, rng)  # the smallest photograph (the cat)
    val = patch_boxes(300, 451, tiles["val"], 100, rng)
    assert all(box[2] <= 451 and box[3] <= 300 for box in train + val)
    assert not any(overlaps(a, b) for a in val for b in train)


def test_the_set_is_balanced_and_the_same_for_the_same_seed(tmp_path: Path) -> None:
    per_class = {"train": 3, "val": 2}
    first = write_photo_patches(tmp_path / "a", per_class=per_class)
    counts = Counter(path.parent.name for path in (first / "val").glob("*/*.jpg"))
    assert counts == dict.fromkeys(PHOTOS, 2)
    assert Image.open(next((first / "train" / "cat").iterdir())).size == (PATCH_SIZE, PATCH_SIZE)
    again = write_photo_patches(tmp_path / "b", per_class=per_class)
    other = write_photo_patches(tmp_path / "c", seed=1, per_class=per_class)
    image = Path("train/rocket/0002.jpg")
    assert (first / image).read_bytes() == (again / image).read_bytes() != (other / image).read_bytes()
