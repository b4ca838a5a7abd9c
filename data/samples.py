"""What every source hands the loader: class names plus labelled samples per split, and the dataset over them.

A sample is whatever its split's ``load`` turns into a PIL image: a file path for the folder sources, a row number
for a Hugging Face dataset, an index for synthetic images. Plain ``(sample, label)`` lists let ``data.subsets``
choose images without decoding any, and one dataset class serves every map-style source.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torchvision.datasets import VisionDataset

from recipes.errors import UsageError

# torchvision's IMG_EXTENSIONS, so a folder torchvision's ImageFolder reads is read the same way here.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

Sample = tuple[Any, int]


class LabelledImages(VisionDataset):
    """A torchvision ``VisionDataset`` over ``(sample, label)`` pairs, yielding ``(transform(image), label)``.

    Composer's RandAugment only accepts a ``VisionDataset`` and inserts itself into ``transform``; keeping the
    transform a plain attribute read on every item is what makes that insertion take effect.
    """

    def __init__(
        self,
        samples: list[Sample],
        load: Callable[[Any], Image.Image],
        classes: list[str],
        transform: Callable | None = None,
        root: str | None = None,
    ) -> None:
        super().__init__(root=root, transform=transform)
        self.samples = samples
        self.load = load
        self.classes = classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        sample, label = self.samples[index]
        image = self.load(sample)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    @property
    def targets(self) -> list[int]:
        """Labels in sample order, under torchvision's name for them."""
        return [label for _, label in self.samples]


@dataclass
class Split:
    """One split's labelled samples and the function that decodes a sample into a PIL image."""

    samples: list[Sample]
    load: Callable[[Any], Image.Image]
    # Shown in the dataset's repr and in error messages.
    root: str | None = None

    def to_dataset(self, classes: list[str], transform: Callable) -> LabelledImages:
        """The torchvision dataset the DataLoader reads."""
        return LabelledImages(self.samples, self.load, classes, transform, root=self.root)


@dataclass
class Catalog:
    """A source's answer: class names in label order, and its splits (train is None when built eval-only).

    A split is a ``Split``, or, for streamed Hugging Face data, an object with the same ``to_dataset`` method.
    """

    classes: list[str]
    train: Any | None
    val: Any


def open_image(path: str) -> Image.Image:
    """Decode an image file completely, so the file is closed before the image is used (PIL opens lazily)."""
    image = Image.open(path)
    image.load()
    return image


def expand_path(path: str) -> Path:
    """``~`` and environment variables expanded, as a shell would before handing the path over."""
    return Path(os.path.expandvars(os.path.expanduser(path)))


def require_path(data: Any, layout: str) -> Path:
    """``data.path`` for a source that reads a folder, or a UsageError describing the folder it expects."""
    if not data.path:
        raise UsageError(f"data.source={data.source} needs data.path, the folder holding {layout}.")
    root = expand_path(data.path)
    if not root.is_dir():
        raise UsageError(
            f"data.path={data.path} is not a folder (data.source={data.source} expects {layout})."
        )
    return root


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the sub-folders, as torchvision orders classes; hidden ones (.ipynb_checkpoints) skipped."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, following links, as torchvision does), in sorted order."""
    found = []
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        subfolders.sort()
        found.extend(
            os.path.join(directory, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return found
