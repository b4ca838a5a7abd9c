"""data.source=hf against local stand-ins for imagenet-1k: a save_to_disk folder and a hub-style Parquet folder.

Both hold the imagenet-1k schema (an Image column and a ClassLabel label; train, validation and a test split
labelled -1). Each image is its class's colour (255 in the class channel) with the row number in the other two
channels, so a test can tell every row apart and still check labels through the transforms.
"""

from __future__ import annotations

import io
import pickle
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import httpx2  # huggingface_hub 2.x builds its errors from httpx2 responses
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from composer.utils import dist
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub.errors import GatedRepoError
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import get_worker_info

from data import build_data, hf, hf_subsets, subsets
from data.loaders import make_loader
from recipes.errors import UsageError
from recipes.schema import RecipeConfig

CLASSES = ["r", "g", "b"]
RESOLUTION = 16
TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_ROWS = 8, 2, 3
TRAIN_ROWS = TRAIN_PER_CLASS * len(CLASSES)
FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})


def recipe(tmp_path: Path, path: Path | str, **data: object) -> Any:
    """A recipe reading ``path`` with imagenet-1k's split names, small images, loading in the main process."""
    settings = {
        "source": "hf",
        "path": str(path),
        "val_split": "validation",
        "num_workers": 0,
        "train_resolution": RESOLUTION,
        "eval_resolution": RESOLUTION,
        "cache_dir": str(tmp_path / "cache"),
    }
    return OmegaConf.merge(
        OmegaConf.structured(RecipeConfig),
        {"global_batch_size": 4, "eval_batch_size": 4, "data": {**settings, **data}},
    )


def colour_split(labels: list[int]) -> datasets.Dataset:
    """Row ``i`` shows its class's colour with ``i`` in the other channels (grey ``i`` for label -1)."""
    images = [
        Image.new("RGB", (24, 20), tuple(255 if channel == label else row for channel in range(3)))
        for row, label in enumerate(labels)
    ]
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=FEATURES)


def imagenet_like() -> datasets.DatasetDict:
    """Train sorted by class (the hardest order to draw a balanced subset from), validation, and a -1 test split."""
    return datasets.DatasetDict(
        train=colour_split([label for label in range(3) for _ in range(TRAIN_PER_CLASS)]),
        validation=colour_split([label for label in range(3) for _ in range(VAL_PER_CLASS)]),
        test=colour_split([-1] * TEST_ROWS),
    )


def write_hub_layout(folder: Path, splits: datasets.DatasetDict, shards: dict[str, int]) -> Path:
    """Parquet shards named as on the hub (data/train-00000-of-00003.parquet) and a README.md card declaring
    the features and split sizes, as ILSVRC/imagenet-1k's does. Row groups of 2 rows, so shards can be split."""
    (folder / "data").mkdir(parents=True)
    for name, split in splits.items():
        for index in range(shards[name]):
            shard = split.shard(shards[name], index, contiguous=True)
            shard.to_parquet(folder / f"data/{name}-{index:05d}-of-{shards[name]:05d}.parquet", batch_size=2)
    card = {
        "dataset_info": {
            "features": FEATURES._to_yaml_list(),
            "splits": [
                {"name": name, "num_bytes": 0, "num_examples": len(split)} for name, split in splits.items()
            ],
        },
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"data/{name}-*"} for name in splits],
            }
        ],
    }
    (folder / "README.md").write_text(f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n")
    return folder


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same rows saved both ways: ``arrow`` (save_to_disk) and ``parquet`` (hub layout, 3 train shards)."""
    root = tmp_path_factory.mktemp("hf")
    splits = imagenet_like()
    splits.save_to_disk(str(root / "arrow"))
    write_hub_layout(root / "parquet", splits, {"train": 3, "validation": 1, "test": 1})
    return {"arrow": root / "arrow", "parquet": root / "parquet"}


@pytest.fixture(params=["arrow", "parquet"])
def saved(request: pytest.FixtureRequest, stand_ins: dict[str, Path]) -> Path:
    return stand_ins[request.param]


@pytest.fixture(autouse=True)
def hf_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the datasets cache (Parquet read without streaming is converted to Arrow there) out of ~/.cache, and
    skip the 5 s sleep datasets adds after every streamed Parquet pass (its workaround for apache/arrow#45214):
    these short passes do not need it, and the file runs in ~10 s instead of ~70 s."""
    cache = tmp_path_factory.getbasetemp() / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def row_and_worker(image: Image.Image) -> tuple[int, int]:
    """A transform giving the image's row number and the DataLoader worker that read it (-1: main process)."""
    worker = get_worker_info()
    return min(image.convert("RGB").getpixel((0, 0))), -1 if worker is None else worker.id


def read_rows(split: Any, data: Any) -> list[tuple[int, int, int]]:
    """(row, label, worker) for every image of a catalog split, through the project's DataLoader."""
    dataset = split.to_dataset(CLASSES, row_and_worker)
    loader = make_loader(dataset, 4, data, seed=0, shuffle=False, drop_last=False)
    return [
        (row, label, worker)
        for (rows, workers), labels in loader
        for row, worker, label in zip(rows.tolist(), workers.tolist(), labels.tolist(), strict=True)
    ]


def drawn_rows(split: Any) -> list[tuple[int, int]]:
    """(row, label) of a random-access split, in order."""
    return [
        (min(split.load(sample).convert("RGB").getpixel((0, 0))), label) for sample, label in split.samples
    ]


# reading: both formats, with and without streaming


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_reads_every_row_with_class_names(tmp_path: Path, saved: Path, streaming: bool) -> None:
    data = recipe(tmp_path, saved, hf_streaming=streaming).data
    catalog = hf.build_catalog(data, seed=0, train=True)
    assert catalog.classes == CLASSES
    train, val = read_rows(catalog.train, data), read_rows(catalog.val, data)
    assert sorted((row, label) for row, label, _ in train) == [
        (row, row // TRAIN_PER_CLASS) for row in range(TRAIN_ROWS)
    ]
    assert sorted(label for _, label, _ in val) == [0, 0, 1, 1, 2, 2]


def test_hf_build_data_batches_carry_the_labels(tmp_path: Path, saved: Path) -> None:
    bundle = build_data(recipe(tmp_path, saved, hf_streaming=saved.name == "parquet"))
    assert bundle.class_names == CLASSES
    assert (bundle.train_size, bundle.val_size) == (TRAIN_ROWS, 6)
    for spec, expected in ((bundle.train, TRAIN_ROWS), (bundle.val, 6)):
        seen = 0
        for batch in spec.dataloader:
            images, labels = spec.microbatch_transforms(spec.batch_transforms(batch))
            assert images.shape[1:] == (3, RESOLUTION, RESOLUTION)
            assert torch.equal(images.float().mean(dim=(2, 3)).argmax(dim=1), labels)
            seen += len(labels)
        assert seen == expected


def test_hf_missing_split_lists_the_splits_there_are(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(UsageError, match=r"no split 'val' \(data\.val_split\); its splits are: .*validation"):
        hf.build_catalog(recipe(tmp_path, saved, val_split="val").data, seed=0, train=True)


# sharding over DataLoader workers and processes


def test_hf_streaming_workers_read_each_row_once_and_reshuffle(tmp_path: Path, saved: Path) -> None:
    data = recipe(tmp_path, saved, hf_streaming=True, num_workers=2).data
    catalog = hf.build_catalog(data, seed=0, train=True)
    dataset = catalog.train.to_dataset(CLASSES, row_and_worker)
    # Built without build_data's DataSpec, a reference cycle: a loader freed by the cycle collector waits 5 s per
    # persistent worker to shut down.
    loader = make_loader(dataset, 4, data, seed=0, shuffle=True, drop_last=False)
    epochs = [
        [(row, worker) for (rows, workers), _ in loader for row, worker in zip(rows, workers, strict=True)]
        for _ in range(2)
    ]
    for epoch in epochs:
        assert sorted(int(row) for row, _ in epoch) == list(range(TRAIN_ROWS))
        assert {int(worker) for _, worker in epoch} == {0, 1}  # no worker left idle
    assert [row for row, _ in epochs[0]] != [row for row, _ in epochs[1]]


def test_hf_streaming_processes_and_workers_share_out_every_row_once(
    tmp_path: Path, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2 processes x 2 workers = 4 readers: more than the 3 train files (or 1 validation file) of the Parquet
    # stand-in, so it is split by row group; the saved stand-in is cut into 4 shards.
    data = recipe(tmp_path, saved, hf_streaming=True, num_workers=2).data
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    read: dict[str, list[int]] = {"train": [], "validation": []}
    for rank in range(2):
        monkeypatch.setattr(dist, "get_global_rank", lambda rank=rank: rank)
        catalog = hf.build_catalog(data, seed=0, train=True)
        assert (catalog.train.length, catalog.val.length) == (TRAIN_ROWS // 2, 3)
        for split, name in ((catalog.train, "train"), (catalog.val, "validation")):
            rows = read_rows(split, data)
            assert {worker for _, _, worker in rows} == {0, 1}  # no worker left idle
            read[name] += [row for row, _, _ in rows]
    assert sorted(read["train"]) == list(range(TRAIN_ROWS))
    assert sorted(read["validation"]) == list(range(6))


# subsets


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_named_subset_sizes_follow_subset_sizes(
    tmp_path: Path, saved: Path, streaming: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(subsets.SUBSET_SIZES, "tiny", 6)
    for size, expected in (("tiny", 6), ("full", TRAIN_ROWS)):
        bundle = build_data(recipe(tmp_path, saved, hf_streaming=streaming, subset_size=size))
        assert bundle.train_size == expected
        if size == "tiny":
            assert Counter(bundle.train.dataloader.dataset.targets) == {0: 2, 1: 2, 2: 2}
        assert bundle.val_size == 6


def test_hf_streamed_subset_is_balanced_and_drawn_once(
    tmp_path: Path, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = recipe(tmp_path, saved, hf_streaming=True, subset_size="7", max_classes=2)
    bundle = build_data(config)
    assert bundle.class_names == ["r", "g"]
    assert sorted(Counter(bundle.train.dataloader.dataset.targets).values()) == [3, 4]  # 7 over 2, within 1
    assert bundle.val_size == 4  # every validation image of the two kept classes

    def must_not_write(*args: object, **kwargs: object) -> None:
        raise AssertionError("the streamed subset was drawn again")

    monkeypatch.setattr(hf_subsets, "write_subset", must_not_write)
    assert build_data(config).train_size == 7


def test_hf_streamed_subset_depends_only_on_the_seed(tmp_path: Path, saved: Path) -> None:
    def draw(seed: int, cache: str) -> list[tuple[int, int]]:
        data = recipe(
            tmp_path, saved, hf_streaming=True, subset_size="6", cache_dir=str(tmp_path / cache)
        ).data
        return drawn_rows(hf.build_catalog(data, seed=seed, train=True).train)

    first = draw(0, "cache-a")
    assert Counter(label for _, label in first) == {0: 2, 1: 2, 2: 2}
    assert draw(0, "cache-b") == first  # drawn again from scratch: the same rows
    assert draw(1, "cache-c") != first


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_val_subset_is_balanced_seeded_and_training_keeps_every_row(
    tmp_path: Path, saved: Path, streaming: bool
) -> None:
    def val_rows(seed: int, cache: str) -> list[tuple[int, int]]:
        config = recipe(
            tmp_path, saved, hf_streaming=streaming, val_subset_size="3", cache_dir=str(tmp_path / cache)
        )
        config.seed = seed
        bundle = build_data(config)
        assert (bundle.train_size, bundle.val_size) == (TRAIN_ROWS, 3)
        # Only validation is drawn into the cache; training still streams every row.
        assert isinstance(bundle.train.dataloader.dataset, hf.StreamedImages) == streaming
        return sorted(drawn_rows(bundle.val.dataloader.dataset))

    first = val_rows(0, "cache-a")
    assert Counter(label for _, label in first) == {0: 1, 1: 1, 2: 1}
    assert val_rows(0, "cache-b") == first  # drawn again from scratch: the same rows
    assert val_rows(1, "cache-c") != first


# Parquet specifics


def test_parquet_without_card_keeps_class_names_but_cannot_stream(tmp_path: Path, stand_ins: dict) -> None:
    folder = shutil.copytree(stand_ins["parquet"], tmp_path / "no-card")
    (folder / "README.md").unlink()
    # Streaming first: once read without streaming, the datasets cache knows the split sizes.
    with pytest.raises(UsageError, match=r"does not declare how many rows split 'train'.*README\.md"):
        hf.build_catalog(recipe(tmp_path, folder, hf_streaming=True).data, seed=0, train=True)
    catalog = hf.build_catalog(recipe(tmp_path, folder).data, seed=0, train=True)
    assert catalog.classes == CLASSES  # from the schema metadata Dataset.to_parquet embeds


def test_parquet_without_class_label_is_explained(tmp_path: Path) -> None:
    (tmp_path / "plain/data").mkdir(parents=True)
    table = pa.table({"image": [{"bytes": b"", "path": "x.jpg"}], "label": [0]})
    for split in ("train", "validation"):
        pq.write_table(table, tmp_path / f"plain/data/{split}-00000-of-00001.parquet")
    with pytest.raises(UsageError, match=r"needs an 'image' column.*label \(Value\).*Dataset\.to_parquet"):
        hf.build_catalog(recipe(tmp_path, tmp_path / "plain").data, seed=0, train=True)


def test_folder_without_a_dataset_is_explained(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"holds no dataset: no dataset_dict\.json.*data/train-00000-of"):
        hf.build_catalog(recipe(tmp_path, tmp_path / "empty").data, seed=0, train=True)


# imagenet-1k by name: the hub, stood in for by the Parquet folder


@pytest.mark.parametrize("streaming", [False, True])
def test_imagenet_1k_by_name_reads_the_hub_with_the_named_token(
    tmp_path: Path, stand_ins: dict, streaming: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    load_dataset = datasets.load_dataset

    def from_stand_in(path: str, **kwargs: Any) -> Any:
        calls.append((path, kwargs["token"]))
        return load_dataset(str(stand_ins["parquet"]), **kwargs)

    monkeypatch.setenv("MY_TOKEN", "hf_secret")
    monkeypatch.setattr(
        datasets, "get_dataset_split_names", lambda path, token: ["train", "validation", "test"]
    )
    monkeypatch.setattr(datasets, "load_dataset", from_stand_in)
    data = recipe(tmp_path, "imagenet-1k", hf_streaming=streaming, hf_token_env="MY_TOKEN").data
    catalog = hf.build_catalog(data, seed=0, train=True)
    assert calls == [("imagenet-1k", "hf_secret")] * 2
    assert catalog.classes == CLASSES
    assert len(read_rows(catalog.train, data)) == TRAIN_ROWS


def test_hf_map_style_split_pickles_for_spawned_workers(tmp_path: Path, saved: Path) -> None:
    catalog = hf.build_catalog(recipe(tmp_path, saved).data, seed=0, train=True)
    dataset = catalog.val.to_dataset(CLASSES, row_and_worker)
    assert pickle.loads(pickle.dumps(dataset))[3] == ((3, -1), 1)


def hub_error(status: int, gated: bool = True) -> Exception:
    """What datasets raises for imagenet-1k without access: DatasetNotFoundError caused by GatedRepoError."""
    if not gated:
        return DatasetNotFoundError("Dataset 'imagenet-1k' doesn't exist on the Hub or cannot be accessed.")
    request = httpx2.Request("GET", "https://huggingface.co/api/datasets/imagenet-1k")
    response = httpx2.Response(status, request=request)
    error = DatasetNotFoundError("Dataset 'imagenet-1k' is a gated dataset on the Hub.")
    error.__cause__ = GatedRepoError("Access to dataset imagenet-1k is restricted.", response=response)
    return error


def raise_(error: Exception) -> Any:
    def call(*args: object, **kwargs: object) -> None:
        raise error

    return call


def test_gated_dataset_without_token_says_accept_terms_and_set_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(datasets, "get_dataset_split_names", raise_(hub_error(401)))
    with pytest.raises(UsageError) as raised:
        hf.build_catalog(recipe(tmp_path, "imagenet-1k").data, seed=0, train=True)
    message = str(raised.value)
    assert "imagenet-1k is gated and HF_TOKEN (data.hf_token_env) is not set" in message
    assert "Accept its terms at https://huggingface.co/datasets/imagenet-1k" in message


def test_gated_dataset_with_a_rejected_token_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Newer huggingface_hub calls can raise GatedRepoError itself, here from load_dataset after the split check.
    monkeypatch.setenv("HF_TOKEN", "hf_no_access")
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda path, token: ["train", "validation"])
    monkeypatch.setattr(datasets, "load_dataset", raise_(hub_error(403).__cause__))
    with pytest.raises(UsageError, match=r"HF_TOKEN \(data\.hf_token_env\) is set, but the hub rejected that "
                       r"token: its account has not been granted access\. Accept the terms at https://hug"):  # fmt: skip
        hf.build_catalog(recipe(tmp_path, "imagenet-1k", hf_streaming=True).data, seed=0, train=True)


def test_unknown_hub_name_says_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "get_dataset_split_names", raise_(hub_error(404, gated=False)))
    with pytest.raises(UsageError, match=r"data\.path=imagenet-1k was not found on the hub"):
        hf.build_catalog(recipe(tmp_path, "imagenet-1k").data, seed=0, train=True)


# decoding


def test_rows_open_lazily_so_jpegs_can_decode_at_reduced_scale(tmp_path: Path) -> None:
    encoded = io.BytesIO()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(encoded, format="JPEG")
    split = datasets.Dataset.from_dict(
        {"image": [{"bytes": encoded.getvalue(), "path": None}], "label": [0]}, features=FEATURES
    )
    image = hf.RowImages(split)(0)
    assert image.format == "JPEG" and image.tile  # opened, not decoded yet
    image.draft("RGB", (32, 24))
    assert image.size == (32, 24)


def bad_rows_dataset(folder: Path) -> Path:
    """The stand-in's splits with row 1 of train replaced by bytes no decoder reads."""
    splits = imagenet_like()
    train = splits["train"].cast_column("image", datasets.Image(decode=False))
    cells = list(train["image"])
    cells[1] = {"bytes": b"not an image at all", "path": None}
    splits["train"] = datasets.Dataset.from_dict({"image": cells, "label": train["label"]}, features=FEATURES)
    splits.save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize("streaming", [False, True])
def test_an_undecodable_row_is_skipped_and_listed(tmp_path: Path, streaming: bool) -> None:
    saved = bad_rows_dataset(tmp_path / "bad")
    config = recipe(tmp_path, saved, hf_streaming=streaming, on_bad_image="skip")
    config.data.drop_last = False
    bundle = build_data(config, bad_image_list=tmp_path / "bad_images.tsv")
    seen = sum(len(labels) for _, labels in bundle.train.dataloader)
    # Random access replaces the row with the next one; a single-process stream moves on to the next row.
    assert seen == (TRAIN_ROWS - 1 if streaming else TRAIN_ROWS)
    listed = list(bundle.bad_images.entries())
    assert len(listed) == 1 and ":train" in listed[0]


def stream_of(rows: int, shards: int) -> datasets.IterableDataset:
    return colour_split([0] * rows).to_iterable_dataset(num_shards=shards)


@pytest.mark.parametrize("rows", [4, 9])
def test_with_several_processes_each_yields_exactly_its_length(rows: int) -> None:
    # Under DDP a process with fewer batches than the others would hang the run at the next collective, so a
    # short stream is read again and a long one stopped at the process's share.
    dataset = hf.StreamedImages(stream_of(rows, 1), CLASSES, 6, True, row_and_worker, equal_shares=True)
    assert len(list(dataset)) == 6
    single = hf.StreamedImages(stream_of(rows, 1), CLASSES, 6, True, row_and_worker)
    assert len(list(single)) == rows  # one process: every row once, nothing to match


def test_equal_shares_are_split_over_workers() -> None:
    dataset = hf.StreamedImages(stream_of(7, 2), CLASSES, 6, False, row_and_worker, equal_shares=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    workers = Counter(int(worker) for (_, worker), _ in loader)
    assert workers == {0: 3, 1: 3}
