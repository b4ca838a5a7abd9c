"""A subset of a streamed Hugging Face split, drawn once into ``data.cache_dir`` and read with random access after.

Streaming cannot jump to chosen rows, so a subset is drawn from the stream itself: the stream is shuffled with
the run's seed (shard order, then a buffer) and each row is kept while its class's quota is not yet filled.
Quotas spread ``subset_size`` (``val_subset_size`` for the validation split) evenly over the kept classes
(within one image, ``data.subsets.class_quotas``) and cap each training class at ``max_samples_per_class``; the
draw stops once every quota is full, so a tiny subset of imagenet-1k reads only a few thousand rows. The same
seed and data give the same rows. Without ``val_subset_size``, validation keeps every row of the kept classes.

The training split is drawn when a training key is set (``subset_size``, ``max_classes``,
``max_samples_per_class``) and streamed otherwise; the validation split is drawn when any key is set, so an
evaluation every epoch reads the cache, not the hub.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from composer.utils import dist

from data.samples import expand_path
from data.subsets import class_quotas, parse_subset_size, parse_val_subset_size
from recipes.errors import UsageError

if TYPE_CHECKING:
    import datasets

# Rows held for the shuffle before drawing. Images stay encoded (~110 KB each for ImageNet): ~110 MB.
DRAW_BUFFER = 1_000
# Bump when the way a streamed subset is drawn changes, so an old cache is not reused.
SUBSET_VERSION = 1


def wants_subset(data: Any, name: str) -> bool:
    """Whether split ``name`` is drawn into the cache: the training split for a training key, validation for any."""
    limits = (data.max_classes, data.max_samples_per_class)
    training_keys = parse_subset_size(data.subset_size) is not None or any(v is not None for v in limits)
    return training_keys or (name != data.train_split and parse_val_subset_size(data) is not None)


def cached_subset(
    data: Any, name: str, open_stream: Callable[[], datasets.IterableDataset], *, seed: int
) -> datasets.Dataset:
    """Split ``name``'s subset, drawn from ``open_stream()`` on first use and saved under ``data.cache_dir``.

    The folder name holds every key the draw depends on (the named size resolved to its number, so ``tiny`` and
    ``1000`` share a draw). Local rank 0 writes it while the other processes of the machine wait; the write goes
    to a temporary folder renamed into place, so an interrupted write leaves nothing to reuse.
    """
    import datasets

    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", data.path).strip("-")
    folder_name = f"{slug}-{name}-classes{data.max_classes or 'all'}"
    if name == data.train_split:
        size = parse_subset_size(data.subset_size) or "all"
        folder_name += f"-size{size}-cap{data.max_samples_per_class}-seed{seed}"
    elif (val_size := parse_val_subset_size(data)) is not None:
        folder_name += f"-size{val_size}-seed{seed}"
    folder = expand_path(data.cache_dir) / f"hf-v{SUBSET_VERSION}-{folder_name}"
    with dist.run_local_rank_zero_first():
        if not folder.is_dir():
            write_subset(data, name, open_stream(), folder, seed=seed)
    return datasets.load_from_disk(str(folder))


def write_subset(data: Any, name: str, stream: datasets.IterableDataset, folder: Path, *, seed: int) -> None:
    """Draw the subset of split ``name`` from ``stream`` and save it (images stay encoded, never re-encoded)."""
    import datasets

    classes = stream.features["label"].names
    if data.max_classes is not None and not 1 <= data.max_classes <= len(classes):
        raise UsageError(
            f"data.max_classes={data.max_classes} but data.path={data.path} has {len(classes)} classes; "
            f"use 1 to {len(classes)} or null."
        )
    kept = data.max_classes or len(classes)
    is_train = name == data.train_split
    if is_train:
        total, cap = parse_subset_size(data.subset_size), data.max_samples_per_class
    else:
        total, cap = parse_val_subset_size(data), None
    quotas = None
    if total is not None or cap is not None:
        # The stream's class sizes are unknown up front; every class is assumed to have enough images.
        quotas = class_quotas({label: cap or total for label in range(kept)}, total)
    stream = stream.select_columns(["image", "label"]).cast_column("image", datasets.Image(decode=False))
    if is_train or quotas is not None:
        stream = stream.shuffle(seed=seed, buffer_size=DRAW_BUFFER)

    def rows() -> Iterator[dict[str, Any]]:
        taken: Counter[int] = Counter()
        wanted = None if quotas is None else sum(quotas.values())
        for row in stream:
            label = row["label"]
            if not 0 <= label < kept or (quotas is not None and taken[label] >= quotas[label]):
                continue
            taken[label] += 1
            yield row
            if wanted is not None and taken.total() == wanted:
                return

    print(f"Drawing split '{name}' of {data.path} into {folder} (once; later runs reuse it).", flush=True)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=classes[:kept])}
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        subset = datasets.Dataset.from_generator(
            rows, features=features, cache_dir=str(temporary / "build"), fingerprint=folder.name
        )
        subset.save_to_disk(str(temporary / "subset"))
        try:
            (temporary / "subset").rename(folder)
        except OSError:
            if not folder.is_dir():
                raise  # not another machine sharing the cache finishing first: a real failure
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
