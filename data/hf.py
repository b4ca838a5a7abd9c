"""Hugging Face ``datasets``: ``imagenet-1k`` by name, a local copy of a hub repository, or a ``save_to_disk`` folder.

``data.path`` is one of:

* a hub name. ``imagenet-1k`` is today's ``ILSVRC/imagenet-1k`` (the hub redirects the old canonical name): 1,000
  classes in Parquet shards (``data/train-00000-of-00257.parquet`` ...), splits ``train`` (1,281,167 images),
  ``validation`` (50,000: set ``data.val_split=validation``) and ``test`` (100,000, all labelled -1, unused).
  It is gated: accept its terms at https://huggingface.co/datasets/ILSVRC/imagenet-1k, then put a token in the
  environment variable named by ``data.hf_token_env``. Without streaming the whole dataset is downloaded into the
  Hugging Face cache (``HF_HOME``) and converted to Arrow there first (~150 GB each for imagenet-1k);
* a local folder laid out like a hub repository (``data/<split>-00000-of-00004.parquet`` and its ``README.md``
  card, e.g. from ``hf download ILSVRC/imagenet-1k --repo-type dataset``), read by the same packaged Parquet
  builder as the hub. Streaming reads the files in place; without it they are converted to Arrow as above;
* a folder written by ``DatasetDict.save_to_disk`` (it holds ``dataset_dict.json``), read in place.

The dataset needs an ``image`` column (an Image feature) and a ``label`` column (a ClassLabel, whose names become
the class names: from the card's ``dataset_info`` or the ``huggingface`` metadata ``Dataset.to_parquet`` embeds).

With ``data.hf_streaming`` nothing is downloaded up front:

* without subset keys, each split is read as a stream. Each process reads its own shards
  (``datasets.distributed.split_dataset_by_node``) and each DataLoader worker its own part of those; the train
  split is shuffled through a buffer and reshuffled each epoch. Shards are Parquet files, or their row groups
  (``IterableDataset.reshard``) when the files are fewer than processes times workers (datasets would leave the
  extra workers idle) or do not divide evenly over the processes (every process would read every file and keep
  one row in N). A stream needs its row count for the epoch length, from the card's ``dataset_info``;
* with ``subset_size``, ``max_classes`` or ``max_samples_per_class``, the subset is drawn from the stream once
  into ``data.cache_dir`` (``data.hf_subsets``) and read with random access from then on; with
  ``val_subset_size`` alone, only the validation split is (a balanced, seeded draw) and training streams.

A saved folder can be streamed too, which is how the streaming paths are tested without a network.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from composer.utils import dist
from PIL import Image
from torchvision.datasets import VisionDataset

from data.bad_images import BadImageLog, ImageDecodeError, decode_image
from data.hf_subsets import cached_subset, wants_subset
from data.samples import Catalog, Split, expand_path
from recipes.errors import UsageError

if TYPE_CHECKING:
    import datasets

# Rows held for shuffling a stream, per worker. Rows hold encoded images (~110 KB each for ImageNet), so 1,000
# costs ~110 MB per worker; torchvision-style full shuffles are only possible without streaming.
SHUFFLE_BUFFER = 1_000
SCHEMA = "an 'image' column (datasets.Image) and a 'label' column (datasets.ClassLabel)"
# Files that mark a folder written by save_to_disk (a DatasetDict, or a single Dataset).
SAVED_MARKERS = ("dataset_dict.json", "state.json")


def open_encoded(cell: dict[str, Any]) -> Image.Image:
    """An undecoded Image cell (``{"bytes", "path"}``) opened lazily, so the transforms decode at reduced scale."""
    if cell.get("bytes"):
        return Image.open(io.BytesIO(cell["bytes"]))
    if cell.get("path"):
        return Image.open(cell["path"])
    raise ImageDecodeError("the row holds neither image bytes nor a path")


class RowImages:
    """Opens row ``index``'s image without decoding it; picklable (a Dataset pickles as its memory-mapped files)."""

    def __init__(self, dataset: datasets.Dataset) -> None:
        import datasets

        self.dataset = dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))

    def __call__(self, index: int) -> Image.Image:
        return open_encoded(self.dataset[index]["image"])

    def encoded(self, index: int) -> bytes:
        """Row ``index``'s image as stored (scripts/convert_to_mds.py copies these bytes)."""
        cell = self.dataset[index]["image"]
        if cell.get("bytes"):
            return cell["bytes"]
        if cell.get("path"):
            with open(cell["path"], "rb") as file:
                return file.read()
        raise ImageDecodeError("the row holds neither image bytes nor a path")


class StreamedImages(VisionDataset, torch.utils.data.IterableDataset):
    """A streamed split as a torchvision ``VisionDataset`` (for Composer's RandAugment) that PyTorch iterates.

    Inside DataLoader workers the Hugging Face stream hands each worker its own shards, and each worker batches
    its own rows (so ``drop_last`` drops up to one partial batch per worker). Each pass advances the shuffle
    epoch; the loader keeps workers persistent for streamed training data so that count survives.

    With several processes (``equal_shares``), every process yields exactly ``length`` images per pass, split
    evenly over its workers: shards rarely hold equal row counts, and under DDP a process that ran out early would
    wait forever for the others at the next collective. A worker whose shards run short starts over on them; one
    with rows to spare stops at its share (with shuffling, different rows are left out each epoch). A single
    process reads every row once. Undecodable rows follow ``data.on_bad_image``.
    """

    def __init__(
        self,
        stream: datasets.IterableDataset,
        classes: list[str],
        length: int,
        shuffle: bool,
        transform: Any,
        bad_images: BadImageLog | None = None,
        root: str | None = None,
        equal_shares: bool = False,
    ) -> None:
        import datasets

        super().__init__(root=root, transform=transform)
        self.equal_shares = equal_shares
        self.stream = stream.cast_column("image", datasets.Image(decode=False))
        self.classes = classes
        self.length = length
        self.shuffle = shuffle
        self.bad_images = bad_images or BadImageLog(None, "fail")
        self.epoch = 0

    def __len__(self) -> int:
        """Images this process reads per epoch."""
        return self.length

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        share = self._share()
        produced = 0
        while True:
            if self.shuffle:
                self.stream.set_epoch(self.epoch)
                self.epoch += 1
            before = produced
            for position, row in enumerate(self.stream):
                try:
                    image = decode_image(open_encoded, row["image"], self.transform)
                except ImageDecodeError as error:
                    self.bad_images.handle(f"{self.root} row {position} of this worker's stream", error)
                    continue
                yield image, row["label"]
                produced += 1
                if produced == share:
                    return
            # One pass is all without equal shares; a pass with nothing decodable would never fill a share.
            if share is None or produced == before:
                return

    def _share(self) -> int | None:
        """This worker's part of ``length`` when shares must be equal, else None (read the stream once)."""
        if not self.equal_shares:
            return None
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return self.length // workers + (1 if worker < self.length % workers else 0)


@dataclass
class StreamedSplit:
    """A streamed split for this process, in place of a ``Split`` of random-access samples."""

    stream: datasets.IterableDataset
    length: int
    shuffle: bool
    root: str | None = None
    equal_shares: bool = False

    def to_dataset(
        self, classes: list[str], transform: Any, bad_images: BadImageLog | None = None
    ) -> StreamedImages:
        """The torchvision dataset the DataLoader reads."""
        return StreamedImages(
            self.stream,
            classes,
            self.length,
            self.shuffle,
            transform,
            bad_images=bad_images,
            root=self.root,
            equal_shares=self.equal_shares,
        )


def build_catalog(data: Any, *, seed: int, train: bool) -> Catalog:
    """Class names from the ClassLabel feature, and each split as row samples or as a stream."""
    if not data.path:
        raise UsageError(
            "data.source=hf needs data.path: a hub dataset name such as imagenet-1k, a local copy of a hub "
            "repository (data/*.parquet), or a folder written by DatasetDict.save_to_disk."
        )
    wanted = [data.train_split, data.val_split] if train else [data.val_split]
    drawn = [name for name in wanted if data.hf_streaming and wants_subset(data, name)]
    opened = [name for name in wanted if name not in drawn]
    splits = open_splits(data, opened) if opened else {}
    for name in drawn:
        splits[name] = cached_subset(data, name, partial(open_stream, data, name), seed=seed)
    for name, split in splits.items():
        _check_schema(split.features, f"split '{name}' of data.path={data.path}")
    classes = list(splits[wanted[0]].features["label"].names)
    if list(splits[data.val_split].features["label"].names) != classes:
        raise UsageError(
            f"Splits '{data.train_split}' and '{data.val_split}' of data.path={data.path} have different label "
            "names; both need the same ClassLabel so labels mean the same class."
        )
    built = {
        name: _stream_split(data, name, split, seed)
        if data.hf_streaming and name not in drawn
        else _row_split(data, name, split)
        for name, split in splits.items()
    }
    return Catalog(classes, built[data.train_split] if train else None, built[data.val_split])


def open_splits(data: Any, names: list[str]) -> dict[str, Any]:
    """The named splits of a saved folder (map-style), or from ``load_dataset`` (streams with ``hf_streaming``)."""
    import datasets

    location = expand_path(data.path)
    if any((location / marker).is_file() for marker in SAVED_MARKERS):
        saved = datasets.load_from_disk(str(location))
        if isinstance(saved, datasets.Dataset):
            raise UsageError(
                f"data.path={data.path} holds a single Dataset; save a DatasetDict with splits "
                f"'{data.train_split}' and '{data.val_split}' (DatasetDict(train=..., val=...).save_to_disk(path))."
            )
        _check_split_names(data, names, list(saved))
        return {name: saved[name] for name in names}
    if location.is_dir():
        return _load_splits(data, names, str(location), token=None)
    if data.path.startswith(("/", ".", "~")):
        raise UsageError(
            f"data.path={data.path} is not a folder. data.source=hf reads a folder (written by save_to_disk, or "
            "a local copy of a hub repository) or a hub dataset name such as imagenet-1k."
        )
    return _load_splits(data, names, data.path, token=os.environ.get(data.hf_token_env) or None)


def open_stream(data: Any, name: str) -> datasets.IterableDataset:
    """Split ``name`` as a stream with its schema checked, for drawing a subset (a saved split becomes one)."""
    import datasets

    stream = open_splits(data, [name])[name]
    if isinstance(stream, datasets.Dataset):
        stream = stream.to_iterable_dataset()
    _check_schema(stream.features, f"split '{name}' of data.path={data.path}")
    return stream


def _load_splits(data: Any, names: list[str], path: str, token: str | None) -> dict[str, Any]:
    """Splits through ``load_dataset``, for a hub name or a local folder of data files laid out the same way."""
    import datasets
    from datasets.data_files import EmptyDatasetError
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import GatedRepoError

    try:
        _check_split_names(data, names, datasets.get_dataset_split_names(path, token=token))
        return {
            name: datasets.load_dataset(path, split=name, streaming=data.hf_streaming, token=token)
            for name in names
        }
    except (DatasetNotFoundError, GatedRepoError) as error:
        raise UsageError(_hub_refusal(data, error, token_set=token is not None)) from error
    except EmptyDatasetError as error:
        raise UsageError(
            f"data.path={data.path} holds no dataset: no dataset_dict.json (a DatasetDict.save_to_disk folder) "
            f"and no data files laid out like a hub repository (data/train-00000-of-00001.parquet). {error}"
        ) from error


def _hub_refusal(data: Any, error: Exception, *, token_set: bool) -> str:
    """Why the hub refused the dataset and the fix: gated (terms and token), or not found.

    datasets turns huggingface_hub's ``GatedRepoError`` into ``DatasetNotFoundError`` ("... is a gated dataset on
    the Hub"), keeping it as the cause; other calls can raise ``GatedRepoError`` itself.
    """
    from huggingface_hub.errors import GatedRepoError

    variable = f"{data.hf_token_env} (data.hf_token_env)"
    gated = next((e for e in (error, error.__cause__) if isinstance(e, GatedRepoError)), None)
    if gated is None and "gated" not in str(error):
        return (
            f"Hugging Face dataset data.path={data.path} was not found on the hub ({error}). Check the name "
            f"(imagenet-1k, or owner/name as on huggingface.co); a private dataset also needs a token in {variable}."
        )
    page = f"https://huggingface.co/datasets/{data.path}"
    if not token_set:
        return (
            f"Hugging Face dataset {data.path} is gated and {variable} is not set. Accept its terms at {page} "
            f"(logged in), create a read token at https://huggingface.co/settings/tokens and set "
            f"{data.hf_token_env} to it."
        )
    status = getattr(getattr(gated, "response", None), "status_code", None)
    reason = {401: " as invalid or expired", 403: ": its account has not been granted access"}.get(status, "")
    return (
        f"Hugging Face dataset {data.path} is gated and {variable} is set, but the hub rejected that token"
        f"{reason}. Accept the terms at {page} with the account that owns the token, and check the token "
        "(hf auth whoami)."
    )


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
        raise UsageError(
            f"The {where} needs {SCHEMA}; it has: {columns or 'no declared features'}. Parquet files keep these "
            "features when written by Dataset.to_parquet, or when the folder's README.md declares them "
            "(dataset_info, as on the hub)."
        )


def _row_split(data: Any, name: str, split: datasets.Dataset) -> Split:
    """A map-style split as (row number, label) samples; labels read from the Arrow column, no image decoded."""
    labels = split.with_format("arrow")["label"].to_pylist()
    return Split(list(enumerate(labels)), RowImages(split), root=f"{data.path}:{name}")


def _stream_split(data: Any, name: str, split: Any, seed: int) -> StreamedSplit:
    """This process's share of a split as a stream; the train split shuffled with one seed on every process."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    world_size = dist.get_world_size()
    readers = world_size * max(1, data.num_workers)
    if isinstance(split, datasets.Dataset):
        total = len(split)
        split = split.to_iterable_dataset(num_shards=min(total, readers))
    else:
        total = _streamed_size(split, name, data.path)
        if split.num_shards < readers or split.num_shards % world_size:
            # Parquet: a shard per row group instead of per file (why: see the module docstring).
            split = split.reshard()
    stream = split.select_columns(["image", "label"])
    shuffle = name == data.train_split
    if shuffle:  # before splitting by node, with one seed, so every process agrees on the shard order
        stream = stream.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    stream = split_dataset_by_node(stream, rank=dist.get_global_rank(), world_size=world_size)
    length = total // world_size if shuffle else -(-total // world_size)
    return StreamedSplit(stream, length, shuffle, root=f"{data.path}:{name}", equal_shares=world_size > 1)


def _streamed_size(stream: Any, name: str, path: str) -> int:
    """Rows in a split, from the dataset card's split info (a stream cannot be counted up front)."""
    splits = stream.info.splits or {}
    if name not in splits or not splits[name].num_examples:
        raise UsageError(
            f"data.path={path} does not declare how many rows split '{name}' has (dataset_info in its README.md "
            "card), which streaming needs for the epoch length. Copy the hub's README.md beside the data files, "
            "or set data.hf_streaming=false to read it without streaming."
        )
    return splits[name].num_examples
