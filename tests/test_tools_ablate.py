"""tools.ablate: a study is checked whole before anything runs, runs as ordinary trainings that survive an
interruption and a failing variant, and reports differences with intervals whose verdicts follow the stated rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy import stats

from recipes.errors import UsageError
from recipes.studies import load_study
from tools import ablate
from tools.ablation_results import HELPS, HURTS, WITHIN_NOISE, paired_difference
from training.preflight import load_run_recipe

ROOT = Path(__file__).resolve().parent.parent


def study_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def check(path: Path) -> None:
    ablate.check_study(load_study(path))


def test_unknown_study_key_is_named(tmp_path: Path) -> None:
    path = study_file(tmp_path, "recipe: smoke\nseed: [0, 1]\nvariants: {a: {model.head: conv1x1}}\n")
    with pytest.raises(UsageError, match=r"Unknown key 'seed' in study file .*Did you mean 'seeds'"):
        load_study(path)


def test_unknown_recipe_key_in_a_variant_names_the_variant_and_key(tmp_path: Path) -> None:
    path = study_file(
        tmp_path,
        "recipe: smoke\nvariants:\n  good: {model.head: conv1x1}\n  typo: {optimizer.base_rl: 0.1}\n",
    )
    with pytest.raises(UsageError, match=r"variant 'typo'.*Unknown key 'optimizer.base_rl'.*base_lr"):
        check(path)


def test_unknown_algorithm_in_a_helper_is_named(tmp_path: Path) -> None:
    path = study_file(tmp_path, "recipe: smoke\none_at_a_time: {add: {mixpu: {}}}\n")
    with pytest.raises(UsageError, match=r"variant 'plus_mixpu'.*algorithms.mixpu.*mixup"):
        check(path)


def test_duplicate_variant_names_fail(tmp_path: Path) -> None:
    written_twice = study_file(
        tmp_path,
        "recipe: smoke\nvariants:\n  a: {model.head: conv1x1}\n  a: {model.zero_init_residual: false}\n",
    )
    with pytest.raises(UsageError, match="duplicate key"):
        load_study(written_twice)
    helper_collides = study_file(
        tmp_path, "recipe: smoke\nvariants: {plus_blurpool: {}}\none_at_a_time: {add: {blurpool: {}}}\n"
    )
    with pytest.raises(UsageError, match=r"'plus_blurpool' in study file .* is defined twice"):
        load_study(helper_collides)


def test_the_study_owns_seeds_and_folders(tmp_path: Path) -> None:
    path = study_file(tmp_path, "recipe: smoke\nvariants: {a: {seed: 3}}\n")
    with pytest.raises(UsageError, match=r"Variant 'a'.*sets 'seed'.*seeds"):
        load_study(path)


def test_a_variant_that_changes_nothing_is_refused(tmp_path: Path) -> None:
    # The smoke recipe has no MixUp, so "base minus MixUp" would compare the base with itself.
    path = study_file(tmp_path, "recipe: smoke\none_at_a_time: {remove: [mixup]}\n")
    with pytest.raises(UsageError, match="variant 'no_mixup' trains the same recipe as the base"):
        check(path)


def test_one_at_a_time_writes_plus_and_minus_variants(tmp_path: Path) -> None:
    path = study_file(
        tmp_path,
        "recipe: g4dn_xlarge\none_at_a_time:\n  remove: [blurpool]\n  add: {label_smoothing: {smoothing: 0.2}}\n",
    )
    study = load_study(path)
    ablate.check_study(study)
    configs = {
        variant.name: load_run_recipe(study.recipe, list(variant.overrides)) for variant in study.variants
    }
    assert configs["base"].algorithms.blurpool is not None
    assert configs["no_blurpool"].algorithms.blurpool is None
    assert configs["plus_label_smoothing"].algorithms.label_smoothing.smoothing == 0.2
    # Each variant changes its one algorithm and keeps the base's others.
    others = {name: value for name, value in configs["base"].algorithms.items() if name != "blurpool"}
    assert {name: configs["no_blurpool"].algorithms[name] for name in others} == others


def test_paired_interval_is_students_on_the_per_seed_differences() -> None:
    base = {0: 0.80, 1: 0.84, 2: 0.78}
    better = {0: 0.83, 1: 0.86, 2: 0.82}
    difference = paired_difference(better, base, 0.95)
    expected = stats.ttest_rel(list(better.values()), list(base.values())).confidence_interval(0.95)
    assert difference.low == pytest.approx(expected.low)
    assert difference.high == pytest.approx(expected.high)
    assert difference.verdict == HELPS
    # The seeds' spread (0.78 to 0.84) is larger than the gain, but pairing removes it.
    assert paired_difference({0: 0.77, 1: 0.82, 2: 0.75}, base, 0.95).verdict == HURTS
    assert paired_difference({0: 0.82, 1: 0.83, 2: 0.79}, base, 0.95).verdict == WITHIN_NOISE


def test_unpaired_interval_when_seeds_do_not_match() -> None:
    difference = paired_difference({5: 0.90, 6: 0.92}, {0: 0.80, 1: 0.81}, 0.95)
    welch = stats.ttest_ind([0.90, 0.92], [0.80, 0.81], equal_var=False).confidence_interval(0.95)
    assert difference.method == "Welch t"
    assert (difference.low, difference.high) == pytest.approx((welch.low, welch.high))
    assert paired_difference({0: 0.9}, {0: 0.8}, 0.95).verdict == "too few seeds"


def test_plan_prints_every_variant_and_the_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study_file(
        tmp_path,
        "recipe: g4dn_xlarge\nseeds: [0, 1, 2]\none_at_a_time: {remove: [blurpool]}\n",
    )
    assert ablate.main([str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "base" in out and "no_blurpool" in out and "x 3 seeds" in out
    assert "total:" in out and "$" in out.splitlines()[-1]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "recipes" / "studies").glob("*.yaml")), ids=lambda path: path.stem
)
def test_shipped_studies_are_valid(path: Path) -> None:
    study = load_study(path)
    ablate.check_study(study)
    assert len(study.variants) >= 4 and len(study.seeds) >= 3


def test_command_line_overrides_reach_every_run_but_not_over_a_variant(tmp_path: Path) -> None:
    path = study_file(tmp_path, "recipe: smoke\nvariants: {small: {data.train_resolution: 24}}\n")
    study = load_study(path, ["data.train_resolution=40", "data.path=/data/mine"])
    configs = [load_run_recipe(study.recipe, list(variant.overrides)) for variant in study.variants]
    assert [config.data.path for config in configs] == ["/data/mine", "/data/mine"]
    assert [config.data.train_resolution for config in configs] == [40, 24]
    with pytest.raises(UsageError, match="The command line sets 'seed'"):
        load_study(path, ["seed=4"])
