"""MDS shards read with MosaicML Streaming: ``data.source: streaming``, from ``s3://`` or a folder, to many nodes.

``scripts/convert_to_mds.py`` writes any source this project reads as MDS shards under ``data.remote``:

    <remote>/<train_split>/index.json, <remote>/<train_split>/group-00000/shard.00000.mds, ...
    <remote>/<val_split>/index.json, ...

Each sample is the image file's bytes as stored (``image``, an MDS ``bytes`` column, so the fast path decodes
JPEGs at reduced scale exactly as it does for files) and its class index (``label``, ``int``). The index carries
the class names and the per-class counts under ``METADATA_KEY``.

The training split is a ``StreamingDataset``: Streaming partitions the samples over the canonical nodes, ranks
and DataLoader workers from Composer's launcher environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ...),
each node downloading only its partition's shards into ``data.local``, and shuffles them with its own algorithm.
Composer checkpoints the stream's position (``state_dict`` with the samples seen this epoch) and hands it back on
resume, so a resumed run continues at the next sample without reading the skipped ones. Augmentations are
seeded per sample from (seed, epoch, sample id), as ``data.resumable_sampler`` does for map-style sources, so
resumed batches are the very batches an uninterrupted run would have drawn.

The validation split is read by sample index through the ordinary map-style path (``data.samples``), so each
validation image counts once under any number of processes; Streaming's own iteration pads the ranks' shares.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from data.bad_images import BadImageLog
from data.resumable_sampler import SampleKey, sample_seed
from data.samples import Catalog, LabelledImages, Split, expand_path
from recipes.errors import UsageError

if TYPE_CHECKING:
    from streaming import StreamingDataset

# The MDS columns scripts/convert_to_mds.py writes and this source reads.
COLUMNS = {"image": "bytes", "label": "int"}
# The checksum written beside every shard, which data.streaming.validate_hash checks on download by default.
HASHES = ["xxh64"]
# Where index.json keeps what MDS has no field for: class names, per-class counts, how images were encoded.
METADATA_KEY = "mosaic_resnet50"
# mosaicml-streaming 0.13.0 declares transformers<5 (only for its text datasets), which conflicts with
# datasets>=5's huggingface-hub; the Makefile installs it without its declared dependencies (see pyproject.toml).
INSTALL_HINT = "pip install --no-deps mosaicml-streaming==0.13.0 (make install does this)"
SUBSET_KEYS = ("subset_size", "val_subset_size", "max_classes", "max_samples_per_class")


def require_streaming() -> Any:
    """The ``streaming`` package, or a UsageError with the install command."""
    try:
        import streaming
    except ImportError as error:
        raise UsageError(
            f"data.source=streaming needs MosaicML Streaming ({error}); {INSTALL_HINT}."
        ) from error
    return streaming


def build_catalog(data: Any, *, seed: int, train: bool) -> Catalog:
    """Class names from the validation split's index, and a stream (train) and an indexed split (val).

    Nothing is downloaded here but the two ``index.json`` files; shards come when samples are read.
    """
    if not data.remote:
        raise UsageError(
            "data.source=streaming needs data.remote: the s3://bucket/prefix or folder that "
            "scripts/convert_to_mds.py wrote (it holds <train_split>/index.json and <val_split>/index.json)."
        )
    chosen = [key for key in SUBSET_KEYS if str(data[key]) not in ("full", "None")]
    if chosen:
        raise UsageError(
            f"data.source=streaming reads the shards as converted, so {', '.join('data.' + k for k in chosen)} "
            "cannot apply; convert the subset instead (scripts/convert_to_mds.py takes the same keys, e.g. "
            "data.subset_size=small) into its own data.remote."
        )
    require_streaming()
    val = ShardRows(open_stream(data, data.val_split, seed=seed, shuffle=False))
    classes = val.classes
    train_split = StreamSplit(data, seed, classes) if train else None
    return Catalog(
        classes=classes, train=train_split, val=Split(val, val.open, f"{data.remote}/{data.val_split}")
    )


def open_stream(
    data: Any, split: str, *, seed: int, shuffle: bool, batch_size: int | None = None
) -> StreamingDataset:
    """Streaming's dataset over ``data.remote/split``, caching in ``data.local/split``; errors name the split."""
    dataset = require_streaming().StreamingDataset.__new__(require_streaming().StreamingDataset)
    init_stream(dataset, data, split, seed=seed, shuffle=shuffle, batch_size=batch_size)
    return dataset


def init_stream(
    dataset: Any, data: Any, split: str, *, seed: int, shuffle: bool, batch_size: int | None
) -> None:
    """``StreamingDataset.__init__`` on ``dataset`` with the recipe's settings, its failures as UsageErrors."""
    streaming = require_streaming()
    options = data.streaming
    remote = f"{str(data.remote).rstrip('/')}/{split}"
    if "://" not in remote:
        remote = str(expand_path(remote))
    local = expand_path(data.local) / split
    try:
        streaming.StreamingDataset.__init__(
            dataset,
            remote=remote,
            local=str(local),
            shuffle=shuffle,
            shuffle_algo=str(options.shuffle_algo),
            shuffle_seed=seed if options.shuffle_seed is None else options.shuffle_seed,
            shuffle_block_size=options.shuffle_block_size,
            predownload=options.predownload,
            cache_limit=options.cache_limit,
            num_canonical_nodes=options.num_canonical_nodes,
            download_timeout=options.download_timeout,
            validate_hash=options.validate_hash,
            batch_size=batch_size,
        )
    except FileNotFoundError as error:
        raise UsageError(
            f"No MDS index at {remote}/index.json ({error}). data.remote should be the folder or s3:// prefix "
            f"scripts/convert_to_mds.py wrote, holding one folder per split (data.train_split={data.train_split}, "
            f"data.val_split={data.val_split})."
        ) from error
    except ValueError as error:
        if "Reused local directory" in str(error):
            raise UsageError(
                f"{local} is already the cache of another stream open in this process or another run on this "
                f"machine ({error}); give each run its own data.local."
            ) from error
        raise
    except Exception as error:  # botocore's ClientError/EndpointConnectionError and friends
        raise UsageError(
            f"Cannot read the MDS index of {remote} ({type(error).__name__}: {error}). Check that the bucket "
            "exists and is reachable (s3_endpoint_url for S3-compatible stores) and that credentials are set."
        ) from error


def index_metadata(stream: StreamingDataset, where: str) -> dict[str, Any]:
    """This project's part of a downloaded ``index.json``: class names and counts."""
    index = Path(stream.streams[0].local) / stream.streams[0].split / "index.json"
    metadata = json.loads(index.read_text()).get(METADATA_KEY)
    if not metadata or "classes" not in metadata:
        raise UsageError(
            f"{where}/index.json has no class names (no '{METADATA_KEY}' entry): it was not written by "
            "scripts/convert_to_mds.py. Convert the data with it, which records the classes in the index."
        )
    return metadata


class ShardRows(Sequence):
    """A split's MDS samples by index, as ``(sample id, label)`` pairs for the map-style path (``data.samples``).

    Reading an item downloads its shard if needed, so a process reads only the shards holding its share.
    """

    def __init__(self, stream: StreamingDataset) -> None:
        self.stream = stream
        self.classes: list[str] = list(
            index_metadata(stream, stream.streams[0].remote or "data.remote")["classes"]
        )

    def __len__(self) -> int:
        return self.stream.num_samples

    def __getitem__(self, index: Any) -> tuple[int, int]:
        return int(index), int(read_row(self.stream, int(index))["label"])

    def labels(self) -> list[int]:
        return [self[index][1] for index in range(len(self))]

    def open(self, sample_id: int) -> Image.Image:
        """The image of ``sample_id``, opened from its stored bytes without decoding."""
        return Image.open(io.BytesIO(read_row(self.stream, sample_id)["image"]))


def read_row(stream: Any, sample_id: int) -> dict[str, Any]:
    """Sample ``sample_id``'s columns, downloading its shard if needed; a shard that fails its checksum or cannot
    be downloaded (here or in Streaming's download-ahead threads) stops the run with a UsageError naming it.

    Streaming reports a download-ahead thread's failure only as "Background thread failed"; the stream records the
    thread's exception (``StreamedShards.on_exception``) so the error can say which shard and why.
    """
    try:
        return stream.get_item(sample_id)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        cause = getattr(stream, "background_error", None) or error
        raise UsageError(
            f"Cannot read sample {sample_id} of {stream.streams[0].remote}: {cause}. A checksum failure means the "
            "shard is corrupt (in the cache data.local, or at data.remote): delete the cached copy, or convert "
            "again (scripts/convert_to_mds.py rewrites a group whose index.json you delete). The run's "
            "checkpoints are untouched; relaunch with autoresume=true once it is fixed."
        ) from error


class StreamSplit:
    """The training split, opened as a stream when the loader knows the per-process batch (``batch_size``)."""

    def __init__(self, data: Any, seed: int, classes: list[str]) -> None:
        self.data, self.seed, self.classes = data, seed, classes
        self.root = f"{data.remote}/{data.train_split}"
        # Set by data.loaders before to_dataset: Streaming partitions by the per-process batch.
        self.batch_size: int | None = None

    def to_dataset(self, classes: list[str], transform: Any, bad_images: BadImageLog | None = None) -> Any:
        shards = streamed_shards_class()
        return shards(self.data, classes, transform, bad_images, seed=self.seed, batch_size=self.batch_size)


_CLASSES: dict[str, type] = {}


def streamed_shards_class() -> type:
    """``StreamedShards``, defined on first use so that importing this module does not import Streaming (and
    the transformers it imports), which every other source would pay for at start-up."""
    if "StreamedShards" in _CLASSES:
        return _CLASSES["StreamedShards"]
    base = require_streaming().StreamingDataset

    class StreamedShards(LabelledImages, base):  # type: ignore[misc, valid-type]
        """The training stream: Streaming's iteration, shuffle and resume, and ``LabelledImages``' decoding.

        ``LabelledImages`` supplies the transform (a torchvision ``VisionDataset``, so Composer's RandAugment can
        insert itself), the bad-image policy and the per-sample seeding; Streaming supplies which sample ids this
        rank and worker read, in what order, and their shards.
        """

        def __init__(
            self,
            data: Any,
            classes: list[str],
            transform: Any,
            bad_images: BadImageLog | None,
            *,
            seed: int,
            batch_size: int | None,
        ) -> None:
            init_stream(self, data, data.train_split, seed=seed, shuffle=True, batch_size=batch_size)
            rows = ShardRows(self)
            root = f"{data.remote}/{data.train_split}"
            LabelledImages.__init__(
                self, rows, rows.open, classes, transform, root=root, bad_images=bad_images
            )
            self.augmentation_seed = seed

        def __len__(self) -> int:
            return base.__len__(self)  # this process's share, as for every streamed source

        def on_exception(self, future: Any) -> None:
            """Keep a download-ahead thread's failure for ``read_row``'s message, then let Streaming handle it."""
            if future.exception() is not None:
                self.background_error = future.exception()
            base.on_exception(self, future)

        def __getitem__(self, sample_id: int) -> tuple[Any, int]:
            epoch = self.next_epoch - 1  # the epoch being iterated (Streaming pre-increments its counter)
            key = SampleKey(int(sample_id), sample_seed(self.augmentation_seed, epoch, int(sample_id)))
            return LabelledImages.__getitem__(self, key)

    # Importable by name (the module's __getattr__), so a pickled dataset (a spawned worker) finds its class.
    StreamedShards.__module__, StreamedShards.__qualname__ = __name__, "StreamedShards"
    _CLASSES["StreamedShards"] = StreamedShards
    return StreamedShards


def __getattr__(name: str) -> Any:
    if name == "StreamedShards":
        return streamed_shards_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def endpoint_environment(endpoint_url: str | None) -> None:
    """Streaming reads an S3-compatible endpoint from ``S3_ENDPOINT_URL``; the recipe's ``s3_endpoint_url`` sets it."""
    if endpoint_url:
        os.environ["S3_ENDPOINT_URL"] = endpoint_url
