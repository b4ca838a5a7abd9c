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

from data.bad_images import MAX_CONSECUTIVE_BAD, BadImageLog, ImageDecodeError, decode_image
from data.resumable_sampler import SampleKey, seeded
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
        bad_images: BadImageLog | None = None,
    ) -> None:
        super().__init__(root=root, transform=transform)
        self.samples = samples
        self.load = load
        self.classes = classes
        self.bad_images = bad_images or BadImageLog(None, "fail")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """The transformed image and its label; an undecodable image is replaced by the next one (or fails).

        An index from ``ResumableSampler`` (a ``SampleKey``) seeds the augmentation from (seed, epoch, index), so
        the sample looks the same whichever worker reads it and whether or not earlier samples were skipped.
        """
        if isinstance(index, SampleKey):
            with seeded(index.seed):
                return self._load_replacing_bad(int(index))
        return self._load_replacing_bad(index)

    def _load_replacing_bad(self, index: int) -> tuple[Any, int]:
        """Decode and transform sample ``index``, replacing an undecodable image by the next one (or failing)."""
        for _ in range(MAX_CONSECUTIVE_BAD):
            sample, label = self.samples[index]
            try:
                return decode_image(self.load, sample, self.transform), label
            except ImageDecodeError as error:
                self.bad_images.handle(self.describe(sample), error)
                index = (index + 1) % len(self.samples)
        raise UsageError(
            f"{MAX_CONSECUTIVE_BAD} images in a row could not be decoded (the last near sample {index} of "
            f"{self.root}); see {self.bad_images.path}. The data itself is likely broken: check data.path."
        )

    def describe(self, sample: Any) -> str:
        """A file path, or the row number within the split, for reports and errors."""
        return sample if isinstance(sample, str) else f"{self.root} sample {sample}"

    @property
    def targets(self) -> list[int]:
        """Labels in sample order, under torchvision's name for them."""
        labels = getattr(self.samples, "labels", None)  # an indexed folder lists them without making samples
        return labels() if labels is not None else [label for _, label in self.samples]


@dataclass
class Split:
    """One split's labelled samples and the function that decodes a sample into a PIL image."""

    samples: list[Sample]
    load: Callable[[Any], Image.Image]
    # Shown in the dataset's repr and in error messages.
    root: str | None = None

    def to_dataset(
        self, classes: list[str], transform: Callable, bad_images: BadImageLog | None = None
    ) -> LabelledImages:
        """The torchvision dataset the DataLoader reads."""
        return LabelledImages(
            self.samples, self.load, classes, transform, root=self.root, bad_images=bad_images
        )


@dataclass
class Catalog:
    """A source's answer: class names in label order, and its splits (train is None when built eval-only).

    A split is a ``Split``, or, for streamed Hugging Face data, an object with the same ``to_dataset`` method.
    """

    classes: list[str]
    train: Any | None
    val: Any


def open_image(path: str) -> Image.Image:
    """Open an image file without decoding it: the transforms decode, at reduced scale where they can.

    The first transform step always decodes (``ToRGB`` or a ``data.fast_transforms`` decode step), which also
    closes the file.
    """
    return Image.open(path)


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
