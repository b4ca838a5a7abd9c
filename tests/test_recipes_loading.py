"""Recipe loading: bases, overrides, strict validation with key paths and suggestions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from recipes.errors import UsageError
from recipes.loading import (
    RECIPES_DIR,
    available_recipes,
    load_recipe,
    recipe_to_yaml,
    resolve_recipe_path,
)

SHIPPED = ["smoke", "colab", "g4dn_xlarge", "g4dn_12xlarge", "troubleshoot_subset"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_every_phase_recipe_ships_and_loads() -> None:
    assert set(SHIPPED) <= set(available_recipes())
    for name in SHIPPED:
        config = load_recipe(name)
        assert config.global_batch_size > 0


def test_every_multi_gpu_recipe_resumes_under_a_run_name_of_its_own() -> None:
    """A recipe sized for several GPUs runs for hours on instances spot can interrupt: relaunched unchanged, it
    must find its own checkpoints (autoresume under a fixed run_name, which train.py's check accepts), and no
    two recipes may share a run folder."""
    from training.checkpointing import check_autoresume
    from training.hardware import parse_hardware

    run_names: dict[str, str] = {}
    for name in available_recipes():
        config = load_recipe(name)
        hardware = parse_hardware(config.hardware)
        if hardware is None or hardware.device != "gpu" or hardware.world_size == 1:
            continue
        assert config.autoresume is True, f"{name}: autoresume is {config.autoresume}"
        check_autoresume(config)  # raises without a fixed run_name
        run_names[name] = config.run_name
    assert len(set(run_names.values())) == len(run_names), run_names


def test_default_recipe_is_smoke_on_bundled_digits() -> None:
    config = load_recipe(None)
    assert resolve_recipe_path(None).name == "smoke.yaml"
    assert config.data.source == "digits"


def test_override_changes_nested_value_with_its_type() -> None:
    config = load_recipe(
        "smoke", ["optimizer.base_lr=0.05", "data.path=/data/imagenet", "data.num_workers=3"]
    )
    assert config.optimizer.base_lr == pytest.approx(0.05)
    assert config.data.path == "/data/imagenet"
    assert config.data.num_workers == 3


def test_unknown_key_names_full_path_and_suggests() -> None:
    with pytest.raises(UsageError, match=r"Unknown key 'data\.num_worker'.*Did you mean 'num_workers'"):
        load_recipe("smoke", ["data.num_worker=4"])


def test_unknown_top_level_key_in_file_names_file(tmp_path: Path) -> None:
    recipe = write(tmp_path / "r.yaml", "max_durration: 3ep\n")
    with pytest.raises(UsageError, match=r"max_durration.*r\.yaml.*Did you mean 'max_duration'"):
        load_recipe(recipe)


def test_wrong_type_names_key() -> None:
    with pytest.raises(UsageError, match=r"data\.num_workers"):
        load_recipe("smoke", ["data.num_workers=many"])


def test_bad_choice_suggests() -> None:
    with pytest.raises(UsageError, match=r"precision.*Did you mean 'amp_fp16'"):
        load_recipe("smoke", ["precision=amp_fp61"])


def test_bad_time_string_names_key() -> None:
    with pytest.raises(UsageError, match=r"max_duration.*Composer time"):
        load_recipe("smoke", ["max_duration=ten"])


def test_malformed_override() -> None:
    with pytest.raises(UsageError, match="key=value"):
        load_recipe("smoke", ["optimizer.base_lr"])


def test_unknown_source_suggests() -> None:
    with pytest.raises(UsageError, match=r"data\.source.*Did you mean 'imagefolder'"):
        load_recipe("smoke", ["data.source=imagefoldr"])


def test_missing_recipe_lists_available() -> None:
    with pytest.raises(UsageError, match="smoke"):
        load_recipe("no_such_recipe")


def test_base_is_merged_under_recipe(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "global_batch_size: 64\nmax_duration: 7ep\n")
    recipe = write(tmp_path / "child.yaml", "base: base.yaml\nmax_duration: 2ep\n")
    config = load_recipe(recipe)
    assert config.global_batch_size == 64
    assert config.max_duration == "2ep"


def test_base_cycle_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(UsageError, match="builds on itself"):
        load_recipe(tmp_path / "a.yaml")


def test_named_algorithm_set_is_reused_and_can_be_switched_off(tmp_path: Path) -> None:
    recipe = write(tmp_path / "r.yaml", f"base: {RECIPES_DIR / 'algorithm_sets' / 'medium.yaml'}\n")
    config = load_recipe(recipe, ["algorithms.mixup=null"])
    assert "blurpool" in config.algorithms and "sam" in config.algorithms
    assert config.algorithms.mixup is None


def test_print_config_shows_resolved_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    import train

    assert train.main(["smoke", "optimizer.base_lr=0.3", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "base_lr: 0.3" in out and "source: digits" in out


def test_print_config_shows_the_lr_and_weight_decay_applied_at_the_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The recipe keeps the per-256 LR and the decay tuned at 2048; what batch 1024 applies follows as comments,
    so the output still loads as the same recipe."""
    import train

    assert train.main(["g4dn_12xlarge", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "#   LR 1.024 = base_lr 0.256 per 256 images x 4" in out
    assert "#   weight decay 0.00025 = 0.0005 tuned at batch 2048 x 0.5" in out
    printed = write(tmp_path / "printed.yaml", out)
    assert recipe_to_yaml(load_recipe(printed)) == recipe_to_yaml(load_recipe("g4dn_12xlarge"))


def test_print_config_shows_what_the_run_reads_and_all_with_a_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A supervised recipe's --print-config leaves MoCo's section and the switched-off profiler's settings out;
    --all shows them; either output, loaded back as a recipe, is the same run."""
    import train

    assert train.main(["smoke", "--print-config"]) == 0
    shown = capsys.readouterr().out
    assert train.main(["smoke", "--print-config", "--all"]) == 0
    everything = capsys.readouterr().out
    assert "moco" not in yaml.safe_load(shown) and "moco" in yaml.safe_load(everything)
    assert yaml.safe_load(shown)["profiler"] == {"enabled": False}
    assert "#   weight decay" in shown and "#   weight decay" in everything
    full = recipe_to_yaml(load_recipe("smoke"))
    for printed in (shown, everything):
        assert recipe_to_yaml(load_recipe(write(tmp_path / "printed.yaml", printed))) == full


def test_train_cli_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    import train

    assert train.main(["smoke", "data.sorce=digits"]) == 2
    assert "Did you mean 'source'" in capsys.readouterr().err


@pytest.mark.parametrize("length", ["-4ba", "0", "0ep", "0.0dur"])
def test_a_max_duration_that_trains_nothing_is_refused(length: str) -> None:
    with pytest.raises(UsageError, match=rf"'max_duration' is '{re.escape(length)}', which trains nothing"):
        load_recipe("smoke", [f"max_duration={length}"])


def test_a_mistyped_recipe_name_gets_a_did_you_mean() -> None:
    with pytest.raises(UsageError, match=r"Recipe 'g4dn_xlarg' not found\. Did you mean 'g4dn_xlarge'\?"):
        resolve_recipe_path("g4dn_xlarg")
