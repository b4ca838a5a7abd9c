"""DDP on four ranks (`composer -n 4` on 2 cores): four one-image ranks train what two microbatched ranks train,
every rank ends with the checkpointed parameters, evaluation counts each image once, only rank 0 writes. The
two-rank run's mechanism tests are tests/test_ddp.py; this adds the rank count a g4dn.12xlarge has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_ddp import (
    PARAMETER_ATOL,
    Run,
    assert_close_val_metrics,
    assert_eval_counts_each_val_image_once,
    assert_every_rank_ends_with_the_checkpointed_parameters,
    assert_only_rank_zero_writes_and_prints,
    assert_same_training,
    launch,
    train_one_process,
)

pytestmark = pytest.mark.filterwarnings("ignore:The warmup duration is 0")


@pytest.fixture(scope="module")
def four_processes(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """4 ranks of one image each, no microbatches: the same BatchNorm calls as the microbatched 2 ranks."""
    return launch(4, tmp_path_factory.mktemp("four_processes"), [])


def test_four_ranks_train_like_four_microbatches_in_one_process(
    four_processes: Run, tmp_path: Path, record_property: Any
) -> None:
    """One process accumulating four one-image microbatches against 4 ranks without microbatches: the same
    4-image global batch and the same one-image BatchNorm calls, so the only difference is where the gradients
    are summed (accumulation against the all-reduce)."""
    one_process = train_one_process(tmp_path)
    assert one_process.summary["device_train_microbatch_size"] == 1
    assert four_processes.summary["device_train_microbatch_size"] is None
    assert four_processes.summary["per_device_batch_size"] == 1
    assert_same_training(four_processes, one_process)
    assert_close_val_metrics(four_processes, one_process)
    reference = one_process.parameters()
    apart = max(
        float((value - reference[name]).abs().max()) for name, value in four_processes.parameters().items()
    )
    record_property(
        "figure",
        f"DDP on 4 ranks against 4 microbatches in one process: parameters at most {apart:.1e} apart after "
        f"{len(four_processes.train_losses())} steps (tolerance {PARAMETER_ATOL})",
    )


def test_every_rank_ends_with_the_checkpointed_parameters(four_processes: Run) -> None:
    assert_every_rank_ends_with_the_checkpointed_parameters(four_processes)


def test_eval_counts_each_val_image_once(four_processes: Run, tmp_path: Path) -> None:
    assert_eval_counts_each_val_image_once(four_processes, tmp_path)


def test_only_rank_zero_writes_and_prints(four_processes: Run) -> None:
    assert_only_rank_zero_writes_and_prints(four_processes)
