"""MoCo v3 pretraining resumes exactly like a supervised run: SIGTERM mid-epoch, relaunch with autoresume, and the
base encoder, momentum encoder, queue and every logged loss and momentum equal a run that was never stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import train
from callbacks.preemption import PREEMPTED_EXIT_STATUS
from tests.test_callbacks_preemption import keep_torch_settings, sigterm_during_batch  # noqa: F401

BATCH, BATCHES_PER_EPOCH, EPOCHS = 8, 3, 2
STEPS = BATCHES_PER_EPOCH * EPOCHS


def recipe(folder: Path, digits_cache: Path, *extra: str) -> list[str]:
    """moco_v3_smoke on resnet18 with small heads and a queue (so it is checkpointed too), deterministic, a
    checkpoint every two batches and a metrics line every batch; no k-NN monitor (it changes nothing trained, and
    tests/test_callbacks_knn_monitor.py covers it)."""
    return [
        "moco_v3_smoke", "model.name=resnet18", "moco.projector_hidden_dim=64", "moco.predictor_hidden_dim=64",
        "moco.output_dim=16", "moco.queue_size=20", "moco.knn_interval=null", "deterministic=true",
        f"data.cache_dir={digits_cache}",
        f"data.subset_size={BATCH * BATCHES_PER_EPOCH}", "data.num_workers=0", f"global_batch_size={BATCH}",
        f"max_duration={EPOCHS}ep", "save_interval=2ba", f"save_folder={folder}", "run_name=moco-resume",
        "logging.progress_bar=false", "logging.metrics_every_n_batches=1", *extra,
    ]  # fmt: skip


def final_state(folder: Path) -> dict[str, torch.Tensor]:
    latest = (folder / "latest-rank0.pt").resolve()
    assert latest.name.endswith(f"-ba{STEPS}-rank0.pt"), latest.name
    return torch.load(latest, weights_only=False)["state"]["model"]


def logged(folder: Path) -> dict[int, dict[str, Any]]:
    """train/loss, lr and moco/momentum by step; a value logged again after the resume replaces the first (the
    relaunch logs the momentum of its first step on the line of the step it resumes after)."""
    by_step: dict[int, dict[str, Any]] = {}
    for text in (folder / "metrics.jsonl").read_text().splitlines():
        line = json.loads(text)
        if line["phase"] == "train":
            values = {k: line[k] for k in ("train/loss", "lr", "moco/momentum") if k in line}
            by_step.setdefault(line["step"], {}).update(values)
    return by_step


@pytest.mark.usefixtures("keep_torch_settings")
def test_sigterm_mid_epoch_and_the_relaunch_ends_identical(
    tmp_path: Path, digits_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "uninterrupted"
    assert train.main(recipe(reference, digits_cache)) == 0

    folder = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        sigterm_during_batch(patch, 2)
        assert train.main(recipe(folder, digits_cache)) == PREEMPTED_EXIT_STATUS
    assert (folder / "ep0-ba2-rank0.pt").is_file()
    assert train.main(recipe(folder, digits_cache, "autoresume=true")) == 0

    state, expected = final_state(folder), final_state(reference)
    assert {"queue", "queue_pointer"} <= state.keys() and any(
        k.startswith("momentum_encoder.") for k in state
    )
    different = [name for name in expected if not torch.equal(state[name], expected[name])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"
    assert int(state["queue_pointer"]) == (STEPS * 2 * BATCH) % 20  # both views' keys enqueued each step
    assert logged(folder) == logged(reference) and sorted(logged(reference)) == list(range(STEPS + 1))
