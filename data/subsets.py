"""Seeded, class-balanced subsets, for quick runs and for finding problems on a slice of ImageNet.

``subset_size`` is a training total spread evenly over the classes (within one image), ``max_classes`` keeps the
first N classes in class order, ``max_samples_per_class`` caps each training class. Validation keeps every image
of the kept classes, so accuracy stays comparable between subsets of the same classes, unless
``val_subset_size`` (the same forms as ``subset_size``) asks for a balanced, seeded draw of it too: imagenet-1k's
50,000 validation images cost a T4 minutes per evaluation, and 10 a class measure a short run well enough.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from data.samples import Catalog, Sample, Split
from recipes.errors import UsageError

SUBSET_SIZES: dict[str, int | None] = {
    "tiny": 1_000,
    "small": 10_000,
    "medium": 100_000,
    "large": 500_000,
    "full": None,
}


def parse_subset_size(value: str | int, key: str = "subset_size") -> int | None:
    """Total images for ``data.<key>`` (a name or a number), or None for the full set."""
    text = str(value).strip().lower().replace("_", "")
    if text in SUBSET_SIZES:
        return SUBSET_SIZES[text]
    if text.isdigit() and int(text) > 0:
        return int(text)
    names = ", ".join(f"{name}={size or 'all'}" for name, size in SUBSET_SIZES.items())
    raise UsageError(f"data.{key}={value} is not a positive number or one of: {names}.")


def parse_val_subset_size(data: Any) -> int | None:
    """Total validation images for ``data.val_subset_size``, or None for every image of the kept classes."""
    return parse_subset_size(data.val_subset_size, key="val_subset_size")


def subset_catalog(catalog: Catalog, data: Any, seed: int) -> Catalog:
    """Apply ``max_classes``, ``subset_size``, ``max_samples_per_class`` and ``val_subset_size`` to a catalog.

    A split with subset keys is a random-access ``Split``: a streamed Hugging Face split with keys is drawn into
    a cache by ``data.hf`` first, and re-applying the same keys to that drawn subset changes nothing.
    """
    total = parse_subset_size(data.subset_size)
    val_total = parse_val_subset_size(data)
    max_classes = data.max_classes
    cap = data.max_samples_per_class
    if total is None and val_total is None and max_classes is None and cap is None:
        return catalog
    for key, value in (("max_classes", max_classes), ("max_samples_per_class", cap)):
        if value is not None and value < 1:
            raise UsageError(f"data.{key}={value} must be at least 1 (or null for no limit).")

    classes = catalog.classes
    train, val = catalog.train, catalog.val
    if max_classes is not None:
        if max_classes > len(classes):
            raise UsageError(
                f"data.max_classes={max_classes} but data.source={data.source} has only {len(classes)} classes; "
                f"use at most {len(classes)} or null."
            )
        classes = classes[:max_classes]
        # Labels index the class list, so the first N classes are already labelled 0..N-1: train and val
        # keep the same labels for the same classes without any renumbering.
        val = Split(first_classes(val.samples, max_classes), val.load, val.root)
        if train is not None:
            train = Split(first_classes(train.samples, max_classes), train.load, train.root)
    if train is not None and (total is not None or cap is not None):
        samples = balanced_subset(train.samples, total=total, per_class_cap=cap, seed=seed)
        train = Split(samples, train.load, train.root)
    if val_total is not None:
        val = Split(
            balanced_subset(val.samples, total=val_total, per_class_cap=None, seed=seed), val.load, val.root
        )
    return Catalog(classes, train, val)


def first_classes(samples: list[Sample], count: int) -> list[Sample]:
    """The samples of the first ``count`` classes (labels 0..count-1)."""
    return [sample for sample in samples if sample[1] < count]


def balanced_subset(
    samples: list[Sample], *, total: int | None, per_class_cap: int | None, seed: int
) -> list[Sample]:
    """A seeded random choice of ``total`` samples spread evenly over the classes, at most ``per_class_cap`` each.

    Classes with too few images give all they have and the rest is shared among the others, so the total is
    met whenever the data allows. The result keeps the input order.
    """
    positions_by_class: dict[int, list[int]] = defaultdict(list)
    for position, (_, label) in enumerate(samples):
        positions_by_class[label].append(position)
    available = {
        label: len(positions) if per_class_cap is None else min(per_class_cap, len(positions))
        for label, positions in sorted(positions_by_class.items())
    }
    quotas = class_quotas(available, total)
    rng = random.Random(seed)
    chosen: list[int] = []
    for label, positions in sorted(positions_by_class.items()):
        chosen += rng.sample(positions, quotas[label])
    return [samples[position] for position in sorted(chosen)]


def class_quotas(available: dict[int, int], total: int | None) -> dict[int, int]:
    """Images to take per class: ``total`` shared as evenly as ``available`` allows (water-filling).

    Classes are served smallest first, each taking an even share of what is left, or all it has. Once one class
    has images to spare, every later (larger) class does too, so the shares differ by at most one and the
    division's remainder lands on the largest classes.
    """
    if total is None:
        return dict(available)
    quotas: dict[int, int] = {}
    remaining = total
    by_size = sorted(available, key=lambda label: (available[label], label))
    for served, label in enumerate(by_size):
        quotas[label] = min(available[label], remaining // (len(by_size) - served))
        remaining -= quotas[label]
    return quotas
