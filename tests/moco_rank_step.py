"""One rank of ``tests/test_model_moco.py``'s two-rank test, run by ``tests/two_rank_checks.py`` under Composer's
launcher: the process group is Composer's, joined as ``train.py`` joins it, and the
keys go through ``model.gather_keys`` as in training. The rank's half of the global batch goes through forward,
loss and backward; its loss, gathered keys and gradients are saved to ``FOLDER/rank{R}.pt``."""

from __future__ import annotations

from pathlib import Path

import torch
from composer.utils import dist, get_device

from tests.test_model_moco import GLOBAL_BATCH, QUEUE, small_model, two_view_batch


def main(folder: Path) -> None:
    torch.set_num_threads(1)
    dist.initialize_dist(get_device("cpu"))
    rank, world_size = dist.get_global_rank(), dist.get_world_size()
    share = GLOBAL_BATCH // world_size
    model = small_model(queue_size=QUEUE).eval()
    images, targets = two_view_batch(GLOBAL_BATCH)
    half = slice(share * rank, share * (rank + 1))
    outputs = model((images[half], targets[half]))
    loss = model.loss(outputs, (images[half], targets[half]))
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    torch.save({"loss": loss.detach(), "keys1": outputs.keys1, "grads": grads}, folder / f"rank{rank}.pt")
