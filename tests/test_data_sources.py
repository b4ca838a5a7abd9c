"""Each data source, end to end through ``build_data``: batch shapes, labels, class names, and its errors.

Images are solid red, green or blue per class, so a batch's strongest channel tells which class it shows and
labels can be checked through decoding, cropping and normalisation.
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from composer.core import DataSpec
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from data import build_data, digits
from data.fast_transforms import NormalizeBatch
from recipes.errors import UsageError
from recipes.schema import IMAGENET_MEAN, IMAGENET_STD, RecipeConfig

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
RESOLUTION = 16


def recipe(tmp_path: Path, **data: object):
    """A recipe with small batches and images, loading in the main process."""
    settings = {"num_workers": 0, "train_resolution": RESOLUTION, "eval_resolution": RESOLUTION}
    settings["cache_dir"] = str(tmp_path / "cache")
    return OmegaConf.merge(
        OmegaConf.structured(RecipeConfig),
        {"global_batch_size": 4, "eval_batch_size": 4, "data": {**settings, **data}},
    )


def write_image(path: Path, label: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 20), COLOURS[label]).save(path)


def assert_batches_match_labels(data: DataSpec | DataLoader, expected_images: int) -> None:
    """Every batch is normalised RGB at RESOLUTION, and each image's strongest channel is its label.

    ``data`` is a bundle's DataSpec, or its DataLoader (the fast pipeline's uint8 batches normalised here).
    """
    if not isinstance(data, DataSpec):
        data = DataSpec(data, microbatch_transforms=NormalizeBatch(IMAGENET_MEAN, IMAGENET_STD))
    seen = 0
    for batch in data.dataloader:
        # Composer's order on a CPU: batch_transforms, then (per microbatch) microbatch_transforms.
        images, labels = data.microbatch_transforms(data.batch_transforms(batch))
        assert images.shape[1:] == (3, RESOLUTION, RESOLUTION)
        assert images.dtype == torch.float32
        assert images.min() < 0 < images.max()  # normalised, not 0..1
        assert torch.equal(images.mean(dim=(2, 3)).argmax(dim=1), labels)
        seen += len(labels)
    assert seen == expected_images


def image_folder(root: Path, train_per_class: int = 4, val_per_class: int = 2) -> Path:
    for label, name in enumerate(["cat", "dog", "eel"]):
        for i in range(train_per_class):
            write_image(root / "train" / name / f"{i}.jpg", label)
        for i in range(val_per_class):
            write_image(root / "val" / name / f"{i}.jpg", label)
    return root


# imagefolder


def test_imagefolder_yields_labelled_normalised_batches(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "images")
    bundle = build_data(recipe(tmp_path, source="imagefolder", path=str(root), drop_last=False))
    assert bundle.class_names == ["cat", "dog", "eel"]
    assert (bundle.num_classes, bundle.train_size, bundle.val_size) == (3, 12, 6)
    assert bundle.train.dataloader.dataset.classes == ["cat", "dog", "eel"]
    assert_batches_match_labels(bundle.train.dataloader, 12)
    assert_batches_match_labels(bundle.val, 6)


def test_imagefolder_path_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image_folder(tmp_path / "images")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert build_data(recipe(tmp_path, source="imagefolder", path="~/images")).val_size == 6


def test_eval_only_build_has_no_train_loader(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "images")
    bundle = build_data(recipe(tmp_path, source="imagefolder", path=str(root)), train=False)
    assert bundle.train is None
    assert bundle.train_size == 0
    assert_batches_match_labels(bundle.val, 6)


def test_imagefolder_without_path_names_data_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"data\.source=imagefolder needs data\.path"):
        build_data(recipe(tmp_path, source="imagefolder"))


def test_imagefolder_missing_split_folder_names_it_and_the_layout(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "images")
    with pytest.raises(
        UsageError, match=r"images/valid does not exist.*train/<class>/\*\.jpg and valid/<class>"
    ):
        build_data(recipe(tmp_path, source="imagefolder", path=str(root), val_split="valid"))


def test_imagefolder_val_classes_must_match_train(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "images")
    write_image(root / "val" / "fox" / "0.jpg", 0)
    with pytest.raises(UsageError, match=r"only in train: none; only in val: fox"):
        build_data(recipe(tmp_path, source="imagefolder", path=str(root)))


# ilsvrc


def ilsvrc_tree(root: Path) -> list[str]:
    """Kaggle layout with three wnids, 2 train and 2 val images each; returns the val labels in file order."""
    wnids = ["n01000003", "n01000001", "n01000002"]  # not sorted: class order must come from sorting
    sorted_wnids = sorted(wnids)
    val_labels = []
    for number, wnid in enumerate(wnids * 2, start=1):
        label = sorted_wnids.index(wnid)
        write_image(root / "Data/CLS-LOC/train" / wnid / f"{wnid}_{number}.JPEG", label)
        write_image(root / "Data/CLS-LOC/val" / f"ILSVRC2012_val_{number:08d}.JPEG", label)
        val_labels.append(wnid)
    return val_labels


def write_label_file(root: Path, style: str, labels: list[str]) -> None:
    ids = [f"ILSVRC2012_val_{number:08d}" for number in range(1, len(labels) + 1)]
    if style == "kaggle_csv":
        rows = [
            f"{image_id},{wnid} 10 20 30 40 {wnid} 1 2 3 4"
            for image_id, wnid in zip(ids, labels, strict=True)
        ]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    elif style == "id_wnid_lines":
        lines = [f"{image_id}.JPEG {wnid}" for image_id, wnid in zip(ids, labels, strict=True)]
        (root / "val_labels.txt").write_text("\n".join(reversed(lines)) + "\n")
    else:
        (root / "val_labels.txt").write_text("\n".join(labels) + "\n")


@pytest.mark.parametrize("style", ["kaggle_csv", "id_wnid_lines", "wnid_per_line"])
def test_ilsvrc_labels_flat_val_from_each_label_file(tmp_path: Path, style: str) -> None:
    labels = ilsvrc_tree(tmp_path / "imagenet")
    write_label_file(tmp_path / "imagenet", style, labels)
    bundle = build_data(recipe(tmp_path, source="ilsvrc", path=str(tmp_path / "imagenet")))
    assert bundle.class_names == ["n01000001", "n01000002", "n01000003"]
    assert (bundle.train_size, bundle.val_size) == (6, 6)
    assert_batches_match_labels(bundle.train.dataloader, 4)  # drop_last: one full batch of 4 from 6
    assert_batches_match_labels(bundle.val, 6)


def test_ilsvrc_synset_mapping_gives_unique_human_names(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    write_label_file(root, "kaggle_csv", ilsvrc_tree(root))
    (root / "LOC_synset_mapping.txt").write_text(
        "n01000001 crane\nn01000002 tench, Tinca tinca\nn01000003 crane\n", encoding="utf-8"
    )
    bundle = build_data(recipe(tmp_path, source="ilsvrc", path=str(root)), train=False)
    assert bundle.class_names == ["crane (n01000001)", "tench", "crane (n01000003)"]


def test_ilsvrc_label_file_with_numbers_is_explained(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    ilsvrc_tree(root)
    (root / "val_labels.txt").write_text("".join(f"ILSVRC2012_val_{n:08d} {n}\n" for n in range(1, 7)))
    with pytest.raises(UsageError, match=r"gives '1' for ILSVRC2012_val_00000001\.JPEG.*must be wnids"):
        build_data(recipe(tmp_path, source="ilsvrc", path=str(root)))


def test_ilsvrc_without_label_file_says_which_files_work(tmp_path: Path) -> None:
    ilsvrc_tree(tmp_path / "imagenet")
    with pytest.raises(UsageError, match=r"LOC_val_solution\.csv.*val_labels\.txt"):
        build_data(recipe(tmp_path, source="ilsvrc", path=str(tmp_path / "imagenet")))


# hf


def save_hf_dataset(path: Path, train_per_class: int = 4, val_per_class: int = 2) -> Path:
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["r", "g", "b"])}
    )

    def split(per_class: int) -> datasets.Dataset:
        labels = [label for label in range(3) for _ in range(per_class)]
        images = [Image.new("RGB", (24, 20), COLOURS[label]) for label in labels]
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    datasets.DatasetDict(train=split(train_per_class), validation=split(val_per_class)).save_to_disk(
        str(path)
    )
    return path


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf_dataset(tmp_path_factory.mktemp("hf") / "saved")


def test_map_style_datasets_pickle_for_spawned_workers(tmp_path: Path, hf_folder: Path) -> None:
    for config in (
        recipe(tmp_path, source="hf", path=str(hf_folder), val_split="validation"),
        recipe(tmp_path, source="synthetic", num_classes=3),
    ):
        dataset = build_data(config).val.dataloader.dataset
        image, label = pickle.loads(pickle.dumps(dataset))[1]
        assert image.shape == (3, RESOLUTION, RESOLUTION)
        assert label == dataset.samples[1][1]


# synthetic


def test_synthetic_images_are_deterministic_and_sized(tmp_path: Path) -> None:
    config = recipe(
        tmp_path, source="synthetic", num_classes=5, synthetic_train_samples=12, synthetic_val_samples=8
    )
    bundle = build_data(config)
    assert (bundle.num_classes, bundle.train_size, bundle.val_size) == (5, 12, 8)
    first_images, first_labels = next(iter(bundle.val.dataloader))
    again_images, _ = next(iter(build_data(config).val.dataloader))
    assert first_images.shape == (4, 3, RESOLUTION, RESOLUTION)
    assert first_labels.tolist() == [0, 1, 2, 3]
    assert torch.equal(first_images, again_images)
    train_image = bundle.train.dataloader.dataset.load(0)
    assert train_image.mode == "RGB"
    assert train_image.size == (RESOLUTION, RESOLUTION)  # made at the train resolution: no resize needed


# digits


@pytest.fixture(scope="module")
def digits_recipe(tmp_path_factory: pytest.TempPathFactory):
    return recipe(tmp_path_factory.mktemp("digits"), source="digits", digits_val_fraction=0.2)


def test_digits_split_all_1797_scans_stratified(digits_recipe) -> None:
    bundle = build_data(digits_recipe)
    assert bundle.class_names == [str(digit) for digit in range(10)]
    assert bundle.train_size + bundle.val_size == 1797
    assert bundle.val_size == 360
    train_counts = Counter(bundle.train.dataloader.dataset.targets)
    val_counts = Counter(bundle.val.dataloader.dataset.targets)
    for digit in range(10):
        assert abs(val_counts[digit] - 0.2 * (train_counts[digit] + val_counts[digit])) <= 1
    images, labels = next(iter(bundle.val.dataloader))
    assert images.shape == (4, 3, RESOLUTION, RESOLUTION)
    assert labels.tolist() == [0, 0, 0, 0]


def test_digits_cache_is_reused(digits_recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    build_data(digits_recipe)

    def must_not_write(*args: object) -> None:
        raise AssertionError("the digits cache was written again")

    monkeypatch.setattr(digits, "write_digits", must_not_write)
    assert build_data(digits_recipe).val_size == 360


def test_interrupted_digits_write_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(folder: Path, *args: object) -> None:
        (folder / "train").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(digits, "write_digits", interrupted)
    with pytest.raises(KeyboardInterrupt):
        digits.ensure_digits_folder(tmp_path, 0.2, seed=1)
    assert list(tmp_path.iterdir()) == []
