"""Deterministic random images, for measuring the pipeline and the model without any data on disk.

Image ``i`` of a split is the same every time for the same seed: noise drawn from a generator seeded by
``(seed, split, i)``, blended with a colour per class so a model can learn something and the loss visibly falls.
Images are PIL RGB, so the normal transforms (and Composer's RandAugment) run on them, and they are made at the
size each preset wants (train at ``train_resolution``, val at the eval resize size) to skip needless resizing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from data.samples import Catalog, Split
from data.transforms import eval_resize_size
from recipes.errors import UsageError

SPLIT_NUMBERS = {"train": 0, "val": 1}


class SyntheticImages:
    """Image ``index`` of one split: picklable, so DataLoader workers can draw images themselves."""

    def __init__(self, seed: int, split: str, size: int, num_classes: int) -> None:
        self.seed = seed % 2**32  # numpy seeds must be non-negative
        self.split_number = SPLIT_NUMBERS[split]
        self.size = size
        self.num_classes = num_classes

    def label(self, index: int) -> int:
        """Classes in turn, so every class has images whenever there are enough samples."""
        return index % self.num_classes

    def __call__(self, index: int) -> Image.Image:
        noise = np.random.default_rng((self.seed, self.split_number, index)).integers(
            0, 256, (self.size, self.size, 3), dtype=np.uint8
        )
        colour = np.random.default_rng((self.seed, len(SPLIT_NUMBERS), self.label(index))).integers(
            0, 256, 3, dtype=np.uint8
        )
        return Image.fromarray(noise // 2 + colour // 2)


def build_catalog(data: Any, *, seed: int, train: bool) -> Catalog:
    """``data.num_classes`` classes with ``synthetic_train_samples`` / ``synthetic_val_samples`` images."""
    for key in ("num_classes", "synthetic_train_samples", "synthetic_val_samples"):
        if (value := getattr(data, key)) < 1:
            raise UsageError(f"data.{key}={value} must be at least 1 for data.source=synthetic.")
    val_size = eval_resize_size(data.eval_resolution, data.eval_crop_ratio)
    return Catalog(
        classes=[f"class_{label}" for label in range(data.num_classes)],
        train=_split(
            SyntheticImages(seed, "train", data.train_resolution, data.num_classes),
            data.synthetic_train_samples,
        )
        if train
        else None,
        val=_split(SyntheticImages(seed, "val", val_size, data.num_classes), data.synthetic_val_samples),
    )


def _split(images: SyntheticImages, count: int) -> Split:
    """``count`` samples of ``images``, each labelled with its class."""
    return Split([(index, images.label(index)) for index in range(count)], images, root=None)
