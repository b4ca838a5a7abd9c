"""Training subsets: balanced over classes, seeded, named sizes, and max_classes identical in train and val."""

from __future__ import annotations

from collections import Counter

import pytest
from omegaconf import OmegaConf

from data.samples import Catalog, Split
from data.subsets import balanced_subset, parse_subset_size, subset_catalog
from recipes.errors import UsageError
from recipes.schema import DataConfig


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
