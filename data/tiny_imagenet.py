"""Tiny ImageNet (Stanford CS231n's 200-class, 64x64 subset of ImageNet) as its official zip unpacks it.

    data.path/wnids.txt                               the 200 classes, one wnid per line
    data.path/words.txt                               "wnid<TAB>name, other names" for many more wnids
    data.path/train/<wnid>/images/<wnid>_<n>.JPEG     500 per class (train/<wnid>/<wnid>_boxes.txt ignored)
    data.path/val/images/val_<n>.JPEG                 10,000, flat, labelled by the file below
    data.path/val/val_annotations.txt                 "val_<n>.JPEG<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1"
    data.path/test/images/                            unlabelled: ignored

Classes are the sorted wnids of wnids.txt (not the file's own order): the order an ImageFolder of train/ (and
``data.source=imagefolder`` on a val folder sorted into wnid folders) gives, so a model trained on either layout
has the same class indices. Names are words.txt's first name for each wnid (the wnid added where two classes
share one). ``data.train_split`` and ``data.val_split`` keep their meaning: the folder names under data.path
("train" and "val" in the zip). Eval-only builds read no train folder: wnids.txt gives the classes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from data.file_index import cache_folder, index_folder
from data.ilsvrc import class_names, label_flat_images
from data.imagefolder import _few, labelled_files
from data.samples import Catalog, Split, class_folders, open_image, require_path
from recipes.errors import UsageError

LAYOUT = (
    "wnids.txt, words.txt, {train}/<wnid>/images/*.JPEG, {val}/images/*.JPEG and {val}/val_annotations.txt "
    "(tiny-imagenet-200.zip unpacked)"
)
WNIDS_FILE = "wnids.txt"
WORDS_FILE = "words.txt"
ANNOTATIONS_FILE = "val_annotations.txt"
DOWNLOAD = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# The published sizes (Le & Yang, Tiny ImageNet Visual Recognition Challenge, CS231N 2015): 200 classes of
# 500 training and 50 validation images, each 64x64 pixels.
NUM_CLASSES = 200
TRAIN_IMAGES_PER_CLASS = 500
VAL_IMAGES_PER_CLASS = 50
IMAGE_SIDE = 64


def build_catalog(data: Any, *, seed: int, train: bool) -> Catalog:
    """Classes (sorted wnids, named from words.txt) and labelled image files under ``data.path``; ``seed`` is
    unused (the folders fix the split)."""
    layout = LAYOUT.format(train=data.train_split, val=data.val_split)
    root = require_path(data, layout)
    wnids = read_wnids(root / WNIDS_FILE, layout)
    index_cache = cache_folder(data)
    val_folder = root / data.val_split
    images = val_folder / "images"
    if not images.is_dir():
        raise UsageError(
            f"{images} does not exist: data.path={data.path} should hold {layout}. A val folder already sorted "
            "into wnid folders reads with data.source=imagefolder."
        )
    val_files = index_folder(images, index_cache).images()
    if not val_files:
        raise UsageError(f"{images} holds no images; expected {layout} under data.path={data.path}.")
    annotations = val_folder / ANNOTATIONS_FILE
    val_samples = label_flat_images(
        val_files,
        read_annotations(annotations),
        wnids,
        folder=images,
        label_file=str(annotations),
        classes_from=f"one of the {len(wnids)} classes in {root / WNIDS_FILE}",
        hint=" Use the wnids.txt and val folder of the same tiny-imagenet-200 download.",
    )
    train_split = None
    if train:
        train_folder = root / data.train_split
        check_train_classes(train_folder, wnids, layout)
        train_split = Split(labelled_files(train_folder, wnids, index_cache), open_image, str(train_folder))
    return Catalog(
        class_names(root / WORDS_FILE, wnids), train_split, Split(val_samples, open_image, str(images))
    )


def read_wnids(path: Path, layout: str) -> list[str]:
    """The sorted class wnids of ``wnids.txt``, or an error naming the file."""
    if not path.is_file():
        raise UsageError(
            f"{path} does not exist: data.path={path.parent} should hold {layout}. Point data.path at the "
            f"tiny-imagenet-200 folder that {DOWNLOAD} unpacks to."
        )
    wnids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not wnids:
        raise UsageError(
            f"{path} lists no wnids; it should hold one class wnid (such as n01443537) per line."
        )
    repeated = sorted(wnid for wnid, count in Counter(wnids).items() if count > 1)
    if repeated:
        raise UsageError(
            f"{path} lists {', '.join(repeated[:5])} more than once; each class must appear once."
        )
    return sorted(wnids)


def read_annotations(path: Path) -> dict[str, str]:
    """Image id (file name without extension) to wnid, from ``val_annotations.txt``'s first two columns."""
    if not path.is_file():
        raise UsageError(
            f"{path} does not exist: the flat val images need their labels (lines 'val_0.JPEG<TAB>wnid<TAB>"
            "box'), as tiny-imagenet-200.zip ships them."
        )
    labels: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        columns = line.split("\t")
        if not line.strip():
            continue
        if len(columns) < 2 or not columns[1].strip():
            raise UsageError(
                f"{path} line {number}: {line!r} is not 'file name<TAB>wnid<TAB>box'; use the file from "
                "tiny-imagenet-200.zip."
            )
        labels[Path(columns[0].strip()).stem] = columns[1].strip()
    return labels


def check_train_classes(train_folder: Path, wnids: list[str], layout: str) -> None:
    """The train folder holds exactly one folder per wnid: a missing one has no images to learn; an extra one
    would shift the class indices of an ImageFolder of the same folder, breaking the promise of one order."""
    if not train_folder.is_dir():
        raise UsageError(
            f"{train_folder} does not exist; expected {layout} under {train_folder.parent} (data.train_split "
            "names the training folder)."
        )
    present = set(class_folders(train_folder))
    missing = [wnid for wnid in wnids if wnid not in present]
    extra = sorted(present - set(wnids))
    if missing or extra:
        raise UsageError(
            f"The class folders of {train_folder} do not match {train_folder.parent / WNIDS_FILE}: missing "
            f"{_few(missing)}; not in wnids.txt: {_few(extra)}. Unpack the whole tiny-imagenet-200.zip again, "
            "or remove the extra folders."
        )
