"""The k-NN monitor of a MoCo v3 run: how well the representation being learned sorts the validation images into
their classes, every ``moco.knn_interval``, without training anything on the labels.

The classifier is InstDisc's weighted k-NN (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", section 3.4; as DINO's ``eval_knn.py`` ``knn_classifier`` writes it,
facebookresearch/dino@04c0ad9): features L2-normalised, a validation image's ``k`` most cosine-similar bank
images vote for their classes with weight ``exp(similarity / T)``, the class with the largest total wins.
``k`` 20 and ``T`` 0.07 are DINO's defaults (the MoCo CIFAR-10 demo's monitor uses 200 and 0.1).

Which features: the base encoder's 2048-d global-average-pooled backbone output, before the projector. That is
the network a MoCo v3 run hands on: the linear probe loads ``module.base_encoder`` without its ``fc`` (the
projector; facebookresearch/moco-v3 main_lincls.py, "retain only base_encoder up to before the embedding
layer"), and ``model.moco_backbone_state`` exports the same tensors, so the monitor tracks what the probe will
see. The projector's output is trained for the contrastive task itself and probes worse than the layer under it
(SimCLR, Chen et al. 2020, section 4.2). References differ on the encoder: MoCo's CIFAR-10 demo monitors the query
encoder's output (``test(model.encoder_q, ...)``, facebookresearch/moco, colab/moco_cifar10_demo.ipynb), DINO's
``eval_knn.py`` the momentum network (``--checkpoint_key teacher``), InstDisc its only network. Here the base
(query) encoder, the one exported and probed; the momentum encoder trails it by about 1 / (1 - m) steps (100 at
m = 0.99) and meets it as m rises to 1.

Cost and side effects: two passes without gradient (bank, validation) with the encoder in eval mode (BatchNorm
reads its running statistics and updates nothing), then every module's mode as it was; the global RNG states are
put back afterwards, so the training run draws the same numbers with and without the monitor (exact resume
holds). The loaders read in a fixed order and their samplers draw nothing. Under DDP each rank extracts its share
(``DistributedSampler``'s, without shuffling: rank r holds positions r, r + W, ...); the bank features are
gathered to every rank in dataset order, padding repeats cut off, and each rank scores its own validation share,
the counts summed. A run stopped early (preemption, the doctor) skips the monitor: a spot notice leaves no minutes
for it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from composer.core import Callback, DataSpec, Event, State, Time
from composer.core.precision import get_precision_context
from composer.loggers import Logger
from composer.utils import dist
from composer.utils.misc import create_interval_scheduler
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.models import ResNet

from callbacks.ranks import say
from recipes.durations import parse_time
from recipes.errors import UsageError

# The monitor's metric names (an evaluation's, not a training step's).
KNN_PREFIX = "knn/"
KNN_ACC1 = f"{KNN_PREFIX}acc1"
KNN_ACC5 = f"{KNN_PREFIX}acc5"
# Top-5 as Composer's supervised acc5 counts it (fewer classes: all of them).
TOP = 5


def knn_votes(
    queries: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int, temperature: float
) -> Tensor:
    """Each query's weighted votes per class, ``(queries, num_classes)``: its ``min(k, bank size)`` most similar
    bank rows (features already L2-normalised, so the dot product is the cosine) vote ``exp(sim / T)`` each.

    The weights are computed as ``exp((sim - best) / T)``, the same votes divided by one positive number per
    query, which changes no ranking and cannot overflow at a small ``T``.
    """
    similarity = queries.float() @ bank.float().T
    top, neighbours = similarity.topk(min(k, bank.shape[0]), dim=1)
    weights = ((top - top[:, :1]) / temperature).exp()
    votes = torch.zeros(queries.shape[0], num_classes, device=queries.device)
    return votes.scatter_add_(1, bank_labels[neighbours], weights)


def ranked_classes(votes: Tensor) -> Tensor:
    """Classes by votes, most first; equal votes in class order (a stable sort), so a tie goes to the lower
    label on every machine."""
    return torch.sort(votes, dim=1, descending=True, stable=True).indices


def correct_counts(votes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per query: whether the top class is its label, and whether its label is among the top five classes that
    received votes (a class no neighbour voted for is never a guess)."""
    ranked = ranked_classes(votes)
    top = min(TOP, votes.shape[1])
    in_top = (ranked[:, :top] == labels[:, None]).any(dim=1) & (votes.gather(1, labels[:, None])[:, 0] > 0)
    return ranked[:, 0] == labels, in_top


def backbone_features(resnet: ResNet, images: Tensor) -> Tensor:
    """A torchvision ResNet's global-average-pooled features (2048-d for ResNet-50): its forward without ``fc``
    (torchvision/models/resnet.py ``_forward_impl``), so the projector in ``fc`` is skipped."""
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images))))
    x = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(x))))
    return torch.flatten(resnet.avgpool(x), 1)


@contextmanager
def rng_state_kept() -> Iterator[None]:
    """Put torch's CPU and CUDA generators, numpy's and ``random``'s states back as they were on entry."""
    cpu, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode, then every submodule back in the mode it had (not all in train mode: a frozen
    part kept in eval stays there)."""
    modes = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for child, training in modes:
            child.training = training


def rank_positions(loader: DataLoader, count: int) -> Tensor:
    """The dataset positions of this rank's ``count`` samples, in the order it reads them: ``DistributedSampler``
    without shuffling gives rank r positions r, r + W, r + 2W, ... of a list padded by repeating its start."""
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        return torch.arange(count) * sampler.num_replicas + sampler.rank
    return torch.arange(count)


class KnnMonitor(Callback):
    """Logs ``knn/acc1`` and ``knn/acc5`` of the validation set against a bank of training images, at
    ``interval`` (a Composer time; when ``max_duration`` is not a multiple of it, also at the end of training),
    as Composer schedules an evaluation (composer/core/evaluator.py:114-118, 0.32.1), and once at step 0 of a
    fresh run: the randomly initialised encoder's reading is the baseline the rise is read against (on the
    digits, random conv features already sort a third of the images; a run that never climbs above its own
    step-0 value has learned nothing, whatever the absolute number says).

    ``bank`` and ``validation`` are single-view, labelled ``DataSpec``s (``data.DataBundle.knn_bank`` and
    ``.val``); the model is a ``model.MocoV3`` (its ``base_encoder``, unwrapped from DDP).
    """

    def __init__(
        self,
        bank: DataSpec,
        validation: DataSpec,
        num_classes: int,
        interval: str,
        k: int = 20,
        temperature: float = 0.07,
    ) -> None:
        if k < 1:
            raise UsageError(f"moco.knn_k={k} must be at least 1 neighbour (20 is the usual).")
        if not temperature > 0:
            raise UsageError(f"moco.knn_temperature={temperature} must be positive (0.07 is the usual).")
        time_interval = parse_time(interval, "moco.knn_interval")
        if time_interval.value <= 0:
            raise UsageError(
                f"moco.knn_interval={interval} never fires; give a positive interval such as '1ep', or null "
                "to turn the k-NN monitor off."
            )
        self.bank = bank
        self.validation = validation
        self.num_classes = num_classes
        self.k = k
        self.temperature = temperature
        self.due = create_interval_scheduler(
            Time.from_input(time_interval), checkpoint_events=False, final_events={Event.FIT_END}
        )
        self.planned_duration: Time | None = None
        self.last_batch: int | None = None

    def fit_start(self, state: State, logger: Logger) -> None:
        self.planned_duration = state.max_duration
        if int(state.timestamp.batch) == 0:  # a resumed run has its step-0 reading in the log already
            self._run(state, logger)

    def batch_end(self, state: State, logger: Logger) -> None:
        self._run_if_due(state, logger, Event.BATCH_END)

    def epoch_end(self, state: State, logger: Logger) -> None:
        self._run_if_due(state, logger, Event.EPOCH_END)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._run_if_due(state, logger, Event.FIT_END)

    def _run_if_due(self, state: State, logger: Logger, event: Event) -> None:
        # State.stop_training sets max_duration to the batch reached (composer/core/state.py): stopped early.
        # Preemption and the doctor stop a run by rewriting max_duration (often in other units).
        stopped_early = self.planned_duration is not None and str(state.max_duration) != str(
            self.planned_duration
        )
        if stopped_early or not self.due(state, event) or self.last_batch == int(state.timestamp.batch):
            return
        self._run(state, logger)

    def _run(self, state: State, logger: Logger) -> None:
        self.last_batch = int(state.timestamp.batch)
        started = time.perf_counter()
        accuracy = self.measure(state)
        logger.log_metrics(accuracy)
        say(
            f"k-NN monitor at epoch {int(state.timestamp.epoch)}, step {self.last_batch}: top-1 "
            f"{accuracy[KNN_ACC1]:.1%}, top-5 {accuracy[KNN_ACC5]:.1%} ({time.perf_counter() - started:.1f} s)"
        )

    @torch.no_grad()
    def measure(self, state: State) -> dict[str, float]:
        """Top-1 and top-5 k-NN accuracy of the validation set on the current base encoder."""
        model = state.model.module if state.is_model_ddp else state.model
        encoder = model.base_encoder
        with (
            rng_state_kept(),
            eval_mode(encoder),
            get_precision_context(state.precision, state.precision_config),
        ):
            bank, bank_labels = self._bank_features(state, encoder)
            totals = torch.zeros(3, device=bank.device)  # top-1 correct, top-5 correct, images
            size = len(self.validation.dataloader.dataset)
            for features, labels, positions in self._features(state, encoder, self.validation):
                kept = positions.to(features.device) < size  # DistributedSampler's padding repeats left out
                top1, top5 = correct_counts(knn_votes(features, bank, bank_labels, self.num_classes, self.k,
                                                      self.temperature), labels)  # fmt: skip
                totals += torch.stack([(top1 & kept).sum(), (top5 & kept).sum(), kept.sum()]).float()
        dist.all_reduce(totals, reduce_operation="SUM")
        top1, top5, images = totals.tolist()
        return {KNN_ACC1: top1 / max(images, 1), KNN_ACC5: top5 / max(images, 1)}

    def _bank_features(self, state: State, encoder: ResNet) -> tuple[Tensor, Tensor]:
        """The whole bank's normalised features and labels on every rank, in dataset order."""
        parts = list(self._features(state, encoder, self.bank))
        features = torch.cat([part[0] for part in parts])
        labels = torch.cat([part[1] for part in parts])
        world_size = dist.get_world_size()
        if world_size == 1:
            return features, labels
        size = len(self.bank.dataloader.dataset)
        # Rank r's i-th sample is position i * W + r: stacking the ranks' lists along dim 1 restores the order.
        gathered_features = torch.stack(list(dist.all_gather(features)), dim=1).flatten(0, 1)[:size]
        gathered_labels = torch.stack(list(dist.all_gather(labels)), dim=1).flatten(0, 1)[:size]
        return gathered_features, gathered_labels

    def _features(
        self, state: State, encoder: ResNet, spec: DataSpec
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Per batch of ``spec``: normalised float32 features, labels and the samples' dataset positions, the
        batch moved and transformed as Composer would (batch transforms, the device, microbatch transforms)."""
        seen = 0
        for batch in spec.dataloader:
            images, labels = spec.microbatch_transforms(
                state.device.batch_to_device(spec.batch_transforms(batch))
            )
            features = nn.functional.normalize(backbone_features(encoder, images).float(), dim=1)
            positions = rank_positions(spec.dataloader, seen + labels.shape[0])[seen:]
            seen += labels.shape[0]
            yield features, labels, positions
