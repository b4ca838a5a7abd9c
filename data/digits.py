"""The embedded default data: scikit-learn's bundled handwritten digits, written once as a JPEG ImageFolder.

1,797 real 8x8 scans of 10 digits (values 0..16), upscaled smoothly to 32x32 greyscale-as-RGB JPEGs and split
stratified and seeded into ``train/`` and ``val/``. Going through JPEG files means the smoke test exercises the
same decode path, transforms and loader as ImageNet, with no download.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data.imagefolder import folder_catalog
from data.samples import Catalog, expand_path
from recipes.errors import UsageError

# Bump when the written images change (size, interpolation, quality), so an old cache is not reused.
VERSION = 1
IMAGE_SIZE = 32
JPEG_QUALITY = 95


def build_catalog(data: Any, *, seed: int, train: bool) -> Catalog:
    """The digits folder for this split fraction and seed (written on first use), read as an ImageFolder."""
    fraction = data.digits_val_fraction
    if not 0 < fraction < 1:
        raise UsageError(f"data.digits_val_fraction={fraction} must be between 0 and 1 (0.2 holds out 20%).")
    root = ensure_digits_folder(expand_path(data.cache_dir), fraction, seed)
    return folder_catalog(root / "train", root / "val", train=train)


def ensure_digits_folder(cache_dir: Path, val_fraction: float, seed: int) -> Path:
    """Path of the written digits folder, writing it first if absent.

    Writes go to a temporary folder renamed into place, so an interrupted write never leaves a half cache, and
    processes racing to write it (DDP ranks) each finish with the one complete copy.
    """
    folder = cache_dir / f"digits-v{VERSION}-{IMAGE_SIZE}px-val{val_fraction:g}-seed{seed}"
    if folder.is_dir():
        return folder
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache_dir))
    except OSError as error:
        raise UsageError(
            f"Cannot write the digits images under data.cache_dir={cache_dir}: {error}. "
            "Set data.cache_dir to a writable folder."
        ) from error
    try:
        write_digits(temporary, val_fraction, seed)
        try:
            temporary.rename(folder)
        except OSError:
            if not folder.is_dir():
                raise  # not another process finishing first: a real failure
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return folder


def write_digits(folder: Path, val_fraction: float, seed: int) -> None:
    """Write ``folder/{train,val}/<digit>/<index>.jpg`` with a stratified, seeded split."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes seconds to import
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train_indices, val_indices = train_test_split(
        indices, test_size=val_fraction, stratify=digits.target, random_state=seed % 2**32
    )
    for split, chosen in (("train", train_indices), ("val", val_indices)):
        for index in sorted(chosen):
            class_folder = folder / split / str(digits.target[index])
            class_folder.mkdir(parents=True, exist_ok=True)
            scan_image(digits.images[index]).save(class_folder / f"{index:04d}.jpg", quality=JPEG_QUALITY)


def scan_image(pixels: np.ndarray) -> Image.Image:
    """An 8x8 scan (0..16) as a smooth IMAGE_SIZE RGB image; bicubic keeps strokes soft as in a real scan."""
    grey = Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8))  # uint8 2-D: mode "L"
    return grey.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC).convert("RGB")
