"""Subsets: balanced over classes, seeded, named sizes, max_classes identical in train and val, and validation
subsets (``data.val_subset_size``) drawn the same way."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from data import build_data
from data.samples import Catalog, Split
from data.subsets import SUBSET_SIZES, balanced_subset, parse_subset_size, subset_catalog
from recipes.errors import UsageError
from recipes.schema import DataConfig, RecipeConfig


def labelled(per_class: list[int]) -> list[tuple[str, int]]:
    """Samples named '<label>-<i>' with the given number per class."""
    return [(f"{label}-{i}", label) for label, count in enumerate(per_class) for i in range(count)]


def catalog(per_class_train: list[int], per_class_val: list[int]) -> Catalog:
    classes = [f"c{label}" for label in range(len(per_class_train))]
    return Catalog(classes, Split(labelled(per_class_train), str), Split(labelled(per_class_val), str))


def data_config(**overrides: object):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), overrides)


@pytest.mark.parametrize(
    ("value", "total"),
    [("tiny", 1000), ("small", 10_000), ("medium", 100_000), ("large", 500_000), ("full", None)],
)
def test_named_sizes(value: str, total: int | None) -> None:
    assert parse_subset_size(value) == total


def test_number_string_is_a_total() -> None:
    assert parse_subset_size("2500") == 2500


def test_bad_size_lists_the_names() -> None:
    with pytest.raises(UsageError, match=r"data\.subset_size=huge.*tiny=1000.*full=all"):
        parse_subset_size("huge")


def test_subset_is_balanced_within_one_and_hits_the_total() -> None:
    chosen = balanced_subset(labelled([50] * 10), total=25, per_class_cap=None, seed=0)
    counts = Counter(label for _, label in chosen)
    assert sum(counts.values()) == 25
    assert max(counts.values()) - min(counts.values()) <= 1
    assert len(counts) == 10


def test_short_classes_give_all_they_have_and_others_make_up_the_total() -> None:
    chosen = balanced_subset(labelled([2, 40, 40, 40]), total=40, per_class_cap=None, seed=0)
    counts = Counter(label for _, label in chosen)
    assert counts[0] == 2
    assert sorted(counts[label] for label in (1, 2, 3)) == [12, 13, 13]


def test_same_seed_same_subset_other_seed_other_subset() -> None:
    samples = labelled([30] * 5)
    first = balanced_subset(samples, total=20, per_class_cap=None, seed=1)
    assert first == balanced_subset(samples, total=20, per_class_cap=None, seed=1)
    assert first != balanced_subset(samples, total=20, per_class_cap=None, seed=2)


def test_per_class_cap_limits_every_class() -> None:
    chosen = balanced_subset(labelled([5, 30, 30]), total=None, per_class_cap=10, seed=0)
    assert Counter(label for _, label in chosen) == {0: 5, 1: 10, 2: 10}


def test_max_classes_keeps_first_classes_with_the_same_labels_in_train_and_val() -> None:
    result = subset_catalog(catalog([20] * 6, [4] * 6), data_config(max_classes=3, subset_size="30"), seed=0)
    assert result.classes == ["c0", "c1", "c2"]
    train_labels = Counter(label for _, label in result.train.samples)
    assert train_labels == {0: 10, 1: 10, 2: 10}
    assert Counter(label for _, label in result.val.samples) == {0: 4, 1: 4, 2: 4}
    # A sample keeps the label of its class folder, so 'c1' means the same images in both splits.
    assert all(name.startswith(f"{label}-") for name, label in result.train.samples + result.val.samples)


def test_full_without_limits_returns_the_catalog_unchanged() -> None:
    original = catalog([3, 3], [1, 1])
    assert subset_catalog(original, data_config(), seed=0) is original


def test_max_classes_above_class_count_says_how_many_there_are() -> None:
    with pytest.raises(UsageError, match=r"data\.max_classes=9.*only 2 classes"):
        subset_catalog(catalog([3, 3], [1, 1]), data_config(max_classes=9), seed=0)


# validation subsets (data.val_subset_size)


def test_val_subset_is_balanced_seeded_and_leaves_training_alone() -> None:
    original = catalog([6] * 4, [10] * 4)
    first = subset_catalog(original, data_config(val_subset_size="9"), seed=3)
    counts = Counter(label for _, label in first.val.samples)
    assert sum(counts.values()) == 9 and max(counts.values()) - min(counts.values()) <= 1 and len(counts) == 4
    assert first.train is original.train
    assert first.val.samples == subset_catalog(original, data_config(val_subset_size="9"), seed=3).val.samples
    assert first.val.samples != subset_catalog(original, data_config(val_subset_size="9"), seed=4).val.samples


def test_val_subset_takes_named_sizes_and_full_keeps_every_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SUBSET_SIZES, "tiny", 4)
    result = subset_catalog(catalog([6] * 4, [10] * 4), data_config(val_subset_size="tiny"), seed=0)
    assert Counter(label for _, label in result.val.samples) == {0: 1, 1: 1, 2: 1, 3: 1}
    result = subset_catalog(
        catalog([6] * 4, [10] * 4), data_config(val_subset_size="full", subset_size="8"), seed=0
    )
    assert len(result.val.samples) == 40


def test_val_subset_is_drawn_from_the_kept_classes() -> None:
    config = data_config(max_classes=2, val_subset_size="6")
    result = subset_catalog(catalog([6] * 4, [10] * 4), config, seed=0)
    assert Counter(label for _, label in result.val.samples) == {0: 3, 1: 3}


def test_bad_val_subset_size_names_its_key() -> None:
    with pytest.raises(UsageError, match=r"data\.val_subset_size=huge.*tiny=1000"):
        subset_catalog(catalog([3, 3], [1, 1]), data_config(val_subset_size="huge"), seed=0)


def test_val_subset_of_an_image_folder_through_build_data(tmp_path: Path) -> None:
    for split, per_class in (("train", 2), ("val", 5)):
        for label in range(3):
            for index in range(per_class):
                path = tmp_path / "images" / split / f"c{label}" / f"{index}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (label, index, 0)).save(path)

    def val_files(seed: int) -> list[str]:
        settings = {"source": "imagefolder", "path": str(tmp_path / "images"), "val_subset_size": "6"}
        settings.update(num_workers=0, index_cache=False, train_resolution=8, eval_resolution=8)
        config = OmegaConf.merge(
            OmegaConf.structured(RecipeConfig), {"seed": seed, "global_batch_size": 2, "data": settings}
        )
        bundle = build_data(config)
        assert (bundle.train_size, bundle.val_size) == (6, 6)
        dataset = bundle.val.dataloader.dataset
        assert Counter(dataset.targets) == {0: 2, 1: 2, 2: 2}
        return [Path(path).relative_to(tmp_path).as_posix() for path, _ in dataset.samples]

    assert val_files(seed=0) == val_files(seed=0)
    assert val_files(seed=0) != val_files(seed=1)
