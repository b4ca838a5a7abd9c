"""A folder of class folders per split, as torchvision's ImageFolder reads it.

    data.path/<train_split>/<class>/*.jpg
    data.path/<val_split>/<class>/*.jpg

Classes are the sorted folder names (torchvision's order), and both splits must hold the same class folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.file_index import LabelledFiles, cache_folder, index_folder
from data.samples import Catalog, Split, class_folders, open_image, require_path
from recipes.errors import UsageError

LAYOUT = "{train}/<class>/*.jpg and {val}/<class>/*.jpg (one folder per class in each split)"


def build_catalog(data: Any, *, seed: int, train: bool) -> Catalog:
    """Classes and labelled image files from ``data.path``; ``seed`` is unused (the folders fix the split)."""
    root = require_path(data, LAYOUT.format(train=data.train_split, val=data.val_split))
    return folder_catalog(
        root / data.train_split, root / data.val_split, train=train, index_cache=cache_folder(data)
    )


def folder_catalog(
    train_folder: Path, val_folder: Path, *, train: bool, index_cache: Path | None = None
) -> Catalog:
    """Catalog of two class-folder trees; eval-only builds read the train folder's class names, not its files.

    ``index_cache`` is the folder caching file listings (``data.file_index``); None lists the folders each time.
    """
    layout = LAYOUT.format(train=train_folder.name, val=val_folder.name)
    for folder, needed in ((train_folder, train), (val_folder, True)):
        if needed and not folder.is_dir():
            raise UsageError(
                f"{folder} does not exist. Expected {layout} under {folder.parent} "
                "(data.train_split and data.val_split name the split folders)."
            )
    val_classes = class_folders(val_folder)
    classes = class_folders(train_folder) if train_folder.is_dir() else val_classes
    if not classes:
        raise UsageError(f"{train_folder} holds no class folders. Expected {layout}.")
    if val_classes != classes:
        only_train = sorted(set(classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(classes))
        raise UsageError(
            f"The class folders of {train_folder} and {val_folder} differ: "
            f"only in train: {_few(only_train)}; only in val: {_few(only_val)}. "
            "Both splits need the same class folders, or labels would not mean the same class."
        )
    train_split = None
    if train:
        train_split = Split(labelled_files(train_folder, classes, index_cache), open_image, str(train_folder))
    val_split = Split(labelled_files(val_folder, classes, index_cache), open_image, str(val_folder))
    return Catalog(classes=classes, train=train_split, val=val_split)


def labelled_files(folder: Path, classes: list[str], index_cache: Path | None) -> LabelledFiles:
    """(image path, class index) for every image in ``folder/<class>/``; an empty class folder is an error."""
    samples = index_folder(folder, index_cache).labelled(classes)
    present = {label for _, _, label in samples.groups}
    for label, name in enumerate(classes):
        if label not in present:
            raise UsageError(
                f"{folder / name} holds no images (.jpg, .jpeg, .png, ...). Add images or remove the folder."
            )
    return samples


def _few(names: list[str], limit: int = 5) -> str:
    """A short list for an error message."""
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
