"""One rank of ``tests/test_training_parallelism.py``'s two-rank FSDP test, run by ``tests/two_rank_checks.py``
under Composer's launcher.

Composer 0.32.1's FSDP wrapper needs CUDA (it passes ``device_id=torch.cuda.current_device()``), so this wraps the
recipe's model the way that wrapper does, with PyTorch's own FSDP1 on the CPU over gloo: each child of the Composer
model an FSDP root, units chosen by the child's ``fsdp_wrap_fn`` through ``CustomPolicy``, mixed precision from
Composer's ``get_mixed_precision``, activation checkpointing where ``activation_checkpointing_fn`` says. It saves,
to ``FOLDER/rank{R}.pt``: which modules became units, the dtypes seen inside them in a bf16 forward, each rank's
share of the flat parameters, and the full weights after one SGD step on the rank's half of the batch in fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch
from composer.core import Precision
from composer.distributed.mosaic_parallelism import get_mixed_precision
from composer.utils import dist, get_device
from omegaconf import OmegaConf
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import CustomPolicy

from model import build_model
from recipes.schema import ModelConfig

BATCH = 8
LR = 0.1


def recipe_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"name": "resnet18"}), 10)


def wrap(model: torch.nn.Module, precision: Precision, preset: str, checkpointing: bool) -> torch.nn.Module:
    network = model.module
    mixed_precision, *_ = get_mixed_precision(precision, preset)
    model.module = FSDP(
        network, auto_wrap_policy=CustomPolicy(network.fsdp_wrap_fn), mixed_precision=mixed_precision,
        device_id=torch.device("cpu"), use_orig_params=True,
    )  # fmt: skip
    if checkpointing:
        apply_activation_checkpointing(
            model.module, checkpoint_wrapper_fn=checkpoint_wrapper,
            check_fn=lambda module: not isinstance(module, FSDP) and network.activation_checkpointing_fn(module),
        )  # fmt: skip
    return model


def unwrapped(name: str) -> str:
    """A parameter's name in the plain model (FSDP and the checkpoint wrapper insert a level each)."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


def main(folder: Path) -> None:
    torch.set_num_threads(1)
    dist.initialize_dist(get_device("cpu"))
    rank, world_size = dist.get_global_rank(), dist.get_world_size()
    torch.manual_seed(1)
    images, targets = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    half = slice(BATCH // world_size * rank, BATCH // world_size * (rank + 1))

    # bf16 under Composer's DEFAULT preset: which modules are units, and the dtypes inside them in a forward.
    model = wrap(recipe_model(), Precision.AMP_BF16, "DEFAULT", checkpointing=False).eval()
    units = [name for name, module in model.module.named_modules() if isinstance(module, FSDP)]
    seen: dict[str, str] = {}

    def record(name: str):
        def hook(module: torch.nn.Module, inputs: tuple) -> None:
            seen[name] = f"{inputs[0].dtype} {module.weight.dtype}"

        return hook

    inner = model.module.module  # the ResNet inside the root unit
    inner.conv1.register_forward_pre_hook(record("conv1"))
    inner.bn1.module.register_forward_pre_hook(record("bn1"))  # inside its own unit (FSDP's .module)
    inner.layer1[0].conv1.register_forward_pre_hook(record("layer1.0.conv1"))
    inner.layer1[0].bn1.module.register_forward_pre_hook(record("layer1.0.bn1"))
    with torch.no_grad():
        model((images[half], targets[half]))
    shards = {name: p.numel() for name, p in model.module.named_parameters()}

    # fp32 (FULL) with activation checkpointing: one SGD step on this rank's half of the batch.
    model = wrap(
        recipe_model(), Precision.FP32, "FULL", checkpointing=True
    ).eval()  # BN on running statistics
    checkpointed = sum(isinstance(module, CheckpointWrapper) for module in model.modules())
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss = model.loss(model((images[half], targets[half])), (images[half], targets[half]))
    loss.backward()
    optimizer.step()
    with FSDP.summon_full_params(model.module):
        stepped = {unwrapped(name): p.detach().clone() for name, p in model.module.module.named_parameters()}
    torch.save(
        {"units": units, "seen": seen, "shards": shards, "checkpointed": checkpointed, "stepped": stepped,
         "images": images, "targets": targets},
        folder / f"rank{rank}.pt",
    )  # fmt: skip
