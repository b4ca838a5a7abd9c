"""The parallelism section: DDP by default, FSDP1 through Composer with this project's units (one per residual
block, BatchNorm fp32 in its own), refused where it cannot work, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from composer import Trainer
from composer.utils.parallelism import FSDPConfig
from torchvision.models.resnet import BasicBlock

from recipes.errors import UsageError
from tests.fsdp_rank_check import LR, recipe_model
from training.preflight import load_run_recipe
from training.runtime import parallelism_config, resolve_runtime

FSDP = ["parallelism.strategy=fsdp"]


def test_ddp_is_the_default_and_passes_nothing() -> None:
    assert parallelism_config(load_run_recipe("g4dn_12xlarge").parallelism) is None


def test_fsdp_section_reaches_composer_as_fsdp1_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    overrides = [*FSDP, "parallelism.sharding_strategy=SHARD_GRAD_OP", "parallelism.mixed_precision=PURE",
                 "parallelism.activation_checkpointing=true"]  # fmt: skip
    passed = parallelism_config(load_run_recipe("g4dn_12xlarge", overrides).parallelism)
    monkeypatch.setenv("FSDP_VERSION", "2")  # would turn a plain dict into Composer's FSDP2 config
    parsed = Trainer._parse_parallelism_config(None, passed)  # type: ignore[arg-type]
    assert parsed.fsdp2 is None and isinstance(parsed.fsdp, FSDPConfig)
    assert (parsed.fsdp.sharding_strategy, parsed.fsdp.mixed_precision) == ("SHARD_GRAD_OP", "PURE")
    assert parsed.fsdp.activation_checkpointing is True and parsed.fsdp.state_dict_type == "full"


def test_fsdp_on_a_cpu_is_refused_with_the_fix() -> None:
    with pytest.raises(UsageError, match=r"parallelism\.strategy=fsdp needs CUDA GPUs.*strategy=ddp"):
        resolve_runtime(load_run_recipe("smoke", FSDP), cuda_available=False)


def test_the_model_names_one_unit_per_residual_block() -> None:
    network = recipe_model().module
    chosen = [name for name, module in network.named_modules() if network.fsdp_wrap_fn(module)]
    assert chosen == [f"layer{stage}.{block}" for stage in range(1, 5) for block in range(2)]  # resnet18
    assert all(isinstance(network.get_submodule(name), BasicBlock) for name in chosen)
    assert network.activation_checkpointing_fn is network.fsdp_wrap_fn


@pytest.fixture(scope="module")
def two_ranks(two_rank_checks: Path) -> list[dict]:
    """What each of two gloo ranks saw and did (tests/fsdp_rank_check.py, launched by conftest's two_rank_checks)."""
    return [torch.load(two_rank_checks / "fsdp" / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


def test_batchnorm_stays_fp32_in_its_own_unit_while_blocks_compute_in_bf16(two_ranks: list[dict]) -> None:
    rank = two_ranks[0]
    blocks = {f"_fsdp_wrapped_module.layer{stage}.{block}" for stage in range(1, 5) for block in range(2)}
    assert blocks <= set(rank["units"])
    batchnorms = [name for name in rank["units"] if name.rsplit(".", 1)[-1].startswith("bn")]
    assert len(batchnorms) == 17  # bn1 and the two of each of the 8 blocks (downsample BNs are Sequential[1])
    assert rank["seen"]["conv1"] == "torch.bfloat16 torch.bfloat16"
    assert rank["seen"]["layer1.0.conv1"] == "torch.bfloat16 torch.bfloat16"
    assert rank["seen"]["bn1"] == "torch.float32 torch.float32"  # cast up on the way in, by PyTorch's rule
    assert rank["seen"]["layer1.0.bn1"] == "torch.float32 torch.float32"


def test_parameters_are_sharded_over_the_two_ranks(two_ranks: list[dict]) -> None:
    total = sum(p.numel() for p in recipe_model().module.parameters())
    held = [sum(rank["shards"].values()) for rank in two_ranks]
    assert all(share < 0.6 * total for share in held) and sum(held) >= total


def test_one_sharded_checkpointed_step_equals_the_whole_batch_step(two_ranks: list[dict]) -> None:
    model = recipe_model().eval()
    images, targets = two_ranks[0]["images"], two_ranks[0]["targets"]
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model.loss(model((images, targets)), (images, targets)).backward()  # the mean over the whole batch
    optimizer.step()
    assert two_ranks[0]["checkpointed"] == 8  # every residual block recomputed in backward
    for rank in two_ranks:
        for name, weight in model.module.named_parameters():
            torch.testing.assert_close(rank["stepped"][name], weight, rtol=1e-4, atol=1e-5)
