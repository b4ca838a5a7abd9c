"""Benchmark the data pipeline: images per second per worker, ours against torchvision ImageFolder + PIL.

    python bench/data_pipeline.py [--output FILE] [--images N] [--rounds R] [--root DIR]

On a generated set of ImageNet-like JPEGs (500x375, quality 90, crops of real photographs with colour shifts and
sensor-like noise, so entropy and decode cost are those of photos, not flat colour), for the training and the
eval transforms at 224, 160, 128 and 64 px:

* baseline: ``torchvision.datasets.ImageFolder`` with torchvision's classification presets (RandomResizedCrop +
  RandomHorizontalFlip, or Resize + CenterCrop; then ToTensor + Normalize), PIL decoding;
* ours: this project's imagefolder source with ``data.pipeline=fast`` (reduced-size JPEG decode, one
  crop-and-resize, uint8 out; normalisation runs per batch on the training device, so it is not a worker's job;
  ``ours_cpu_normalise_img_s`` adds it back, batched on the CPU, for a GPU-less comparison).

The recipe's training augmentations are measured the same way at 224 px (``AUGMENTED``): ours with
``data.auto_augment=ta_wide`` (+ ``data.random_erasing=0.1``, + ``data.color_jitter``) against the torchvision
preset with the same transforms where torchvision's references/classification/presets.py puts them
(TrivialAugmentWide on the PIL crop, RandomErasing on the normalised floats; ColorJitter after the policy).
Ours without them joins the alternation, so ``of_plain_ours`` is what they cost ours under the same load.

Both read every image once per pass, in the same order, in one process with one thread (what a DataLoader
worker does); passes alternate between the two and the best of ``--rounds`` counts, so background load hits both
alike. Labels must come out in the same order and shapes must match, or the run fails. Decode-only rates (the
ceiling for full-size decoding) are measured in the same run for each decoder available.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import simplejpeg
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision import datasets, io, transforms

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from data import build_data  # noqa: E402
from data.fast_transforms import NormalizeBatch  # noqa: E402
from recipes.schema import IMAGENET_MEAN, IMAGENET_STD, RecipeConfig  # noqa: E402

RESOLUTIONS = (224, 160, 128, 64)
# NVIDIA DALI's CPU pipeline (the optional `dali` extra) is measured at the paid phases' training sizes.
DALI_RESOLUTIONS = (224, 160, 128)
TARGETS = {"224": 1.3, "128": 1.6}
# Training augmentations measured at AUGMENTED_RESOLUTION, as recipe `data` keys (ImageNet recipes' values).
JITTER = [0.4, 0.4, 0.4, 0.0]
AUGMENTED = {
    "ta_wide": {"auto_augment": "ta_wide"},
    "ta_wide+erase": {"auto_augment": "ta_wide", "random_erasing": 0.1},
    "ta_wide+erase+jitter": {"auto_augment": "ta_wide", "random_erasing": 0.1, "color_jitter": JITTER},
}
AUGMENTED_RESOLUTION = 224
CLASSES = 8
SIZE = (500, 375)


def generate_images(root: Path, count: int, seed: int = 0) -> None:
    """ImageNet-like JPEGs in ``root/train/<class>/`` (and the same files listed for eval), made once."""
    from sklearn.datasets import load_sample_images

    folder = root / "train"
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.JPEG")) == count:
        return
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(array) for array in load_sample_images().images]  # two 640x427 photographs
    for index in range(count):
        photo = photos[index % len(photos)]
        width = int(rng.integers(240, photo.width))
        height = min(int(width * SIZE[1] / SIZE[0]), photo.height)
        left = int(rng.integers(0, photo.width - width + 1))
        top = int(rng.integers(0, photo.height - height + 1))
        crop = photo.crop((left, top, left + width, top + height)).resize(SIZE, Image.BICUBIC)
        pixels = np.asarray(crop, dtype=np.float32) * rng.uniform(0.7, 1.3, 3) + rng.normal(
            0, 6, (SIZE[1], SIZE[0], 3)
        )
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        path = folder / f"class{index % CLASSES}" / f"image{index:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    (root / "val").mkdir(exist_ok=True)
    for class_folder in folder.iterdir():  # eval reads the same files: the point is the transform cost
        link = root / "val" / class_folder.name
        if not link.exists():
            link.symlink_to(class_folder.resolve(), target_is_directory=True)


def baseline_dataset(
    root: Path, kind: str, resolution: int, augmentation: dict | None = None
) -> datasets.ImageFolder:
    """torchvision's ImageFolder with the reference classification presets (and ``augmentation``'s keys, as
    references/classification/presets.py places them)."""
    augmentation = augmentation or {}
    normalise = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if augmentation.get("random_erasing"):
        normalise.append(transforms.RandomErasing(p=augmentation["random_erasing"], value=0))
    if kind == "train":
        steps = [transforms.RandomResizedCrop(resolution, antialias=True), transforms.RandomHorizontalFlip()]
        if augmentation.get("auto_augment") == "ta_wide":
            steps.append(transforms.TrivialAugmentWide())
        if augmentation.get("color_jitter"):
            steps.append(transforms.ColorJitter(*augmentation["color_jitter"]))
    else:
        steps = [
            transforms.Resize(round(resolution / 0.875), antialias=True),
            transforms.CenterCrop(resolution),
        ]
    return datasets.ImageFolder(str(root / "train"), transform=transforms.Compose(steps + normalise))


def our_dataset(
    root: Path, kind: str, resolution: int, scratch: Path, augmentation: dict | None = None
) -> torch.utils.data.Dataset:
    """This project's imagefolder source with the fast pipeline (and ``augmentation``'s data keys), as train.py
    builds it."""
    data = {"source": "imagefolder", "path": str(root), "pipeline": "fast", "num_workers": 0}
    data |= {"train_resolution": resolution, "eval_resolution": resolution, "cache_dir": str(scratch)}
    data |= augmentation or {}
    config = OmegaConf.merge(OmegaConf.structured(RecipeConfig), {"global_batch_size": 8, "data": data})
    bundle = build_data(config)
    loader = bundle.train.dataloader if kind == "train" else bundle.val.dataloader
    return loader.dataset


def timed_pass(dataset: torch.utils.data.Dataset) -> tuple[float, list[int], tuple]:
    """One pass over the dataset in index order: images per second, labels, the shape of an output."""
    labels = []
    started = time.perf_counter()
    for index in range(len(dataset)):
        image, label = dataset[index]
        labels.append(label)
    seconds = time.perf_counter() - started
    return len(labels) / seconds, labels, tuple(image.shape)


def compare(
    ours: torch.utils.data.Dataset,
    baseline: torch.utils.data.Dataset,
    rounds: int,
    label: str,
    plain: torch.utils.data.Dataset | None = None,
) -> dict:
    """Best-of-``rounds`` rates of ours and the baseline in alternating passes, their ratio, and ours normalised
    on the CPU; labels and shapes must agree. ``plain`` (ours without the augmentations) joins the alternation,
    so what the augmentations cost ours is measured under the same load."""
    best_ours = best_baseline = best_plain = 0.0
    for _ in range(rounds):
        rate, baseline_labels, baseline_shape = timed_pass(baseline)
        best_baseline = max(best_baseline, rate)
        rate, our_labels, our_shape = timed_pass(ours)
        best_ours = max(best_ours, rate)
        if plain is not None:
            best_plain = max(best_plain, timed_pass(plain)[0])
    if our_labels != baseline_labels or our_shape != baseline_shape:
        raise SystemExit(f"{label}: outputs differ in label order or shape")
    row = {
        "ours_img_s": round(best_ours, 1),
        "baseline_img_s": round(best_baseline, 1),
        "ratio": round(best_ours / best_baseline, 2),
        "ours_cpu_normalise_img_s": round(cpu_normalise_rate(ours), 1),
        "output_shape": list(our_shape),
    }
    if plain is not None:
        row["ours_plain_img_s"] = round(best_plain, 1)
        row["of_plain_ours"] = round(best_ours / best_plain, 2)
    return row


def cpu_normalise_rate(dataset: torch.utils.data.Dataset, batch_size: int = 64) -> float:
    """Images per second for our worker output plus normalising it batched on the CPU (no GPU to do it)."""
    normalise = NormalizeBatch(IMAGENET_MEAN, IMAGENET_STD)
    started = time.perf_counter()
    batch = []
    for index in range(len(dataset)):
        batch.append(dataset[index])
        if len(batch) == batch_size or index == len(dataset) - 1:
            normalise(
                (torch.stack([image for image, _ in batch]), torch.tensor([label for _, label in batch]))
            )
            batch = []
    return len(dataset) / (time.perf_counter() - started)


def dali_train_rate(root: Path, resolution: int, rounds: int, count: int) -> float | str:
    """Images per second of NVIDIA DALI's CPU-only training pipeline on the same files, or why it did not run.

    ``device_id=None`` (no GPU), one worker thread: the file reader, ``decoders.image_random_crop`` (DALI's
    RandomResizedCrop: area 0.08-1, aspect 3/4-4/3, as torchvision's), ``resize`` to the resolution and
    ``crop_mirror_normalize`` with a random flip to normalised float CHW, what the torchvision baseline returns.
    DALI's executor adds threads of its own beside the one worker thread. Best of ``rounds`` epochs after one
    untimed epoch.
    """
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError as error:
        return f"not installed ({error}); pip install -e '.[dali]'"
    batch = 16

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, seed=0)
    def training() -> tuple:
        jpegs, labels = fn.readers.file(file_root=str(root / "train"), random_shuffle=False, name="Reader")
        images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=resolution, resize_y=resolution)
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW", mirror=fn.random.coin_flip(),
            mean=[255 * value for value in IMAGENET_MEAN], std=[255 * value for value in IMAGENET_STD],
        )  # fmt: skip
        return images, labels

    try:
        pipeline = training()
        pipeline.build()
    except RuntimeError as error:
        return f"could not build the CPU pipeline: {error}"
    iterations = max(1, count // batch)
    for _ in range(iterations):
        images, _ = pipeline.run()
    if tuple(images.as_array().shape[1:]) != (3, resolution, resolution):
        raise SystemExit(f"DALI {resolution}px: output shape {images.as_array().shape}")
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(iterations):
            pipeline.run()
        best = max(best, iterations * batch / (time.perf_counter() - started))
    return best


def decode_rates(files: list[str], rounds: int) -> dict[str, float]:
    """Full-size decode only, per decoder (and PIL's half-scale draft decode), images per second, best of
    ``rounds``: how the fast pipeline's decoders were chosen."""

    def pil(path: str) -> None:
        with Image.open(path) as image:
            image.convert("RGB")

    def pil_draft_half(path: str) -> None:
        with Image.open(path) as image:
            image.draft("RGB", (image.width // 2, image.height // 2))
            image.load()

    def torchvision_io(path: str) -> None:
        io.decode_jpeg(io.read_file(path), mode=io.ImageReadMode.RGB)

    def simplejpeg_decode(path: str) -> None:
        with open(path, "rb") as file:
            simplejpeg.decode_jpeg(file.read(), colorspace="RGB")

    decoders: dict[str, Callable[[str], None]] = {
        "pil_img_s": pil,
        "torchvision_io_img_s": torchvision_io,
        "simplejpeg_img_s": simplejpeg_decode,
        "pil_draft_half_img_s": pil_draft_half,
    }
    best = dict.fromkeys(decoders, 0.0)
    for _ in range(rounds):
        for name, decode in decoders.items():
            started = time.perf_counter()
            for path in files:
                decode(path)
            best[name] = max(best[name], len(files) / (time.perf_counter() - started))
    return {name: round(rate, 1) for name, rate in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--images", type=int, default=256, help="generated JPEGs (default 256)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating passes per setting; best counts")
    parser.add_argument("--root", help="folder for the generated images (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker runs with one thread

    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        root = Path(args.root) if args.root else scratch / "images"
        print(f"Generating {args.images} ImageNet-like JPEGs in {root} ...", flush=True)
        generate_images(root, args.images)
        files = sorted(str(path) for path in (root / "train").rglob("*.JPEG"))
        mean_kb = sum(os.path.getsize(path) for path in files) / len(files) / 1024
        results: dict = {"train": {}, "eval": {}}
        print(
            f"{'':6}{'px':>5}{'ours img/s':>12}{'baseline':>10}{'ratio':>7}{'ours+cpu norm':>15}{'dali':>8}{'/dali':>6}"
        )
        for kind in ("train", "eval"):
            for resolution in RESOLUTIONS:
                ours = our_dataset(root, kind, resolution, scratch / "cache")
                baseline = baseline_dataset(root, kind, resolution)
                row = compare(ours, baseline, args.rounds, f"{kind} {resolution}px")
                results[kind][str(resolution)] = row
                normalised = row["ours_cpu_normalise_img_s"]
                dali = ""
                if kind == "train" and resolution in DALI_RESOLUTIONS:
                    rate = dali_train_rate(root, resolution, args.rounds, len(files))
                    if isinstance(rate, str):
                        results["dali_skipped"] = rate
                    else:
                        row["dali_img_s"] = round(rate, 1)
                        row["ours_cpu_normalise_over_dali"] = round(normalised / rate, 2)
                        dali = f"{rate:>8.0f}{normalised / rate:>6.2f}x"
                print(
                    f"{kind:6}{resolution:>5}{row['ours_img_s']:>12.0f}{row['baseline_img_s']:>10.0f}"
                    f"{row['ratio']:>6.2f}x{normalised:>15.0f}{dali}",
                    flush=True,
                )
        plain = our_dataset(root, "train", AUGMENTED_RESOLUTION, scratch / "cache")
        results["train_augmented"] = {"resolution": AUGMENTED_RESOLUTION}
        print(
            f"train {AUGMENTED_RESOLUTION} px augmented{'ours img/s':>18}{'baseline':>10}{'ratio':>7}"
            f"{'ours+cpu norm':>15}{'of plain ours':>15}"
        )
        for name, augmentation in AUGMENTED.items():
            ours = our_dataset(root, "train", AUGMENTED_RESOLUTION, scratch / "cache", augmentation)
            baseline = baseline_dataset(root, "train", AUGMENTED_RESOLUTION, augmentation)
            row = compare(ours, baseline, args.rounds, f"train {AUGMENTED_RESOLUTION}px {name}", plain)
            row["augmentation"] = augmentation
            results["train_augmented"][name] = row
            print(
                f"  {name:30}{row['ours_img_s']:>12.0f}{row['baseline_img_s']:>10.0f}{row['ratio']:>6.2f}x"
                f"{row['ours_cpu_normalise_img_s']:>15.0f}{row['of_plain_ours']:>14.2f}x",
                flush=True,
            )
        results["decode_only"] = decode_rates(files, args.rounds)
        print("decode only (img/s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["decode_only"].items()))

    met = {size: results["train"][size]["ratio"] >= target for size, target in TARGETS.items()}
    results["targets"] = {f"train_{size}_ratio": target for size, target in TARGETS.items()}
    results["meets_targets"] = all(met.values())
    results["setup"] = {
        "images": len(files),
        "image_size": list(SIZE),
        "mean_file_kb": round(mean_kb, 1),
        "rounds": args.rounds,
        "threads": 1,
        "pillow": PIL.__version__,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    for size, target in TARGETS.items():
        verdict = "meets" if met[size] else "MISSES"
        print(f"train {size}px: {results['train'][size]['ratio']:.2f}x, {verdict} the {target}x target")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
