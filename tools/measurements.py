"""Short measurements on this machine that the run planner scales to the recipe's hardware.

Each takes a fraction of a second to a few seconds: one training step of the model the recipe's task trains
(at a small resolution on the CPU, then scaled by pixels) for the bytes its forward pass holds per image, its
trained and untrained parameters and the step's FLOPs; the images per second one data loader worker produces
with the recipe's training and eval transforms; and, for CPU recipes, supervised training steps per second.
"""

from __future__ import annotations

import functools
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from composer.models import ComposerModel
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.data import Dataset, IterableDataset
from torch.utils.flop_counter import FlopCounterMode

# Activations are measured at this side length and scaled by pixel count: at 224 px the scaled figure was
# within 3 % of a direct measurement (fp32 per image: ResNet-50 86 MB, MoCo v3's two views 183 MB, the frozen
# probe 11 MB), and 64 px keeps the step to a second or two on a CPU.
ACTIVATION_RESOLUTION = 64
# Images in the measured step: MoCo's projector and predictor MLPs hold BatchNorm1d layers, which refuse a
# batch of one in training mode; figures are per image.
MEASUREMENT_BATCH = 2
# ImageNet's typical photo, JPEG quality 90: what a worker decodes when no real data is reachable.
SAMPLE_IMAGE_SIZE = (500, 375)
SAMPLE_IMAGE_COUNT = 16
# Images per timed training step on the CPU: per-image cost on a CPU changes little with the batch size.
CPU_MEASUREMENT_BATCH = 8
# The part of each task's network that takes no gradient (None: every parameter trains).
UNTRAINED_PART = {"supervised": None, "moco_v3": "momentum encoder", "linear_probe": "frozen backbone"}


@dataclass(frozen=True)
class NetworkMeasurement:
    """What one training image costs the network the recipe's task trains, measured on the CPU in fp32."""

    # The most bytes held at once during the training forward pass, per image (every view of it) at
    # ``resolution`` px: what autograd saves for the backward pass plus what the pass holds at that moment
    # (for a frozen network, its working set), parameters and buffers excluded (counted separately).
    activation_bytes: int
    resolution: int
    # Every parameter (weights in memory), and those that take a gradient (gradients, optimizer state, EMA and
    # SAM copies, autocast's cached fp16 copies).
    parameters: int
    trained_parameters: int
    # What the untrained parameters are ("momentum encoder", "frozen backbone"); None when all train.
    untrained_part: str | None
    # Crops per training image (2 for MoCo's two views).
    views: int
    # FLOPs of one training step (forward and backward, torch's FlopCounterMode) per image at ``resolution``:
    # convolutions, which scale with pixel count, and matrix multiplies (fc, the projector and predictor
    # MLPs), which do not.
    convolution_flops: int
    matmul_flops: int

    def activation_bytes_at(self, resolution: int) -> float:
        """Activation bytes per image at ``resolution`` px, fp32 (they scale with pixel count)."""
        return self.activation_bytes * (resolution / self.resolution) ** 2

    def matmul_share_at(self, resolution: int) -> float:
        """The fraction of a training step's FLOPs in matrix multiplies at ``resolution`` px: the part that
        does not scale with pixel count."""
        convolutions = self.convolution_flops * (resolution / self.resolution) ** 2
        return self.matmul_flops / (convolutions + self.matmul_flops)


class HeldBytes(TorchDispatchMode):
    """The most bytes of tensor storage held at once while it is active, storages in ``excluded`` left out.

    Every operator's outputs are followed until the last tensor on their storage is freed (views share it);
    ``hold`` adds a tensor made elsewhere (the input batch, or a tensor autograd saves, which stays alive in
    the graph until the backward pass).
    """

    def __init__(self, excluded: set[int]) -> None:
        super().__init__()
        self.excluded = excluded
        self.storages: dict[int, list[int]] = {}  # data pointer -> [bytes, live tensors on it]
        self.held = 0
        self.peak = 0

    def hold(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer, size = storage.data_ptr(), storage.nbytes()
        if pointer in self.excluded or size == 0:
            return tensor
        if pointer not in self.storages:
            self.storages[pointer] = [size, 0]
            self.held += size
            self.peak = max(self.peak, self.held)
        self.storages[pointer][1] += 1
        weakref.finalize(tensor, self._release, pointer)
        return tensor

    def _release(self, pointer: int) -> None:
        entry = self.storages[pointer]
        entry[1] -= 1
        if entry[1] == 0:
            self.held -= entry[0]
            del self.storages[pointer]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        outputs = func(*args, **(kwargs or {}))
        for output in tree_leaves(outputs):
            if isinstance(output, torch.Tensor):
                self.hold(output)
        return outputs


def task_model(
    task: str, name: str, head: str, num_classes: int, moco_dims: tuple[int, int, int] | None
) -> ComposerModel:
    """The model ``task`` trains, as the trainer builds it, with fresh weights: the classifier; MoCo v3 with
    the recipe's (projector hidden, predictor hidden, output) widths; or the probe with its backbone frozen
    and in eval mode by ``model.build_linear_probe`` itself (given the backbone of a fresh ResNet)."""
    from model import (
        PROBE_CLASSIFIER_KEYS,
        build_linear_probe,
        build_moco_model,
        build_model,
        torchvision_resnet,
    )
    from recipes.schema import MocoConfig, ModelConfig

    model_cfg = ModelConfig(name=name, head=head)
    if task == "moco_v3":
        projector, predictor, output = moco_dims
        moco_cfg = MocoConfig(
            projector_hidden_dim=projector, predictor_hidden_dim=predictor, output_dim=output
        )
        return build_moco_model(model_cfg, moco_cfg, device="cpu").train()
    if task == "linear_probe":
        fresh = torchvision_resnet(name, num_classes).state_dict()
        backbone = {key: value for key, value in fresh.items() if key not in PROBE_CLASSIFIER_KEYS}
        return build_linear_probe(model_cfg, num_classes, backbone, "the planner's fresh ResNet")
    return build_model(model_cfg, num_classes).train()


# Enough for every task and network a test session plans (each measurement takes a second or two).
@functools.lru_cache(maxsize=16)
def measure_network(
    name: str,
    head: str,
    blurpool: bool,
    num_classes: int,
    task: str = "supervised",
    moco_dims: tuple[int, int, int] | None = None,
) -> NetworkMeasurement:
    """One real training step of ``task``'s model on a small batch: the bytes held at once in its forward
    pass (the saved tensors autograd keeps for the backward, followed with ``saved_tensors_hooks``, and
    whatever else is alive then), its parameters, and the step's FLOPs."""
    from composer.functional import apply_blurpool

    model = task_model(task, name, head, num_classes, moco_dims)
    if blurpool:
        apply_blurpool(model)
    side = ACTIVATION_RESOLUTION
    # MoCo's batches are (B, 2, 3, H, W), view 1 then view 2 (data/two_views.py); its targets are ignored.
    views = 2 if task == "moco_v3" else 1
    shape = (MEASUREMENT_BATCH, views, 3, side, side) if views > 1 else (MEASUREMENT_BATCH, 3, side, side)
    batch = (torch.randn(shape), torch.randint(0, num_classes, (MEASUREMENT_BATCH,)))
    excluded = {tensor.untyped_storage().data_ptr() for tensor in (*model.parameters(), *model.buffers())}
    held = HeldBytes(excluded)
    flops = FlopCounterMode(display=False)
    # One thread: a small batch gains nothing from more, and on a busy machine their barriers cost seconds.
    with one_thread(), flops:
        with torch.autograd.graph.saved_tensors_hooks(held.hold, lambda tensor: tensor), held:
            held.hold(batch[0])
            outputs = model(batch)
        model.loss(outputs, batch).backward()
    counts = flops.get_flop_counts()["Global"]
    convolutions = sum(count for operator, count in counts.items() if "convolution" in str(operator))
    return NetworkMeasurement(
        activation_bytes=held.peak // MEASUREMENT_BATCH,
        resolution=side,
        parameters=sum(parameter.numel() for parameter in model.parameters()),
        trained_parameters=sum(
            parameter.numel() for parameter in model.parameters() if parameter.requires_grad
        ),
        untrained_part=UNTRAINED_PART[task],
        views=views,
        convolution_flops=convolutions // MEASUREMENT_BATCH,
        matmul_flops=(flops.get_total_flops() - convolutions) // MEASUREMENT_BATCH,
    )


@contextmanager
def one_thread() -> Iterator[None]:
    """Run as a DataLoader worker does: one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def images_per_second(dataset: Dataset, seconds: float, minimum: int = 3) -> float:
    """Images one worker produces per second from ``dataset`` (in order, wrapping), for about ``seconds``."""
    items = _endless(dataset)
    with one_thread():
        next(items)  # first-read costs (file cache, lazy imports) are not throughput
        count, started = 0, time.perf_counter()
        while count < minimum or time.perf_counter() - started < seconds:
            next(items)
            count += 1
        return count / (time.perf_counter() - started)


def _endless(dataset: Dataset) -> Iterator[Any]:
    """Samples from a map-style or streamed dataset, over and over."""
    while True:
        if isinstance(dataset, IterableDataset):
            yield from dataset
        else:
            for index in range(len(dataset)):
                yield dataset[index]


def write_sample_jpegs(
    folder: Path, count: int = SAMPLE_IMAGE_COUNT, seed: int = 0, size: tuple[int, int] = SAMPLE_IMAGE_SIZE
) -> None:
    """Photo-like JPEGs of ``size`` (500x375, ImageNet-like, by default; quality 90) in ``folder/train/<class>/``,
    cut from scikit-learn's two bundled photographs with colour shifts and sensor-like noise, so they decode like
    photos rather than flat colour. ``folder/val/<class>`` links to the same files: only the transform's cost
    matters here."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(array) for array in load_sample_images().images]
    width, height = size
    for index in range(count):
        photo = photos[index % len(photos)]
        crop_width = int(rng.integers(240, photo.width))
        crop_height = min(int(crop_width * height / width), photo.height)
        left = int(rng.integers(0, photo.width - crop_width + 1))
        top = int(rng.integers(0, photo.height - crop_height + 1))
        crop = photo.crop((left, top, left + crop_width, top + crop_height)).resize((width, height))
        pixels = np.asarray(crop, dtype=np.float32) * rng.uniform(0.7, 1.3, 3)
        pixels += rng.normal(0, 6, pixels.shape).astype(np.float32)
        path = folder / "train" / f"class{index % 2}" / f"image{index:03d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    (folder / "val").mkdir(exist_ok=True)
    for class_folder in (folder / "train").iterdir():
        (folder / "val" / class_folder.name).symlink_to(class_folder.resolve(), target_is_directory=True)


def sample_image_size(config: DictConfig) -> tuple[int, int]:
    """(width, height) of the generated JPEGs that stand in for the recipe's data: its source's image size,
    64x64 for Tiny ImageNet, else ImageNet's typical 500x375."""
    from data import tiny_imagenet

    if config.data.source == "tiny_imagenet":
        return tiny_imagenet.IMAGE_SIDE, tiny_imagenet.IMAGE_SIDE
    return SAMPLE_IMAGE_SIZE


@contextmanager
def sample_datasets(config: DictConfig) -> Iterator[tuple[Dataset, Dataset]]:
    """The recipe's training and eval transforms over generated JPEGs of ``sample_image_size``: (train, eval)."""
    from data import build_data
    from data.bad_images import BAD_IMAGE_LIST

    with tempfile.TemporaryDirectory(prefix="plan-images-") as scratch:
        folder = Path(scratch)
        write_sample_jpegs(folder / "images", size=sample_image_size(config))
        sample = OmegaConf.merge(
            config,
            {
                "global_batch_size": 1,
                "eval_batch_size": 1,
                "data": {
                    "source": "imagefolder", "path": str(folder / "images"),
                    "cache_dir": str(folder / "cache"),
                    "subset_size": "full", "max_classes": None, "max_samples_per_class": None,
                    "train_split": "train", "val_split": "val", "index_cache": False, "num_workers": 0,
                    "drop_last": False,
                    # Repeats change which images an epoch reads, not what one image costs.
                    "repeated_augmentation": 1,
                },
            },
        )  # fmt: skip
        bundle = build_data(sample, bad_image_list=folder / BAD_IMAGE_LIST)
        yield bundle.train.dataloader.dataset, bundle.val.dataloader.dataset


def cpu_training_images_per_second(config: DictConfig, num_classes: int, seconds: float) -> float:
    """Training images per second of the recipe's network on one core of this CPU, after one untimed step:
    forward, loss, backward and an optimizer step at ``data.train_resolution`` on a small batch.

    One thread, because a busy machine makes several threads wait on each other (two steps took a minute with
    two threads on two loaded cores, seconds with one); the planner multiplies by the cores it plans for.
    """
    from model import build_model
    from training.optimization import build_optimizer

    model = build_model(config.model, num_classes)
    optimizer, _ = build_optimizer(model, config.optimizer, config.global_batch_size)
    side = config.data.train_resolution
    batch_size = min(config.global_batch_size, CPU_MEASUREMENT_BATCH)
    batch = (torch.randn(batch_size, 3, side, side), torch.randint(0, num_classes, (batch_size,)))
    model.train()

    def step() -> None:
        optimizer.zero_grad()
        model.loss(model(batch), batch).backward()
        optimizer.step()

    with one_thread():
        step()
        count, started = 0, time.perf_counter()
        while count == 0 or time.perf_counter() - started < seconds:
            step()
            count += 1
        return count * batch_size / (time.perf_counter() - started)
