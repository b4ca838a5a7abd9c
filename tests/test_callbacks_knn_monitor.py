"""The k-NN monitor (callbacks.knn_monitor), its bank (data.loaders), and progress.png (callbacks.progress_plot).

The classifier is checked against hand-computed votes; the monitor in real (tiny) MoCo v3 runs on the digits:
``knn/acc1`` logged at its interval, the model back in train mode, and a run with the monitor training exactly as
one without it (every loss, every RNG state at every step, every weight and BatchNorm statistic).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from composer.core import Callback, State
from composer.loggers import Logger
from PIL import Image

import train
from callbacks.knn_monitor import KNN_ACC1, KnnMonitor, correct_counts, knn_votes, ranked_classes
from callbacks.metric_names import TRAIN_LOSS
from callbacks.progress_plot import OUTPUT_STD_RATIO, PROGRESS_PLOT, ProgressPlot, plot_progress, read_series
from data import build_data
from training import trainer
from training.preflight import load_run_recipe

BUILD_TRAINER = trainer.build_trainer

# ---------------------------------------------------------------------------------------------------------------
# the classifier


def unit(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_votes_are_exp_similarity_over_t_of_the_k_nearest() -> None:
    bank = unit((1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (0.8, 0.6))  # cosines with (1, 0): 1, 0, 0.6, 0.8
    labels = torch.tensor([0, 1, 1, 0])
    votes = knn_votes(unit((1.0, 0.0)), bank, labels, num_classes=3, k=3, temperature=0.5)
    # The three nearest: bank 0 (1.0, class 0), bank 3 (0.8, class 0), bank 2 (0.6, class 1); bank 1 left out.
    expected = torch.tensor([math.exp(1.0 / 0.5) + math.exp(0.8 / 0.5), math.exp(0.6 / 0.5), 0.0])
    torch.testing.assert_close(votes[0] / votes[0].sum(), expected / expected.sum())


def test_the_temperature_lets_one_close_neighbour_outvote_two_far_ones() -> None:
    bank = unit((1.0, 0.0), (0.6, 0.8), (0.6, 0.8))  # class 0 at cosine 1.0, class 1 twice at 0.6
    labels = torch.tensor([0, 1, 1])
    query = unit((1.0, 0.0))
    sharp = knn_votes(query, bank, labels, num_classes=2, k=3, temperature=0.1)  # e^10 against 2 e^6
    flat = knn_votes(query, bank, labels, num_classes=2, k=3, temperature=100.0)  # ~1 against ~2
    assert ranked_classes(sharp)[0, 0] == 0 and ranked_classes(flat)[0, 0] == 1


def test_a_tie_goes_to_the_lower_class_and_k_beyond_the_bank_takes_all_of_it() -> None:
    bank = unit((0.6, 0.8), (0.6, -0.8))  # equally similar to (1, 0)
    labels = torch.tensor([2, 1])
    votes = knn_votes(unit((1.0, 0.0)), bank, labels, num_classes=4, k=50, temperature=0.07)
    torch.testing.assert_close(votes, torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    assert ranked_classes(votes)[0, :2].tolist() == [1, 2]
    top1, top5 = correct_counts(votes, torch.tensor([2]))
    assert not top1 and top5
    # A class no neighbour voted for is never a top-5 guess, even with fewer than five classes voted for.
    assert not correct_counts(votes, torch.tensor([3]))[1]


def test_separable_features_score_one_and_random_features_chance() -> None:
    generator = torch.Generator().manual_seed(0)
    classes, dims = 10, 32
    bank_labels = torch.arange(500) % classes
    query_labels = torch.randint(0, classes, (2000,), generator=generator)

    def planted(labels: torch.Tensor) -> torch.Tensor:
        noise = 0.05 * torch.randn(labels.shape[0], dims, generator=generator)  # norm ~0.3, classes 1.4 apart
        return torch.nn.functional.normalize(torch.eye(dims)[labels] + noise, dim=1)

    votes = knn_votes(
        planted(query_labels), planted(bank_labels), bank_labels, classes, k=20, temperature=0.07
    )
    assert correct_counts(votes, query_labels)[0].float().mean() == 1.0
    noise = [
        torch.nn.functional.normalize(torch.randn(n, dims, generator=generator), dim=1) for n in (500, 2000)
    ]
    votes = knn_votes(noise[1], noise[0], bank_labels, classes, k=20, temperature=0.07)
    assert abs(correct_counts(votes, query_labels)[0].float().mean() - 1 / classes) < 0.035  # 5 sigma: 0.034


# ---------------------------------------------------------------------------------------------------------------
# the bank


def digits_recipe(digits_cache: Path, *overrides: str) -> Any:
    return load_run_recipe(
        "moco_v3_smoke", [f"data.cache_dir={digits_cache}", "data.num_workers=0", *overrides]
    )


def test_the_bank_is_a_balanced_seeded_draw_of_training_images_seen_as_validation_sees_them(
    digits_cache: Path,
) -> None:
    config = digits_recipe(digits_cache, "moco.knn_train_images=50", "global_batch_size=16")
    data = build_data(config)
    dataset = data.knn_bank.dataloader.dataset
    assert np.bincount(dataset.targets).tolist() == [5] * 10
    assert dataset.transform is not None and repr(dataset.transform) == repr(
        data.val.dataloader.dataset.transform
    )
    images, _ = next(iter(data.knn_bank.dataloader))
    assert images.shape[1:] == (3, 32, 32)  # one view, not the training pair
    train_files = {path for path, _ in data.train.dataloader.dataset.samples}
    assert {path for path, _ in dataset.samples} <= train_files
    assert dataset.samples == build_data(config).knn_bank.dataloader.dataset.samples
    assert build_data(digits_recipe(digits_cache, "moco.knn_interval=null")).knn_bank is None
    assert build_data(load_run_recipe("smoke", [f"data.cache_dir={digits_cache}"])).knn_bank is None


# ---------------------------------------------------------------------------------------------------------------
# the monitor in a run


class Probe(Callback):
    """At every step's start: whether every module trains, and a fingerprint of the global RNG states; the
    losses and logged k-NN values as the run goes."""

    def __init__(self) -> None:
        self.all_training: list[bool] = []
        self.rng: list[tuple[bytes, bytes, int]] = []
        self.losses: list[float] = []

    def batch_start(self, state: State, logger: Logger) -> None:
        self.all_training.append(all(module.training for module in state.model.modules()))
        numpy_state = np.random.get_state()[1].tobytes()
        self.rng.append((torch.get_rng_state().numpy().tobytes(), numpy_state, hash(random.getstate())))

    def after_loss(self, state: State, logger: Logger) -> None:
        self.losses.append(float(state.loss))


def tiny_run(folder: Path, digits_cache: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> Probe:
    """moco_v3_smoke on resnet18 with small heads: one epoch of 3 steps of 16 images, a k-NN bank of 50 training
    images against 50 validation images, the monitor and the plot wired as trainer.py should."""
    probe = Probe()

    def with_monitor(start: Any, config: Any, data: Any, *args: Any, **arguments: Any) -> Any:
        added: list[Callback] = [probe]
        if data.knn_bank is not None:
            moco = config.moco
            added.append(
                KnnMonitor(data.knn_bank, data.val, data.num_classes, moco.knn_interval, moco.knn_k,
                           moco.knn_temperature)
            )  # fmt: skip
        added.append(ProgressPlot(start.folders.output / "metrics.jsonl"))
        arguments["callbacks"] = [*arguments["callbacks"], *added]
        return BUILD_TRAINER(start, config, data, *args, **arguments)

    monkeypatch.setattr(trainer, "build_trainer", with_monitor)
    status = train.main(
        ["moco_v3_smoke", "model.name=resnet18", "moco.projector_hidden_dim=64", "moco.predictor_hidden_dim=64",
         "moco.output_dim=16", f"data.cache_dir={digits_cache}", "data.num_workers=0", "data.subset_size=48",
         "data.val_subset_size=50", "moco.knn_train_images=50", "global_batch_size=16", "max_duration=1ep",
         "save_interval=1ep", f"save_folder={folder}", "run_name=knn", "logging.progress_bar=false",
         "logging.metrics_every_n_batches=1", "deterministic=true", *overrides]
    )  # fmt: skip
    assert status == 0
    return probe


def knn_lines(folder: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line[KNN_ACC1] for line in lines if KNN_ACC1 in line}


def final_state(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load((folder / "latest-rank0.pt").resolve(), weights_only=False)["state"]["model"]


def test_the_monitor_logs_at_its_interval_and_changes_nothing_the_run_trains_on(
    tmp_path: Path, digits_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched = tiny_run(tmp_path / "watched", digits_cache, monkeypatch, "moco.knn_interval=2ba")
    unwatched = tiny_run(tmp_path / "unwatched", digits_cache, monkeypatch, "moco.knn_interval=null")

    # At step 0 (the random init, the baseline), step 2 (the interval) and the end of training (step 3); 10
    # classes, 50 images: steps of 2 %.
    accuracy = knn_lines(tmp_path / "watched")
    assert sorted(accuracy) == [0, 2, 3] and all(0 <= value <= 1 for value in accuracy.values())
    assert all(round(value * 50) == value * 50 for value in accuracy.values())
    assert knn_lines(tmp_path / "unwatched") == {}
    # Step 3 begins right after a k-NN pass, mid-epoch, where Composer itself sets no mode.
    assert watched.all_training == [True] * 3
    assert watched.losses == unwatched.losses and len(watched.losses) == 3
    assert watched.rng == unwatched.rng
    state, expected = final_state(tmp_path / "watched"), final_state(tmp_path / "unwatched")
    assert [name for name in expected if not torch.equal(state[name], expected[name])] == []

    figure = tmp_path / "watched" / PROGRESS_PLOT
    assert figure.stat().st_size > 10_000
    assert Image.open(figure).size[0] > 500


def test_the_plot_draws_loss_knn_and_the_collapse_signal_when_logged(tmp_path: Path) -> None:
    """A metrics file as MetricsFile writes it: training lines (one resumed step logged twice, a NaN as a string),
    k-NN values in the lines of their steps, and the collapse ratio when the doctor logs it."""
    folder = tmp_path / "run"
    folder.mkdir()
    lines = [{"phase": "train", "step": s, "train/loss": 16.6 - 0.05 * s, "moco/output_std_ratio": 1 - s / 400}
             for s in range(1, 201)]  # fmt: skip
    lines[49]["train/loss"] = "nan"
    for step, value in ((50, 0.3), (100, 0.45), (150, 0.52), (200, 0.6)):
        lines[step - 1][KNN_ACC1] = value
    lines.insert(100, {"phase": "train", "step": 60, "train/loss": 13.5})  # logged again after a resume
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + '\n{"phase": "tr')
    series = read_series(folder / "metrics.jsonl", (TRAIN_LOSS, KNN_ACC1, OUTPUT_STD_RATIO))
    loss = dict(series[TRAIN_LOSS])
    assert (
        len(loss) == 199 and 50 not in loss and loss[60] == 13.5
    )  # the NaN left out, the resumed value kept
    assert series[KNN_ACC1] == [(50, 0.3), (100, 0.45), (150, 0.52), (200, 0.6)]
    assert len(series[OUTPUT_STD_RATIO]) == 200
    with_ratio = plot_progress(folder / "metrics.jsonl", tmp_path / "with.png")
    for line in lines:
        line.pop("moco/output_std_ratio", None)
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    without_ratio = plot_progress(folder / "metrics.jsonl", tmp_path / "without.png")
    # Three panels, or two: the figure's height says which.
    assert Image.open(with_ratio).size[1] > Image.open(without_ratio).size[1] * 1.2
