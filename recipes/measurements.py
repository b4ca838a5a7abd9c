"""Short measurements on this machine that the run planner scales to the recipe's hardware.

Each takes a fraction of a second to a few seconds: the bytes autograd keeps per image for the recipe's
network (measured at a small resolution on the CPU, then scaled by pixels), the images per second one data
loader worker produces with the recipe's training and eval transforms, and, for CPU recipes, training steps
per second.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

# Activations are measured at this side length and scaled by pixel count: at 224 px the scaled figure was
# within 5 % of a direct measurement (82 MB/image fp32), and 64 px keeps the forward pass well under a second
# on a CPU.
ACTIVATION_RESOLUTION = 64
# ImageNet's typical photo, JPEG quality 90: what a worker decodes when no real data is reachable.
SAMPLE_IMAGE_SIZE = (500, 375)
SAMPLE_IMAGE_COUNT = 16
# Images per timed training step on the CPU: per-image cost on a CPU changes little with the batch size.
CPU_MEASUREMENT_BATCH = 8


@dataclass(frozen=True)
class NetworkMeasurement:
    """What one image costs the recipe's network in memory, measured on the CPU."""

    # Bytes of the tensors autograd saves for the backward pass, per image at ``resolution`` px, in fp32,
    # excluding the parameters (counted separately).
    activation_bytes: int
    resolution: int
    parameters: int

    def activation_bytes_at(self, resolution: int) -> float:
        """Saved-activation bytes per image at ``resolution`` px, fp32 (they scale with pixel count)."""
        return self.activation_bytes * (resolution / self.resolution) ** 2


@functools.lru_cache(maxsize=8)
def measure_network(name: str, head: str, blurpool: bool, num_classes: int) -> NetworkMeasurement:
    """Sum the storage of every tensor autograd saves during one training-mode forward pass of one image."""
    from composer.functional import apply_blurpool

    from model import build_model
    from recipes.schema import ModelConfig

    network = build_model(ModelConfig(name=name, head=head), num_classes).module
    if blurpool:
        apply_blurpool(network)
    network.train()
    parameter_storages = {parameter.untyped_storage().data_ptr() for parameter in network.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    image = torch.randn(1, 3, ACTIVATION_RESOLUTION, ACTIVATION_RESOLUTION)
    # One thread: a batch of one gains nothing from more, and on a busy machine their barriers cost seconds.
    with one_thread(), torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        network(image)
    parameters = sum(parameter.numel() for parameter in network.parameters())
    return NetworkMeasurement(sum(saved.values()), ACTIVATION_RESOLUTION, parameters)


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


def write_sample_jpegs(folder: Path, count: int = SAMPLE_IMAGE_COUNT, seed: int = 0) -> None:
    """ImageNet-like JPEGs (500x375, quality 90) in ``folder/train/<class>/``, cut from scikit-learn's two
    bundled photographs with colour shifts and sensor-like noise, so they decode like photos rather than flat
    colour. ``folder/val/<class>`` links to the same files: only the transform's cost matters here."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(array) for array in load_sample_images().images]
    width, height = SAMPLE_IMAGE_SIZE
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


@contextmanager
def sample_datasets(config: DictConfig) -> Iterator[tuple[Dataset, Dataset]]:
    """The recipe's training and eval transforms over generated ImageNet-sized JPEGs: (train, eval)."""
    from data import build_data

    with tempfile.TemporaryDirectory(prefix="plan-images-") as scratch:
        folder = Path(scratch)
        write_sample_jpegs(folder / "images")
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
                },
            },
        )  # fmt: skip
        bundle = build_data(sample, bad_image_list=folder / "bad_images.tsv")
        yield bundle.train.dataloader.dataset, bundle.val.dataloader.dataset


def cpu_training_images_per_second(config: DictConfig, num_classes: int, seconds: float) -> float:
    """Training images per second of the recipe's network on one core of this CPU, after one untimed step:
    forward, loss, backward and an optimizer step at ``data.train_resolution`` on a small batch.

    One thread, because a busy machine makes several threads wait on each other (two steps took a minute with
    two threads on two loaded cores, seconds with one); the planner multiplies by the cores it plans for.
    """
    from algorithms.optimization import build_optimizer
    from model import build_model

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
