"""Hugging Face ``datasets``: a hub name (``imagenet-1k``) or a folder written by ``save_to_disk``.

The dataset needs an ``image`` column (an Image feature) and a ``label`` column (a ClassLabel, whose names become
the class names). ``data.train_split`` / ``data.val_split`` pick the splits (imagenet-1k calls its validation split
"validation"). The hub token is read from the environment variable named by ``data.hf_token_env``
(imagenet-1k is gated: accept its terms on the hub first). A hub dataset without streaming is downloaded into
the Hugging Face cache (``HF_HOME``) first, whole.

With ``data.hf_streaming`` nothing is downloaded up front:

* without subset keys, each split is read as a stream: each process reads its own shards
  (``datasets.distributed.split_dataset_by_node``) and the train split is shuffled through a buffer and
  reshuffled each epoch;
* with ``subset_size``, ``max_classes`` or ``max_samples_per_class``, the subset is drawn from the stream once
  (class-balanced quotas filled in a seeded shuffled order; val keeps every image of the kept classes), saved
  under ``data.cache_dir``, and read with random access from then on, so every epoch sees the same images
  without downloading them again.

A saved folder can be streamed too, which is how the streaming paths are tested without a network.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from composer.utils import dist
from PIL import Image
from torchvision.datasets import VisionDataset

from data.samples import Catalog, Split, expand_path
from data.subsets import class_quotas, parse_subset_size
from recipes.errors import UsageError

if TYPE_CHECKING:
    import datasets

# Rows held for shuffling a stream, per worker. Rows hold encoded images (~110 KB each for ImageNet), so 1,000
# costs ~110 MB per worker; torchvision-style full shuffles are only possible without streaming.
SHUFFLE_BUFFER = 1_000
SCHEMA = "an 'image' column (datasets.Image) and a 'label' column (datasets.ClassLabel)"
# Bump when the way a streamed subset is drawn changes, so an old cache is not reused.
SUBSET_VERSION = 1


class RowImages:
    """Decodes row ``index``'s image; picklable (a saved or downloaded Dataset pickles as its memory-mapped files)."""

    def __init__(self, dataset: datasets.Dataset) -> None:
        self.dataset = dataset.select_columns(["image"])

    def __call__(self, index: int) -> Image.Image:
        return self.dataset[index]["image"]


class StreamedImages(VisionDataset, torch.utils.data.IterableDataset):
    """A streamed split as a torchvision ``VisionDataset`` (for Composer's RandAugment) that PyTorch iterates.

    Inside DataLoader workers the Hugging Face stream hands each worker its own shards, and each worker batches
    its own rows (so ``drop_last`` drops up to one partial batch per worker). Each pass advances the shuffle
    epoch; the loader keeps workers persistent for streamed training data so that count survives.
    """

    def __init__(
        self, stream: datasets.IterableDataset, classes: list[str], length: int, shuffle: bool, transform: Any
    ) -> None:
        super().__init__(root=None, transform=transform)
        self.stream = stream
        self.classes = classes
        self.length = length
        self.shuffle = shuffle
        self.epoch = 0

    def __len__(self) -> int:
        """Images this process reads per epoch (split evenly; shard sizes can make it off by a few)."""
        return self.length

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        if self.shuffle:
            self.stream.set_epoch(self.epoch)
            self.epoch += 1
        for row in self.stream:
            image = row["image"]
            yield (self.transform(image) if self.transform is not None else image), row["label"]


@dataclass
class StreamedSplit:
    """A streamed split for this process, in place of a ``Split`` of random-access samples."""

    stream: datasets.IterableDataset
    length: int
    shuffle: bool

    def to_dataset(self, classes: list[str], transform: Any) -> StreamedImages:
        """The torchvision dataset the DataLoader reads."""
        return StreamedImages(self.stream, classes, self.length, self.shuffle, transform)


def build_catalog(data: Any, *, seed: int, train: bool) -> Catalog:
    """Class names from the ClassLabel feature, and each split as row samples or as a stream."""
    if not data.path:
        raise UsageError(
            "data.source=hf needs data.path: a hub dataset name such as imagenet-1k, or a folder written by "
            "DatasetDict.save_to_disk."
        )
    wanted = [data.train_split, data.val_split] if train else [data.val_split]
    subset_from_stream = data.hf_streaming and wants_subset(data)
    if subset_from_stream:
        splits = {name: cached_subset(data, name, seed=seed) for name in wanted}
    else:
        splits = open_splits(data, wanted)
    for name, split in splits.items():
        _check_schema(split.features, f"split '{name}' of data.path={data.path}")
    classes = list(splits[wanted[0]].features["label"].names)
    if list(splits[data.val_split].features["label"].names) != classes:
        raise UsageError(
            f"Splits '{data.train_split}' and '{data.val_split}' of data.path={data.path} have different label "
            "names; both need the same ClassLabel so labels mean the same class."
        )
    if data.hf_streaming and not subset_from_stream:
        built = {name: _stream_split(data, name, split, seed) for name, split in splits.items()}
    else:
        built = {name: _row_split(data, name, split) for name, split in splits.items()}
    return Catalog(classes, built[data.train_split] if train else None, built[data.val_split])


def open_splits(data: Any, names: list[str]) -> dict[str, Any]:
    """The named splits: map-style from a saved folder, or from the hub (streams with ``data.hf_streaming``)."""
    import datasets

    location = expand_path(data.path)
    if location.is_dir():
        saved = datasets.load_from_disk(str(location))
        if isinstance(saved, datasets.Dataset):
            raise UsageError(
                f"data.path={data.path} holds a single Dataset; save a DatasetDict with splits "
                f"'{data.train_split}' and '{data.val_split}' (DatasetDict(train=..., val=...).save_to_disk(path))."
            )
        _check_split_names(data, names, list(saved))
        return {name: saved[name] for name in names}
    if data.path.startswith(("/", ".", "~")):
        raise UsageError(f"data.path={data.path} is not a folder (a saved dataset) for data.source=hf.")
    token = os.environ.get(data.hf_token_env) or None
    try:
        _check_split_names(data, names, datasets.get_dataset_split_names(data.path, token=token))
        return {
            name: datasets.load_dataset(data.path, split=name, streaming=data.hf_streaming, token=token)
            for name in names
        }
    except datasets.exceptions.DatasetNotFoundError as error:
        raise UsageError(
            f"Hugging Face dataset data.path={data.path} was not found or is gated: {error}. Check the name; for "
            f"a gated dataset accept its terms on the hub and set {data.hf_token_env} (data.hf_token_env) to a "
            "token with access."
        ) from error


def wants_subset(data: Any) -> bool:
    """Whether any subset key is set."""
    limits = (data.max_classes, data.max_samples_per_class)
    return parse_subset_size(data.subset_size) is not None or any(v is not None for v in limits)


def cached_subset(data: Any, name: str, *, seed: int) -> datasets.Dataset:
    """Split ``name``'s subset, drawn from the stream on first use and saved under ``data.cache_dir``.

    Local rank 0 writes it while the other processes of the machine wait; the write goes to a temporary folder
    renamed into place, so an interrupted write leaves nothing to reuse.
    """
    import datasets

    is_train = name == data.train_split
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", data.path).strip("-")
    classes = f"classes{data.max_classes or 'all'}"
    if is_train:
        folder_name = (
            f"{slug}-{name}-{classes}-size{data.subset_size}-cap{data.max_samples_per_class}-seed{seed}"
        )
    else:
        folder_name = f"{slug}-{name}-{classes}"
    cache_dir = expand_path(data.cache_dir)
    folder = cache_dir / f"hf-v{SUBSET_VERSION}-{folder_name}"
    with dist.run_local_rank_zero_first():
        if not folder.is_dir():
            write_subset(data, name, folder, seed=seed, is_train=is_train)
    return datasets.load_from_disk(str(folder))


def write_subset(data: Any, name: str, folder: Path, *, seed: int, is_train: bool) -> None:
    """Read split ``name`` as a stream and save the rows of the subset (images stay encoded, never re-encoded)."""
    import datasets

    stream = open_splits(data, [name])[name]
    if isinstance(stream, datasets.Dataset):
        stream = stream.to_iterable_dataset()
    _check_schema(stream.features, f"split '{name}' of data.path={data.path}")
    classes = stream.features["label"].names
    if data.max_classes is not None and not 1 <= data.max_classes <= len(classes):
        raise UsageError(
            f"data.max_classes={data.max_classes} but data.path={data.path} has {len(classes)} classes; "
            f"use 1 to {len(classes)} or null."
        )
    kept = data.max_classes or len(classes)
    total, cap = parse_subset_size(data.subset_size), data.max_samples_per_class
    quotas = None
    if is_train and (total is not None or cap is not None):
        # The stream's class sizes are unknown up front; every class is assumed to have enough images.
        quotas = class_quotas({label: cap or total for label in range(kept)}, total)
    stream = stream.select_columns(["image", "label"]).cast_column("image", datasets.Image(decode=False))
    if is_train:
        stream = stream.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)

    def rows() -> Iterator[dict[str, Any]]:
        taken: Counter[int] = Counter()
        wanted = None if quotas is None else sum(quotas.values())
        for row in stream:
            label = row["label"]
            if label >= kept or (quotas is not None and taken[label] >= quotas[label]):
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


def _check_split_names(data: Any, wanted: list[str], present: list[str]) -> None:
    """Every wanted split exists, or an error naming the key to change and the splits there are."""
    for name in wanted:
        if name not in present:
            key = "train_split" if name == data.train_split else "val_split"
            raise UsageError(
                f"data.path={data.path} has no split '{name}' (data.{key}); its splits are: {', '.join(present)}."
            )


def _check_schema(features: Any, where: str) -> None:
    """The columns this project reads: an Image feature and a ClassLabel feature."""
    import datasets

    image, label = (features or {}).get("image"), (features or {}).get("label")
    if not isinstance(image, datasets.Image) or not isinstance(label, datasets.ClassLabel):
        columns = ", ".join(
            f"{name} ({type(feature).__name__})" for name, feature in (features or {}).items()
        )
        raise UsageError(f"The {where} needs {SCHEMA}; it has: {columns or 'no declared features'}.")


def _row_split(data: Any, name: str, split: datasets.Dataset) -> Split:
    """A map-style split as (row number, label) samples; labels read from the Arrow column, no image decoded."""
    labels = split.with_format("arrow")["label"].to_pylist()
    return Split(list(enumerate(labels)), RowImages(split), root=f"{data.path}:{name}")


def _stream_split(data: Any, name: str, split: Any, seed: int) -> StreamedSplit:
    """This process's share of a split as a stream; the train split shuffled with one seed on every process."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    world_size = dist.get_world_size()
    if isinstance(split, datasets.Dataset):
        total = len(split)
        split = split.to_iterable_dataset(num_shards=min(total, world_size * max(1, data.num_workers)))
    else:
        total = _streamed_size(split, name, data.path)
    stream = split.select_columns(["image", "label"])
    shuffle = name == data.train_split
    if shuffle:  # before splitting by node, with one seed, so every process agrees on the shard order
        stream = stream.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    stream = split_dataset_by_node(stream, rank=dist.get_global_rank(), world_size=world_size)
    return StreamedSplit(stream, total // world_size if shuffle else -(-total // world_size), shuffle)


def _streamed_size(stream: Any, name: str, path: str) -> int:
    """Rows in a hub split, from the dataset card's split info (a stream cannot be counted up front)."""
    splits = stream.info.splits or {}
    if name not in splits or not splits[name].num_examples:
        raise UsageError(
            f"data.path={path} does not declare how many rows split '{name}' has, which streaming needs for the "
            "epoch length; set data.hf_streaming=false to download it instead."
        )
    return splits[name].num_examples
