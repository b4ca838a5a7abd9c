"""Lay ImageNet-1k out as DEST/train/<wnid>/*.JPEG and DEST/val/<wnid>/*.JPEG, what the GPU recipes read.

The phase recipes default to ``data.source=imagefolder data.path=/data/imagenet``; scripts/setup_imagenet.sh
fetches ImageNet in whichever form it was kept and calls this to sort it into that layout. SOURCE is a folder
holding one of these (or the Kaggle zip itself):

  ILSVRC2012_img_train.tar + ILSVRC2012_img_val.tar   image-net.org's archives: the train tar holds one tar per
                                                      class (n01440764.tar, ...) and is streamed once, class
                                                      tars unpacked on the fly; the val tar's 50,000 flat JPEGs
                                                      are labelled by LOC_val_solution.csv, val_labels.txt or
                                                      ILSVRC2012_devkit_t12.tar.gz beside them
  imagenet-object-localization-challenge.zip         Kaggle's download, read in place (no unzip first)
  [ILSVRC/]Data/CLS-LOC/{train,val} + LOC_val_solution.csv   Kaggle's download unzipped
  train/<wnid>/ + val/<wnid>/ (or a flat val/ + labels)       already laid out: copied, or moved with --move

Val labels are read by ``data.ilsvrc.read_val_labels``, so the label files accepted here are exactly those
``data.source=ilsvrc`` accepts. The val images are sorted first, so a wrong or missing label file fails before
the 138 GiB train archive is read. Rerunning after an interruption redoes the layout (files are overwritten);
a finished layout leaves ``imagenet-layout.json`` in DEST, and a rerun then stops at once unless ``--force``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from scipy.io import loadmat

# Run as `python scripts/layout_imagenet.py`, the repository is not on sys.path (as in bench/).
REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from data.ilsvrc import LABELS_FILE, SOLUTION_FILE, read_val_labels  # noqa: E402
from data.samples import IMAGE_EXTENSIONS  # noqa: E402
from recipes.errors import UsageError  # noqa: E402

TRAIN_ARCHIVE = "ILSVRC2012_img_train.tar"
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"
DEVKIT_ARCHIVE = "ILSVRC2012_devkit_t12.tar.gz"
KAGGLE_ZIP = "imagenet-object-localization-challenge.zip"
MARKER = "imagenet-layout.json"
# ImageNet-1k (ILSVRC2012) as published; anything else is reported, not refused (subsets are fine).
FULL_IMAGENET = {"classes": 1000, "train_images": 1_281_167, "val_images": 50_000}
# Kaggle's zip and unzipped tree: .../Data/CLS-LOC/<split>/...
CLS_LOC_MEMBER = re.compile(r"(?:^|.*/)Data/CLS-LOC/(train|val)/(.+)$")
COPY_BUFFER = 1024 * 1024
PROGRESS_EVERY_S = 30.0

EPILOG = f"""\
examples:
  python scripts/layout_imagenet.py /nvme/downloads /data/imagenet           # {TRAIN_ARCHIVE} and {VAL_ARCHIVE}
  python scripts/layout_imagenet.py ~/{KAGGLE_ZIP} /data/imagenet
  python scripts/layout_imagenet.py /data/imagenet/.downloads /data/imagenet --move   # a synced tree, renamed

then: python train.py g4dn_xlarge data.path=/data/imagenet (data.source=imagefolder is the recipes' default)"""


@dataclass(frozen=True)
class Found:
    """Which form of ImageNet SOURCE holds, and where its parts are."""

    form: str  # "archives", "kaggle-zip" or "folders"
    train: Path  # the train tar, the zip, or the train folder
    val: Path  # the val tar, the zip, or the val folder
    labels: Path | None  # the folder with LOC_val_solution.csv or val_labels.txt, or the devkit; None: none

    def describe(self) -> str:
        """One line for the log."""
        if self.form == "kaggle-zip":
            return f"Kaggle's zip {self.train}"
        labels = f"; val labels from {self.labels}" if self.labels else ""
        return f"{self.form}: train {self.train}, val {self.val}{labels}"


def find_source(source: Path) -> Found:
    """Recognise the form of ImageNet at ``source``; a UsageError lists the forms accepted and what is there."""
    if source.is_file() and source.suffix == ".zip":
        return Found("kaggle-zip", source, source, None)
    if not source.is_dir():
        raise UsageError(f"{source} does not exist (expected a folder holding ImageNet, or {KAGGLE_ZIP}).")
    if (source / TRAIN_ARCHIVE).is_file() and (source / VAL_ARCHIVE).is_file():
        return Found("archives", source / TRAIN_ARCHIVE, source / VAL_ARCHIVE, find_labels(source))
    if (source / KAGGLE_ZIP).is_file():
        return Found("kaggle-zip", source / KAGGLE_ZIP, source / KAGGLE_ZIP, None)
    # Where the split folders may sit, and where their val label files may sit (Kaggle: beside ILSVRC/).
    candidates = (
        (source, [source]),
        (source / "Data" / "CLS-LOC", [source]),
        (source / "ILSVRC" / "Data" / "CLS-LOC", [source, source / "ILSVRC"]),
    )
    for images, label_folders in candidates:
        if (images / "train").is_dir() and (images / "val").is_dir():
            return Found("folders", images / "train", images / "val", find_labels(*label_folders))
    present = ", ".join(sorted(p.name for p in source.iterdir())[:10]) or "nothing"
    raise UsageError(
        f"{source} holds no form of ImageNet this script knows (it holds: {present}). Expected {TRAIN_ARCHIVE} "
        f"and {VAL_ARCHIVE} (with {SOLUTION_FILE}, {LABELS_FILE} or {DEVKIT_ARCHIVE}), {KAGGLE_ZIP}, Kaggle's "
        "unzipped [ILSVRC/]Data/CLS-LOC/{train,val}, or train/<wnid>/ and val/<wnid>/ folders."
    )


def find_labels(*folders: Path) -> Path | None:
    """The first folder holding a val label file, else the first devkit archive, else None."""
    for folder in folders:
        if (folder / SOLUTION_FILE).is_file() or (folder / LABELS_FILE).is_file():
            return folder
    return next((folder / DEVKIT_ARCHIVE for folder in folders if (folder / DEVKIT_ARCHIVE).is_file()), None)


def val_labels(labels: Path | None, image_ids: list[str]) -> dict[str, str]:
    """Image id to wnid for flat val images, from a label folder or the devkit; ``image_ids`` in file-name order."""
    if labels is None:
        raise UsageError(
            f"The val images are not sorted into class folders and nothing labels them: put {SOLUTION_FILE} "
            f"(Kaggle), {LABELS_FILE} ('ImageId wnid' lines, or one wnid per line in file-name order) or "
            f"{DEVKIT_ARCHIVE} (image-net.org) beside the val images."
        )
    if labels.is_dir():
        return read_val_labels(labels, image_ids)
    return devkit_labels(labels, image_ids)


def devkit_labels(devkit: Path, image_ids: list[str]) -> dict[str, str]:
    """Labels from image-net.org's devkit.

    Its ground-truth file holds one ILSVRC2012_ID (1-1000) per val image in file-name order, and meta.mat maps
    each ID to its wnid (the leaf synsets, those without children), as torchvision's ImageNet reads them.
    """
    with tarfile.open(devkit) as archive:
        files = {PurePosixPath(m.name).name: m for m in archive.getmembers() if m.isfile()}
        needed = ("meta.mat", "ILSVRC2012_validation_ground_truth.txt")
        missing = [name for name in needed if name not in files]
        if missing:
            raise UsageError(f"{devkit} lacks {', '.join(missing)}; is it {DEVKIT_ARCHIVE}?")
        meta, truth = (archive.extractfile(files[name]).read() for name in needed)
    synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    wnid_of = {
        int(number): str(wnid)
        for number, wnid, children in zip(
            synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"], strict=True
        )
        if int(children) == 0
    }
    numbers = [int(word) for word in truth.split()]
    if len(numbers) != len(image_ids):
        raise UsageError(
            f"{devkit} labels {len(numbers)} val images but there are {len(image_ids)}; "
            "use the devkit that belongs to these images."
        )
    return {image_id: wnid_of[number] for image_id, number in zip(image_ids, numbers, strict=True)}


def sorted_or_labelled(images: list[PurePosixPath], labels: Path | None) -> list[str]:
    """Each val image's wnid: its folder when every image sits in one (a sorted val set), else its label."""
    if all(len(image.parts) >= 2 for image in images):
        return [image.parent.name for image in images]
    by_id = val_labels(labels, sorted(image.stem for image in images))
    missing = [image.name for image in images if image.stem not in by_id]
    if missing:
        raise UsageError(
            f"{len(missing)} val images have no label in {labels} (first: {missing[0]}); "
            "use the label file that belongs to these images."
        )
    return [by_id[image.stem] for image in images]


class Output:
    """Writes images into DEST/<split>/<wnid>/ and reports progress every half minute."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.made: set[Path] = set()
        self.images = 0
        self.bytes = 0
        self.started = self.reported = time.monotonic()

    def folder(self, split: str, wnid: str) -> Path:
        """DEST/<split>/<wnid>, created once."""
        folder = self.dest / split / safe_name(wnid)
        if folder not in self.made:
            folder.mkdir(parents=True, exist_ok=True)
            self.made.add(folder)
        return folder

    def write(self, split: str, wnid: str, name: str, stream: IO[bytes]) -> None:
        """One image from an open archive member."""
        with open(self.folder(split, wnid) / safe_name(name), "wb") as file:
            shutil.copyfileobj(stream, file, COPY_BUFFER)
            self._count(split, 1, file.tell())

    def place(self, split: str, wnid: str, path: Path, move: bool) -> None:
        """One image file, copied or (with ``move``) renamed into place."""
        size = path.stat().st_size
        target = self.folder(split, wnid) / path.name
        if move:
            shutil.move(path, target)
        else:
            shutil.copyfile(path, target)
        self._count(split, 1, size)

    def place_folder(self, split: str, folder: Path, move: bool) -> None:
        """A class folder: one rename when moving to a new name on the same filesystem, else file by file."""
        target = self.dest / split / safe_name(folder.name)
        if move and not target.exists():
            images = image_files(folder)
            size = sum(path.stat().st_size for path in images)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(folder, target)
            self._count(split, len(images), size)
            return
        for path in image_files(folder):
            self.place(split, folder.name, path, move)

    def _count(self, split: str, images: int, size: int) -> None:
        self.images += images
        self.bytes += size
        now = time.monotonic()
        if now - self.reported >= PROGRESS_EVERY_S:
            self.reported = now
            rate = self.bytes / (now - self.started) / 1e6
            print(
                f"{split}: {self.images:,} images, {self.bytes / 1e9:.1f} GB so far ({rate:.0f} MB/s)",
                flush=True,
            )


def lay_out(found: Found, dest: Path, *, move: bool) -> None:
    """Fill DEST/train/<wnid>/ and DEST/val/<wnid>/ from ``found``, val first (label problems surface early)."""
    output = Output(dest)
    if found.form == "archives":
        val_from_tar(found.val, found.labels, output)
        train_from_tar(found.train, output)
    elif found.form == "kaggle-zip":
        from_kaggle_zip(found.train, output)
    else:
        val_from_folder(found.val, found.labels, output, move=move)
        train_from_folder(found.train, output, move=move)


def val_from_tar(archive: Path, labels: Path | None, output: Output) -> None:
    """The val tar's images into wnid folders: by their folder if sorted already, else by the label source."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and is_image(m.name)]
        wnids = sorted_or_labelled([PurePosixPath(m.name) for m in members], labels)
        for member, wnid in zip(members, wnids, strict=True):
            output.write("val", wnid, PurePosixPath(member.name).name, tar.extractfile(member))
    print(f"val: {archive.name} sorted into {len(set(wnids))} class folders", flush=True)


def train_from_tar(archive: Path, output: Output) -> None:
    """Stream the train tar once; each per-class tar inside (or a <wnid>/ folder entry) is unpacked on the fly."""
    classes = 0
    with tarfile.open(archive, mode="r|*") as outer:
        for member in outer:
            path = PurePosixPath(member.name)
            if member.isfile() and path.suffix == ".tar":
                classes += 1
                with tarfile.open(fileobj=outer.extractfile(member), mode="r|*") as inner:
                    for image in inner:
                        if image.isfile() and is_image(image.name):
                            name = PurePosixPath(image.name).name
                            output.write("train", path.stem, name, inner.extractfile(image))
            elif member.isfile() and is_image(member.name) and len(path.parts) >= 2:
                output.write("train", path.parent.name, path.name, outer.extractfile(member))
    print(f"train: {archive.name} unpacked ({classes} class archives)", flush=True)


def from_kaggle_zip(archive: Path, output: Output) -> None:
    """Kaggle's zip, read in place: Data/CLS-LOC/train/<wnid>/ as it is, the flat val/ by LOC_val_solution.csv."""
    with zipfile.ZipFile(archive) as zipped:
        members: dict[str, list[tuple[zipfile.ZipInfo, PurePosixPath]]] = {"train": [], "val": []}
        solution = None
        for info in zipped.infolist():
            match = CLS_LOC_MEMBER.match(info.filename)
            if match and not info.is_dir() and is_image(info.filename):
                members[match.group(1)].append((info, PurePosixPath(match.group(2))))
            elif PurePosixPath(info.filename).name == SOLUTION_FILE:
                solution = info
        if not members["train"] or not members["val"]:
            raise UsageError(f"{archive} holds no Data/CLS-LOC/train and val images; is it {KAGGLE_ZIP}?")
        with tempfile.TemporaryDirectory() as folder:
            if solution is not None:
                (Path(folder) / SOLUTION_FILE).write_bytes(zipped.read(solution))
            wnids = sorted_or_labelled(
                [relative for _, relative in members["val"]], find_labels(Path(folder))
            )
        for (info, relative), wnid in zip(members["val"], wnids, strict=True):
            with zipped.open(info) as stream:
                output.write("val", wnid, relative.name, stream)
        for info, relative in members["train"]:
            with zipped.open(info) as stream:
                output.write("train", relative.parent.name, relative.name, stream)
    print(f"{archive.name}: unpacked", flush=True)


def val_from_folder(folder: Path, labels: Path | None, output: Output, *, move: bool) -> None:
    """A val folder: class folders as they are, or flat images sorted by the label source."""
    if class_dirs(folder):
        if not same_folder(folder, output.dest / "val"):
            for wnid in class_dirs(folder):
                output.place_folder("val", wnid, move)
        return
    images = image_files(folder)
    wnids = sorted_or_labelled([PurePosixPath(path.name) for path in images], labels)
    for path, wnid in zip(images, wnids, strict=True):
        output.place("val", wnid, path, move)


def train_from_folder(folder: Path, output: Output, *, move: bool) -> None:
    """The class folders of a train folder, copied or moved."""
    if not same_folder(folder, output.dest / "train"):
        for wnid in class_dirs(folder):
            output.place_folder("train", wnid, move)


def verify(dest: Path) -> dict[str, int]:
    """Counts of the finished layout; train and val must hold the same class folders (imagefolder needs it)."""
    if not (dest / "train").is_dir() or not (dest / "val").is_dir():
        raise UsageError(f"{dest} lacks a train or val folder after the layout; the source held no images.")
    train = {d.name: len(image_files(d)) for d in class_dirs(dest / "train")}
    val = {d.name: len(image_files(d)) for d in class_dirs(dest / "val")}
    if set(train) != set(val) or not train:
        only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        raise UsageError(
            f"{dest}/train and {dest}/val hold different class folders (only in train: {only_train[:5]}, "
            f"only in val: {only_val[:5]}); the source is incomplete or its val labels belong to other images."
        )
    empty = sorted(name for name, count in {**train, **val}.items() if count == 0)
    if empty:
        raise UsageError(f"class folders without images under {dest}: {empty[:5]}; the source is incomplete.")
    return {"classes": len(train), "train_images": sum(train.values()), "val_images": sum(val.values())}


def main(argv: list[str] | None = None) -> int:
    """Parse, recognise the source, lay it out, verify, and leave the marker file."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", type=Path, help="folder holding ImageNet in one of the forms above, or the zip"
    )
    parser.add_argument("dest", type=Path, help="folder to fill with train/<wnid>/ and val/<wnid>/")
    parser.add_argument(
        "--move", action="store_true", help="move files of a folder source instead of copying"
    )
    parser.add_argument("--force", action="store_true", help=f"lay out again even if DEST/{MARKER} exists")
    parser.add_argument(
        "--dry-run", action="store_true", help="say what was found and would be done; write nothing"
    )
    args = parser.parse_args(argv)
    try:
        marker = args.dest / MARKER
        if marker.is_file() and not args.force:
            print(
                f"{args.dest} is already laid out ({marker}: {marker.read_text().strip()}); --force redoes it"
            )
            return 0
        found = find_source(args.source)
        verb = "would lay out" if args.dry_run else "laying out"
        print(f"{verb} {found.describe()} into {args.dest}/train and {args.dest}/val", flush=True)
        if args.dry_run:
            return 0
        started = time.monotonic()
        marker.unlink(missing_ok=True)
        lay_out(found, args.dest, move=args.move)
        counts = verify(args.dest)
    except UsageError as error:
        print(f"layout_imagenet: error: {error}", file=sys.stderr)
        return 2
    marker.write_text(json.dumps({"source": str(args.source), "form": found.form, **counts}) + "\n")
    elapsed = time.monotonic() - started
    took = f"{elapsed / 60:.1f} min" if elapsed >= 60 else f"{elapsed:.1f} s"
    print(
        f"laid out {counts['classes']} classes, {counts['train_images']:,} train and {counts['val_images']:,} val "
        f"images in {args.dest} ({took})"
    )
    if counts != FULL_IMAGENET:
        print(
            f"note: not the full ImageNet-1k ({FULL_IMAGENET['classes']} classes, "
            f"{FULL_IMAGENET['train_images']:,} train and {FULL_IMAGENET['val_images']:,} val images); "
            "fine for a subset"
        )
    return 0


def same_folder(folder: Path, target: Path) -> bool:
    """True when the source folder already is the destination folder: nothing to copy."""
    return target.exists() and folder.resolve() == target.resolve()


def class_dirs(folder: Path) -> list[Path]:
    """Sorted class sub-folders, hidden ones skipped (as data.samples.class_folders)."""
    return sorted(Path(e.path) for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """Sorted image files directly in ``folder`` (scandir's file types: no stat per file)."""
    return sorted(Path(e.path) for e in os.scandir(folder) if e.is_file() and is_image(e.name))


def is_image(name: str) -> bool:
    """An image by extension, as the data sources decide (torchvision's list, any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def safe_name(name: str) -> str:
    """A single path component from an archive or label file; refuses anything that would leave DEST."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UsageError(
            f"refusing the name {name!r} from the source: it is not a plain file or folder name."
        )
    return name


if __name__ == "__main__":
    sys.exit(main())
