"""A real-image set no recipe was tuned on: 32-px patches of ten photographs, one class per photograph.

    python bench/photo_patches.py DIR [--seed N]

The photographs ship with the libraries, so nothing is downloaded: eight from scikit-image's ``skimage.data``
(the ``bench`` extra: ``pip install -e .[bench]``) and the two scikit-learn bundles. Each is cut into a 4 x 4
grid of tiles; four tiles, one in each row and each column (a seeded permutation), are the validation tiles and
the other twelve the training tiles, and every patch lies inside one tile, so no validation pixel is ever seen
in training. A patch is a random square of 24 px to the whole tile's short side, so the same object shows at
several sizes, resized to 32 px and saved as a JPEG: ``DIR/train/<photo>/*.jpg`` (300 per class, 3,000) and
``DIR/val/<photo>/*.jpg`` (100 per class, 1,000), an ImageFolder for ``data.source=imagefolder data.path=DIR``.

It is hard on purpose, as real data is: many patches are sky, wall, skin or black space that several photographs
share, so top-1 stays well below 1.0. The same seed writes the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

PATCH_SIZE = 32
SMALLEST_PATCH = 24
GRID = 4
PATCHES = {"train": 300, "val": 100}  # per class: 3,000 / 1,000 in all
JPEG_QUALITY = 90


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data  # the bench extra; imported only when the set is written

        image = getattr(data, name)()
        return image[0] if name == "stereo_motorcycle" else image  # the left view of the stereo pair

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


# Class name to a loader of the RGB photograph (H, W, 3 uint8).
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "cat": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "galaxies": _skimage("hubble_deep_field"),
    "tissue": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "temple": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
}


def split_tiles(rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
    """The grid's (row, column) tiles per split: validation one per row and column, training the rest."""
    columns = rng.permutation(GRID)
    val = [(row, int(columns[row])) for row in range(GRID)]
    train = [(row, column) for row in range(GRID) for column in range(GRID) if (row, column) not in val]
    return {"train": train, "val": val}


def patch_boxes(
    height: int, width: int, tiles: list[tuple[int, int]], count: int, rng: np.random.Generator
) -> list[tuple[int, int, int, int]]:
    """``count`` square (left, top, right, bottom) boxes in a ``height`` x ``width`` photograph, each inside one of
    ``tiles`` (taken in turn), from SMALLEST_PATCH pixels to the tile's short side."""
    tile_height, tile_width = height // GRID, width // GRID
    boxes = []
    for index in range(count):
        row, column = tiles[index % len(tiles)]
        side = int(rng.integers(SMALLEST_PATCH, min(tile_height, tile_width) + 1))
        top = row * tile_height + int(rng.integers(0, tile_height - side + 1))
        left = column * tile_width + int(rng.integers(0, tile_width - side + 1))
        boxes.append((left, top, left + side, top + side))
    return boxes


def write_photo_patches(folder: Path, seed: int = 0, per_class: dict[str, int] = PATCHES) -> Path:
    """``folder/{train,val}/<photo>/<index>.jpg``, ``per_class`` patches per split; the same files for the same
    seed."""
    rng = np.random.default_rng(seed)
    for name, load in PHOTOS.items():
        photo = Image.fromarray(load())
        for split, tiles in split_tiles(rng).items():
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for index, box in enumerate(patch_boxes(photo.height, photo.width, tiles, per_class[split], rng)):
                patch = photo.resize((PATCH_SIZE, PATCH_SIZE), Image.Resampling.BICUBIC, box=box)
                patch.save(folder / split / name / f"{index:04d}.jpg", quality=JPEG_QUALITY)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="where to write train/ and val/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_photo_patches(args.folder, args.seed)
    print(f"wrote {args.folder}/train and {args.folder}/val ({len(PHOTOS)} photographs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
