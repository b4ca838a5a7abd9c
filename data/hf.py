"""Hugging Face ``datasets``: a hub name (``imagenet-1k``) or a folder written by ``save_to_disk``.

The dataset needs an ``image`` column (an Image feature) and a ``label`` column (a ClassLabel, whose names become
the class names). ``data.train_split`` / ``data.val_split`` pick the splits (imagenet-1k calls its validation split
"validation"). The hub token is read from the environment variable named by ``data.hf_token_env``
(imagenet-1k is gated: accept its terms on the hub first).

With ``data.hf_streaming`` the splits are read as an ``IterableDataset``: each process reads its own shards
(``datasets.distributed.split_dataset_by_node``), the train split is shuffled through a buffer and reshuffled each
epoch, and subsets are not available (they need random access). A saved folder can be streamed too, which is
how the streaming path is tested without a network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from composer.utils import dist
from PIL import Image
from torchvision.datasets import VisionDataset

from data.samples import Catalog, Split, expand_path
from recipes.errors import UsageError

if TYPE_CHECKING:
    import datasets

# Rows held for shuffling a stream, per worker. Rows hold encoded images (~110 KB each for ImageNet), so 1,000
# costs ~110 MB per worker; torchvision-style full shuffles are only possible without streaming.
SHUFFLE_BUFFER = 1_000
SCHEMA = "an 'image' column (datasets.Image) and a 'label' column (datasets.ClassLabel)"


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

    def __iter__(self):
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
    splits = open_splits(data, wanted)
    features = {name: split.features for name, split in splits.items()}
    for name, split_features in features.items():
        _check_schema(split_features, f"split '{name}' of data.path={data.path}")
    classes = list(features[wanted[0]]["label"].names)
    val_classes = list(features[data.val_split]["label"].names)
    if val_classes != classes:
        raise UsageError(
            f"Splits '{data.train_split}' and '{data.val_split}' of data.path={data.path} have different label "
            "names; both need the same ClassLabel so labels mean the same class."
        )
    built = {name: _as_split(data, name, split, seed) for name, split in splits.items()}
    return Catalog(classes, built[data.train_split] if train else None, built[data.val_split])


def open_splits(data: Any, names: list[str]) -> dict[str, Any]:
    """The named splits, from a saved folder (map-style, streamed later if asked) or the hub.

    A missing split is an error listing the splits present.
    """
    import datasets

    location = expand_path(data.path)
    if location.is_dir():
        saved = datasets.load_from_disk(str(location))
        if isinstance(saved, datasets.Dataset):
            raise UsageError(
                f"data.path={data.path} holds a single Dataset; save a DatasetDict with splits "
                f"'{names[0]}' and '{data.val_split}' (DatasetDict(train=..., val=...).save_to_disk(path))."
            )
        _check_split_names(data, names, list(saved))
        return {name: saved[name] for name in names}
    if data.path.startswith(("/", ".", "~")):
        raise UsageError(f"data.path={data.path} is not a folder (a saved dataset) for data.source=hf.")
    token = os.environ.get(data.hf_token_env) or None
    try:
        present = datasets.get_dataset_split_names(data.path, token=token)
        _check_split_names(data, names, present)
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


def _check_split_names(data: Any, wanted: list[str], present: list[str]) -> None:
    """Every wanted split exists, or an error naming the key to change and the splits there are."""
    for name, key in zip(
        wanted, ("train_split", "val_split") if len(wanted) == 2 else ("val_split",), strict=True
    ):
        if name not in present:
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


def _as_split(data: Any, name: str, split: Any, seed: int) -> Split | StreamedSplit:
    """A map-style split as row samples, or (with data.hf_streaming) a stream for this process."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    if not data.hf_streaming:
        labels = split.with_format("arrow")["label"].to_pylist()
        return Split(list(enumerate(labels)), RowImages(split), root=f"{data.path}:{name}")
    world_size = dist.get_world_size()
    if isinstance(split, datasets.Dataset):
        total = len(split)
        shards = min(total, world_size * max(1, data.num_workers))
        stream = split.to_iterable_dataset(num_shards=shards)
    else:
        total = _streamed_size(split, name, data.path)
        stream = split
    stream = stream.select_columns(["image", "label"])
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
