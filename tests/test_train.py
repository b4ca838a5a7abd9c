"""train.py end to end: the smoke recipe learns, every phase recipe runs, outputs are what the README promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from composer.core import Callback, State
from composer.loggers import Logger

import train
from training.preflight import load_run_recipe
from training.trainer import build_training

SMOKE_ACCURACY_BAR = 0.90


def tiny_synthetic_overrides(folder: Path) -> list[str]:
    """Shrink any recipe to a few batches of synthetic 32 px images, keeping its algorithms and settings."""
    return [
        "data.source=synthetic", "data.num_classes=100", "data.synthetic_train_samples=16",
        "data.synthetic_val_samples=8", "data.train_resolution=32", "data.eval_resolution=32",
        "data.num_workers=0", "global_batch_size=8", "eval_batch_size=8", "max_duration=2ba",
        "eval_interval=2ba", "save_interval=2ba", f"save_folder={folder}", "logging.progress_bar=false",
    ]  # fmt: skip


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_writes_the_promised_outputs(trained_run: dict[str, Any]) -> None:
    """The smoke recipe's folder after a short run: checkpoint, recipe, summary and metrics as the README says."""
    folder: Path = trained_run["folder"]
    assert (folder / "latest-rank0.pt").exists()
    assert "source: digits" in (folder / "recipe.yaml").read_text()
    summary = trained_run["summary"]
    for key in [
        "val/acc1",
        "val/acc5",
        "val/loss",
        "train/loss",
        "wall_time_s",
        "throughput/samples_per_sec",
    ]:
        assert isinstance(summary[key], float), key
    assert summary["weights_evaluated"] == "raw" and summary["steps"] == 10
    assert summary["num_classes"] == 10 and summary["train_images"] + summary["val_images"] == 1797
    lines = read_jsonl(folder / "metrics.jsonl")
    train_lines = [line for line in lines if line["phase"] == "train"]
    eval_lines = [line for line in lines if line["phase"] == "eval"]
    assert {"train/loss", "train/acc1", "lr", "train/grad_norm"} <= set().union(*train_lines)
    assert [line["step"] for line in eval_lines] == [5, 10] and {"val/acc1", "val/acc5", "val/loss"} <= set(
        eval_lines[-1]
    )
    assert eval_lines[-1]["val/acc1"] == pytest.approx(summary["val/acc1"])
    norms = [line["train/grad_norm"] for line in train_lines if "train/grad_norm" in line]  # the doctor's
    assert norms and all(isinstance(norm, float) and norm > 0 for norm in norms)


def test_gpu_precision_falls_back_on_cpu_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = [
        *tiny_synthetic_overrides(tmp_path),
        "precision=amp_fp16",
        "device_train_microbatch_size=auto",
    ]
    assert train.main(["smoke", *overrides]) == 0
    out = capsys.readouterr().out
    assert "precision=amp_fp16 needs a GPU" in out and "microbatch" in out


class Microbatches(Callback):
    """The number of images in each forward pass of training."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def before_forward(self, state: State, logger: Logger) -> None:
        self.sizes.append(len(state.batch[0]))


def one_step(folder: Path, *overrides: str) -> tuple[dict[str, torch.Tensor], list[int]]:
    """One SGD step of the smoke recipe (resnet18, 8 synthetic 16 px images) built as train.py builds it: the
    parameters' change and the size of each forward pass. BatchNorm normalises in ghost batches of 2 images,
    so a microbatch of 2 sees the statistics the whole batch does; no warmup (its first LR is 0) and no weight
    decay, so the change is the gradient's alone."""
    config = load_run_recipe(
        "smoke",
        [
            "model.name=resnet18", "data.source=synthetic", "data.num_classes=4", "data.synthetic_train_samples=8",
            "data.synthetic_val_samples=4", "data.train_resolution=16", "data.eval_resolution=16",
            "data.num_workers=0", "global_batch_size=8", "max_duration=1ba", "eval_interval=1ba",
            "save_interval=1ba", f"save_folder={folder}", "logging.progress_bar=false",
            "optimizer.name=decoupled_sgdw", "optimizer.weight_decay=0", "scheduler.t_warmup=0ba",
            "algorithms.ghost_batchnorm.ghost_batch_size=2", *overrides,
        ],
    )  # fmt: skip
    run = build_training(config, Path("smoke.yaml"))
    microbatches = Microbatches()
    run.trainer.state.callbacks.append(microbatches)
    model = run.trainer.state.model
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    run.trainer.fit()
    change = {name: value.detach() - before[name] for name, value in model.named_parameters()}
    return change, microbatches.sizes


@pytest.mark.filterwarnings("ignore:The warmup duration is 0")
def test_microbatching_accumulates_gradients(tmp_path: Path) -> None:
    """A batch of 8 in microbatches of 2 runs four forward passes of 2 images and makes the update the whole
    batch in one pass makes (the same start: both runs are seeded alike)."""
    whole, whole_passes = one_step(tmp_path / "whole")
    split, split_passes = one_step(tmp_path / "split", "device_train_microbatch_size=2")
    assert (whole_passes, split_passes) == ([8], [2, 2, 2, 2])
    differences = {name: float((change - whole[name]).abs().max()) for name, change in split.items()}
    worst = max(differences, key=differences.__getitem__)
    # Measured: the largest change 8e-3; the two runs' changes 1.5e-8 apart at most (summation order), and
    # 2.7e-3 apart when each microbatch's backward starts from zero gradients (only the last one's is kept).
    assert max(float(change.abs().max()) for change in whole.values()) > 1e-3
    assert differences[worst] < 1e-6, (worst, differences[worst])


def test_wandb_offline_writes_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = [*tiny_synthetic_overrides(tmp_path), "logging.wandb=true", "logging.wandb_mode=offline"]
    assert train.main(["smoke", *overrides]) == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and any(runs[0].rglob("*.wandb"))


def test_indivisible_microbatch_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main(["smoke", *tiny_synthetic_overrides(tmp_path), "device_train_microbatch_size=3"]) == 2
    assert "does not divide" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("max_duration", "eval_interval", "evaluations"),
    [("4ba", "2ba", 2), ("4ba", "3ba", 2), ("4ba", "8ba", 1)],
)
def test_the_final_weights_are_evaluated_once(
    max_duration: str, eval_interval: str, evaluations: int, tmp_path: Path
) -> None:
    """Composer evaluates at the end of training as well as at each interval; train.py must not do it again."""
    overrides = [
        *tiny_synthetic_overrides(tmp_path),
        f"max_duration={max_duration}",
        f"eval_interval={eval_interval}",
    ]
    assert train.main(["smoke", *overrides]) == 0
    eval_steps = [line["step"] for line in read_jsonl(tmp_path / "metrics.jsonl") if line["phase"] == "eval"]
    assert len(eval_steps) == evaluations and eval_steps[-1] == 4, eval_steps
    summary = json.loads((tmp_path / "summary.json").read_text())
    last_eval = [line for line in read_jsonl(tmp_path / "metrics.jsonl") if line["phase"] == "eval"][-1]
    assert summary["val/acc1"] == pytest.approx(last_eval["val/acc1"])


def test_a_bad_data_path_stops_before_any_checkpoint_folder_is_announced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error is the one line printed: no 'checkpoints: <folder>' for a folder the run never makes."""
    folder = tmp_path / "out"
    assert (
        train.main(
            ["smoke", "data.source=imagefolder", f"data.path={tmp_path / 'absent'}", f"save_folder={folder}"]
        )
        == 2
    )
    captured = capsys.readouterr()
    assert "absent" in captured.err and "checkpoints:" not in captured.out + captured.err
    assert not folder.exists()


def test_help_and_a_mistyped_key_answer_before_the_training_stack_loads() -> None:
    """``train.py --help``, ``evaluate.py --help`` and a recipe's schema error, in a fresh interpreter, import
    neither torch nor Composer (seconds of imports they do not need)."""
    probe = "\n".join(
        [
            "import sys, evaluate, train",
            "for main in (train.main, evaluate.main):",
            "    try:",
            "        main(['--help'])",
            "    except SystemExit as stop:",
            "        assert stop.code == 0",
            "assert train.main(['smoke', 'optimizer.bse_lr=1']) == 2",
            "print('loaded:', sorted({name.split('.')[0] for name in sys.modules} & {'torch', 'composer'}))",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--print-config" in result.stdout and "--checkpoint" in result.stdout
    assert "Did you mean 'base_lr'" in result.stderr
    assert result.stdout.splitlines()[-1] == "loaded: []"
