"""From a recipe to DataLoaders: pick the source by name, take the subset, add transforms, shard over processes.

``build_data`` is the one entry point train.py and evaluate.py call. Sources are looked up in ``SOURCES``
(name to a ``build_catalog(data, *, seed, train)`` function), so adding one is a module plus a line here.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from composer.core import DataSpec
from composer.utils import dist
from torch.utils.data import DataLoader, Dataset, IterableDataset

from data import digits, hf, ilsvrc, imagefolder, streaming, synthetic, tiny_imagenet
from data.bad_images import BadImageLog
from data.resumable_sampler import REPEATED_EPOCH_MULTIPLE, ResumableSampler
from data.samples import Catalog, Split
from data.subsets import balanced_subset, subset_catalog
from data.transforms import eval_transform, microbatch_transform, train_transform
from recipes.errors import UsageError
from recipes.schema import DataSource, Task

# Keyed by the schema's names (``recipes.schema.DataSource``), so the recipe loader rejects an unknown source
# before this module is imported; tests/test_data_loaders.py checks every name has its builder.
SOURCES: dict[DataSource, Callable[..., Catalog]] = {
    DataSource.digits: digits.build_catalog,
    DataSource.imagefolder: imagefolder.build_catalog,
    DataSource.ilsvrc: ilsvrc.build_catalog,
    DataSource.hf: hf.build_catalog,
    DataSource.synthetic: synthetic.build_catalog,
    DataSource.streaming: streaming.build_catalog,
    DataSource.tiny_imagenet: tiny_imagenet.build_catalog,
}


@dataclass
class DataBundle:
    """Everything the trainer and evaluator need from the data."""

    # Composer DataSpecs wrapping the DataLoaders (train is None when built eval-only); their
    # microbatch_transforms turn the fast pipeline's uint8 images into normalised floats on the device.
    train: DataSpec | None
    val: DataSpec
    num_classes: int
    class_names: list[str]
    # Images in the (subsetted) training set, over all processes; 0 when built eval-only.
    train_size: int
    val_size: int
    # Images that could not be decoded (data.on_bad_image), listed by every worker.
    bad_images: BadImageLog
    # task=moco_v3 with moco.knn_interval set: the k-NN monitor's labelled bank (``knn_bank_split``), one
    # centre-cropped view per image as validation sees it, in a fixed order; None otherwise.
    knn_bank: DataSpec | None = None


def build_data(
    cfg: Any, *, train: bool = True, device: str = "cpu", bad_image_list: str | Path | None = None
) -> DataBundle:
    """Build the recipe's data (``cfg`` is the whole recipe: it reads ``data``, ``task``, ``seed`` and the batch
    sizes). A ``task=moco_v3`` training set yields two views per image (``(B, 2, 3, H, W)`` batches); its
    validation set stays single-view, and with ``moco.knn_interval`` set the bundle holds the k-NN monitor's
    bank of training images too (``knn_bank``).

    ``device`` ("cpu" or "gpu") is where batches go: pinned host memory (``data.pin_memory``) only speeds up
    copies to a GPU. ``bad_image_list`` is the file listing skipped images (a temporary file when None).
    """
    data = cfg.data
    builder = SOURCES[data.source]
    world_size = dist.get_world_size()
    train_batch = split_batch_over_processes("global_batch_size", cfg.global_batch_size, world_size)
    eval_total = cfg.global_batch_size if cfg.eval_batch_size is None else cfg.eval_batch_size
    eval_batch = split_batch_over_processes("eval_batch_size", eval_total, world_size)
    _check_loader_settings(data)

    bad_images = BadImageLog(bad_image_list, data.on_bad_image)
    normalise = microbatch_transform(data)
    pin_memory = data.pin_memory and device == "gpu"
    if data.source == DataSource.streaming:
        streaming.endpoint_environment(cfg.s3_endpoint_url)
    catalog = subset_catalog(builder(data, seed=cfg.seed, train=train), data, cfg.seed)
    val_dataset = catalog.val.to_dataset(catalog.classes, eval_transform(data), bad_images)
    val_loader = make_loader(
        val_dataset, eval_batch, data, seed=cfg.seed, shuffle=False, drop_last=False, pin_memory=pin_memory
    )
    train_spec, train_size = None, 0
    if catalog.train is not None:
        # task=moco_v3: two views per image, labels carried along but ignored by the pretraining model.
        transform = train_transform(data, cfg.task)
        if isinstance(catalog.train, streaming.StreamSplit):
            # Streaming partitions the samples by the per-process batch.
            catalog.train.batch_size = train_batch
        train_dataset = catalog.train.to_dataset(catalog.classes, transform, bad_images)
        train_size = _total_size(train_dataset, world_size)
        loader = make_loader(
            train_dataset,
            train_batch,
            data,
            seed=cfg.seed,
            shuffle=True,
            drop_last=data.drop_last,
            pin_memory=pin_memory,
            repeats=data.repeated_augmentation,
        )
        if len(loader) == 0 and data.repeated_augmentation > 1:
            raise UsageError(
                f"data.repeated_augmentation={data.repeated_augmentation} rounds each epoch down to a multiple of "
                f"{REPEATED_EPOCH_MULTIPLE} images (torchvision's RASampler), and {train_size} images leave fewer "
                f"than one batch of global_batch_size={cfg.global_batch_size}. Use more images or set "
                "data.repeated_augmentation=1."
            )
        if len(loader) == 0:
            raise UsageError(
                f"The training set has {train_size} images, fewer than one batch of global_batch_size="
                f"{cfg.global_batch_size}, and data.drop_last=true would drop them all. Lower global_batch_size, "
                "use more images (data.subset_size) or set data.drop_last=false."
            )
        train_spec = DataSpec(loader, microbatch_transforms=normalise)
    knn_bank = None
    if catalog.train is not None and cfg.task == Task.moco_v3 and cfg.moco.knn_interval is not None:
        bank = knn_bank_split(cfg, catalog.train, builder)
        bank_dataset = bank.to_dataset(catalog.classes, eval_transform(data), bad_images)
        bank_loader = make_loader(
            bank_dataset,
            eval_batch,
            data,
            seed=cfg.seed,
            shuffle=False,
            drop_last=False,
            pin_memory=pin_memory,
        )
        knn_bank = DataSpec(bank_loader, microbatch_transforms=normalise)
    return DataBundle(
        train=train_spec,
        val=DataSpec(val_loader, microbatch_transforms=normalise),
        num_classes=len(catalog.classes),
        class_names=list(catalog.classes),
        train_size=train_size,
        val_size=_total_size(val_dataset, world_size),
        bad_images=bad_images,
        knn_bank=knn_bank,
    )


def knn_bank_split(cfg: Any, train: Any, builder: Callable[..., Catalog]) -> Split:
    """The k-NN monitor's bank: ``moco.knn_train_images`` of the (subsetted) training set, spread evenly over
    its classes and drawn with the run's seed (``data.subsets.balanced_subset``; all of it when smaller).

    A streamed training split cannot be drawn from here: the source is asked again for a training subset of that
    size, which ``data.hf_subsets`` draws from the stream once into ``data.cache_dir`` (a streamed training split
    means no training subset keys are set, so only ``subset_size`` changes).
    """
    total = cfg.moco.knn_train_images
    if total < 1:
        raise UsageError(
            f"moco.knn_train_images={total} must be a positive number of training images (10000 by default), "
            "or set moco.knn_interval=null to turn the k-NN monitor off."
        )
    if isinstance(train, Split):
        samples = balanced_subset(train.samples, total=total, per_class_cap=None, seed=cfg.seed)
        return Split(samples, train.load, train.root)
    data = cfg.data.copy()
    data.subset_size = str(total)
    return subset_catalog(builder(data, seed=cfg.seed, train=True), data, cfg.seed).train


def split_batch_over_processes(key: str, total: int, world_size: int) -> int:
    """``total`` images split evenly over the processes, or an error naming the key and both numbers."""
    if total < 1:
        raise UsageError(f"{key}={total} must be a positive number of images.")
    if total % world_size:
        raise UsageError(
            f"{key}={total} does not divide over {world_size} processes; use a multiple of {world_size} "
            f"such as {max(world_size, total // world_size * world_size)}."
        )
    return total // world_size


def make_loader(
    dataset: Dataset,
    batch_size: int,
    data: Any,
    *,
    seed: int,
    shuffle: bool,
    drop_last: bool,
    pin_memory: bool = False,
    repeats: int = 1,
) -> DataLoader:
    """A DataLoader reading this process's share (``ResumableSampler``, each image ``repeats`` times per epoch),
    seeded for reproducible, resumable runs."""
    streamed = isinstance(dataset, IterableDataset)
    workers = data.num_workers
    # Map-style data: Composer's DistributedSampler order and shares, able to start a resumed epoch part-way, and
    # each sample seeded from (seed, epoch, index) rather than from a worker's RNG (data.resumable_sampler).
    sampler = (
        None
        if streamed
        else ResumableSampler(dataset, shuffle=shuffle, drop_last=drop_last, seed=seed, repeats=repeats)
    )
    # A streamed dataset still augments from the worker RNGs (torch, random, numpy), derived from this generator;
    # per rank, so processes augment differently.
    generator = torch.Generator().manual_seed(seed + dist.get_global_rank())
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        # A streamed training set counts epochs inside the workers to reshuffle, so they must persist.
        persistent_workers=workers > 0 and (data.persistent_workers or (streamed and shuffle)),
        prefetch_factor=data.prefetch_factor if workers > 0 else None,
        generator=generator,
        worker_init_fn=leave_sigterm_to_the_trainer,
    )


def start_workers(loader: DataSpec | DataLoader | None) -> None:
    """Fork a persistent-worker loader's workers now, as Composer's ``spin_dataloaders`` does for the evaluators.

    A DataLoader forks its workers on its first ``iter()``. Composer iterates every evaluator once when fit starts
    (``Trainer._spin_dataloaders_to_cur_epoch``), but train.py turns that spinning off (``ResumableSampler`` skips
    seen batches itself), so without this the validation workers were forked at the first evaluation, from a
    process by then holding gradients and the optimizer's state, and the training step after it copied every page
    the fork had shared: 120,000 page faults against 25,000 in a step of the smoke recipe (ResNet-50, 2 cores),
    15,000 once the workers start here. The batches prefetched now are dropped by the next ``iter()``; no RNG is
    drawn but the loader's own generator.
    """
    dataloader = loader.dataloader if isinstance(loader, DataSpec) else loader
    if isinstance(dataloader, DataLoader) and dataloader.num_workers > 0 and dataloader.persistent_workers:
        iter(dataloader)


def leave_sigterm_to_the_trainer(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker drops a SIGTERM that its parent did not send.

    systemd at shutdown and Slurm's scancel signal every process of a job, DataLoader workers included. PyTorch's
    worker handler dies on a SIGTERM from anyone but its parent, and the trainer then fails ("DataLoader worker
    exited unexpectedly") before it can checkpoint at the next batch boundary (``callbacks.preemption``). Here
    the signal is blocked and one thread waits for it: from the parent, which is shutting its workers down, the
    worker exits as PyTorch's handler would; from anyone else it is dropped, and the worker ends with its parent.
    """
    if not hasattr(signal, "sigwaitinfo"):  # not on macOS: keep PyTorch's handler
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def exit_when_the_parent_asks() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=exit_when_the_parent_asks, name="sigterm-from-parent", daemon=True).start()


def _check_loader_settings(data: Any) -> None:
    """DataLoader settings that torch would reject with a less helpful message."""
    if data.num_workers < 0:
        raise UsageError(f"data.num_workers={data.num_workers} must be 0 (load in the main process) or more.")
    if data.num_workers > 0 and data.prefetch_factor < 1:
        raise UsageError(f"data.prefetch_factor={data.prefetch_factor} must be at least 1.")
    if data.repeated_augmentation < 1:
        raise UsageError(
            f"data.repeated_augmentation={data.repeated_augmentation} must be the number of copies of each image "
            "per epoch: 1 (off) or more (torchvision's ResNet-50 V2 recipe uses 4)."
        )
    if data.repeated_augmentation > 1 and data.source == DataSource.streaming:
        raise UsageError(
            f"data.repeated_augmentation={data.repeated_augmentation} deals images out through the loader's "
            "sampler, and data.source=streaming has none (Streaming orders its own samples). Set "
            "data.repeated_augmentation=1, or train from a folder source."
        )


def _total_size(dataset: Dataset, world_size: int) -> int:
    """Images over all processes: a streamed dataset's length is this process's share."""
    return len(dataset) * world_size if isinstance(dataset, IterableDataset) else len(dataset)
