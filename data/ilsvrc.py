"""ImageNet-1k (ILSVRC2012-CLS-LOC) as Kaggle's "imagenet-object-localization-challenge" download lays it out.

    data.path/Data/CLS-LOC/train/<wnid>/*.JPEG
    data.path/Data/CLS-LOC/val/*.JPEG                  flat, labelled by one of the files below
    data.path/LOC_val_solution.csv                     Kaggle: "ImageId,PredictionString", the string starting
                                                       with the wnid ("n01751748 1 2 3 4 n01751748 ...")
    data.path/val_labels.txt                           otherwise: "ImageId wnid" per line (the id with or without
                                                       ".JPEG"), or one wnid per line in file-name order (as
                                                       TensorFlow's imagenet_2012_validation_synset_labels.txt)
    data.path/LOC_synset_mapping.txt                   optional: "wnid name, other names" per line

A val folder already sorted into wnid folders (by the usual valprep.sh) needs no label file. Classes are the
sorted wnids, torchvision's order; with LOC_synset_mapping.txt their names are the first human-readable name
(with the wnid added where two classes share one, such as the two "crane"s). ``data.train_split`` and
``data.val_split`` name the folders under Data/CLS-LOC. Note that ``ImageSets/CLS-LOC/val.txt`` lists image ids
with running numbers, not labels, so it is not a label file.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

from data.file_index import cache_folder, index_folder
from data.imagefolder import folder_catalog, labelled_files
from data.samples import Catalog, Sample, Split, class_folders, open_image, require_path
from recipes.errors import UsageError

LAYOUT = (
    "Data/CLS-LOC/train/<wnid>/*.JPEG, Data/CLS-LOC/val/*.JPEG and LOC_val_solution.csv (Kaggle's layout)"
)
SOLUTION_FILE = "LOC_val_solution.csv"
LABELS_FILE = "val_labels.txt"
SYNSET_FILE = "LOC_synset_mapping.txt"


def build_catalog(data: Any, *, seed: int, train: bool) -> Catalog:
    """Classes (sorted wnids) and labelled image files of the ILSVRC layout under ``data.path``."""
    root = require_path(data, LAYOUT)
    images = root / "Data" / "CLS-LOC"
    if not images.is_dir():
        raise UsageError(
            f"{images} does not exist: data.path={data.path} should hold {LAYOUT}. "
            "For plain <split>/<class>/ folders use data.source=imagefolder."
        )
    train_folder, val_folder = images / data.train_split, images / data.val_split
    if not val_folder.is_dir():
        raise UsageError(f"{val_folder} does not exist; expected {LAYOUT} under data.path={data.path}.")
    index_cache = cache_folder(data)
    if class_folders(val_folder):
        catalog = folder_catalog(train_folder, val_folder, train=train, index_cache=index_cache)
    else:
        catalog = flat_val_catalog(root, train_folder, val_folder, train=train, index_cache=index_cache)
    catalog.classes = class_names(root / SYNSET_FILE, catalog.classes)
    return catalog


def flat_val_catalog(
    root: Path, train_folder: Path, val_folder: Path, *, train: bool, index_cache: Path | None
) -> Catalog:
    """Train from wnid folders, val from a flat folder labelled by the solution or labels file.

    ``index_cache`` is the folder caching file listings (``data.file_index``); None lists the folders each time.
    """
    val_files = index_folder(val_folder, index_cache).images()
    if not val_files:
        raise UsageError(f"{val_folder} holds no images; expected {LAYOUT}.")
    labels = read_val_labels(root, [_image_id(path) for path in val_files])
    if train_folder.is_dir():
        wnids = class_folders(train_folder)
    elif not train:
        wnids = sorted(set(labels.values()))  # eval-only without a train folder: the classes the labels use
    else:
        raise UsageError(f"{train_folder} does not exist; expected {LAYOUT} under {root}.")
    val_samples = label_flat_images(
        val_files, labels, wnids, folder=val_folder, label_file=f"under {root}",
        classes_from=f"a class folder in {train_folder}",
        hint=" Labels must be wnids such as n01440764 (ImageSets/CLS-LOC/val.txt holds running numbers, "
        "not labels).",
    )  # fmt: skip
    train_split = None
    if train:
        train_split = Split(labelled_files(train_folder, wnids, index_cache), open_image, str(train_folder))
    return Catalog(wnids, train_split, Split(val_samples, open_image, str(val_folder)))


def label_flat_images(
    files: list[str],
    labels: dict[str, str],
    wnids: list[str],
    *,
    folder: Path,
    label_file: str,
    classes_from: str,
    hint: str = "",
) -> list[Sample]:
    """(path, class index) for each image of a flat folder, labelled by ``labels`` (image id to wnid).

    Shared by the flat validation folders labelled by a file (ILSVRC's, Tiny ImageNet's). ``label_file`` says
    which file the labels came from ("under ROOT" or its path), ``classes_from`` where the classes came from,
    for the error when a label is not one of them; ``hint`` is added to that error.
    """
    index = {wnid: label for label, wnid in enumerate(wnids)}
    samples: list[Sample] = []
    for path in files:
        wnid = labels.get(_image_id(path))
        if wnid is None:
            missing = [p for p in files if _image_id(p) not in labels]
            raise UsageError(
                f"{len(missing)} images in {folder} have no label in the label file {label_file} "
                f"(first: {Path(missing[0]).name}). Use the label file that belongs to these images."
            )
        if wnid not in index:
            raise UsageError(
                f"The label file {label_file} gives '{wnid}' for {Path(path).name}, which is not "
                f"{classes_from}.{hint}"
            )
        samples.append((path, index[wnid]))
    return samples


def read_val_labels(root: Path, image_ids: list[str]) -> dict[str, str]:
    """Image id (file name without extension) to wnid, from LOC_val_solution.csv or else val_labels.txt."""
    if (root / SOLUTION_FILE).is_file():
        return _read_solution(root / SOLUTION_FILE)
    if (root / LABELS_FILE).is_file():
        return _read_label_lines(root / LABELS_FILE, image_ids)
    raise UsageError(
        f"The flat val folder needs labels: put {SOLUTION_FILE} (Kaggle) or {LABELS_FILE} "
        f"(lines 'ImageId wnid') in {root}, or sort the val images into wnid folders."
    )


def _read_solution(path: Path) -> dict[str, str]:
    """Kaggle's solution file: the first word of PredictionString is the image's wnid."""
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or []):
            raise UsageError(
                f"{path} must have the header 'ImageId,PredictionString', not {reader.fieldnames}."
            )
        labels = {}
        for row in reader:
            words = (row["PredictionString"] or "").split()
            if not words:
                raise UsageError(
                    f"{path} line {reader.line_num}: empty PredictionString for {row['ImageId']}."
                )
            labels[row["ImageId"]] = words[0]
    return labels


def _read_label_lines(path: Path, image_ids: list[str]) -> dict[str, str]:
    """'ImageId wnid' lines, or one wnid per line matched to the sorted val file names."""
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    rows = [row for row in rows if row and not row[0].startswith("#")]
    widths = Counter(len(row) for row in rows)
    if set(widths) == {2}:
        return {Path(image_id).stem: wnid for image_id, wnid in rows}
    if set(widths) == {1}:
        if len(rows) != len(image_ids):
            raise UsageError(
                f"{path} has one label per line ({len(rows)} lines) but the val folder has {len(image_ids)} "
                "images; a line-per-image file must cover every image, in file-name order."
            )
        return {image_id: row[0] for image_id, row in zip(image_ids, rows, strict=True)}
    raise UsageError(
        f"{path} must hold 'ImageId wnid' on every line, or one wnid per line; found {dict(widths)}."
    )


def class_names(synset_file: Path, wnids: list[str]) -> list[str]:
    """Human-readable class names from the synset mapping if present, else the wnids."""
    if not synset_file.is_file():
        return wnids
    names: dict[str, str] = {}
    for line in synset_file.read_text(encoding="utf-8").splitlines():
        # "wnid name, other names": a space in LOC_synset_mapping.txt, a tab in Tiny ImageNet's words.txt.
        wnid, _, description = line.strip().replace("\t", " ").partition(" ")
        if wnid:
            names[wnid] = description.split(",")[0].strip() or wnid
    short = [names.get(wnid, wnid) for wnid in wnids]
    counts = Counter(short)
    return [f"{name} ({wnid})" if counts[name] > 1 else name for name, wnid in zip(short, wnids, strict=True)]


def _image_id(path: str) -> str:
    """ILSVRC2012_val_00000001 from .../ILSVRC2012_val_00000001.JPEG."""
    return Path(path).stem
