"""The image files under a folder, listed once with a fast walk and cached, so a start does not re-walk ImageNet.

Kept instead of torchvision's ImageFolder listing because it is measurably faster where it matters: on 200,000
files in 1,000 folders a cached start took 0.016 s against ImageFolder's 0.32 s (19.8x), and the first build 0.20 s
(1.6x), on 2 cores with a warm page cache (bench/file_index.py, bench/results/file_index.json).

The listing is the one torchvision's ImageFolder makes, so labels and sample order do not depend on the cache:
recursive, following links, extensions matched case-insensitively, directories in ``sorted(os.walk(...))``
order and the files of each sorted. The walk uses ``os.scandir``, whose entries carry the file type, so no file is
stat'ed; the top-level sub-folders (the classes) are walked on a thread pool, as ``scandir`` releases the GIL
while the kernel reads a directory: the reads of a cold disk or a network filesystem then overlap, and with
the tree already in memory it is as fast as one thread (bench/file_index.py).

The listing is saved under ``<data.cache_dir>/file-index/``, one JSON file per folder (named by a hash of its
resolved path), with the modification time of every directory walked. A later start re-stats those directories
(a few thousand stats: milliseconds) and walks again only if one changed or is gone: adding, removing or
renaming a file or folder changes its parent directory's mtime. Not caught: a file's content replaced in place
(the listing is unchanged, so nothing is lost); a directory changed twice within one tick of the filesystem's
clock while it was being walked; mounts that do not keep directory mtimes (some object-store FUSE mounts). For
those, delete the cache file after changing the data, or set ``data.index_cache=false``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

from composer.utils import dist

from data.samples import IMAGE_EXTENSIONS, expand_path

# Bump when the cache file's layout or the listing's rules change, so older files are rebuilt, not misread.
VERSION = 1
# Threads walking class folders at once: one per core, at most 8. More threads than cores queue for the GIL
# (bench/file_index.py, 2 cores, warm cache: 2 threads 1.0-1.1x the speed of one, 8 threads 0.6-0.7x).
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
WORKERS = min(8, _CORES)
# Joins a directory's image names, in memory and in the cache file: no file name can hold it (nor NUL).
NAME_SEPARATOR = "/"


class Directory(NamedTuple):
    """One walked directory: its path relative to the root ("" for the root), its mtime, its sorted image names.

    The names stay one NAME_SEPARATOR-joined string until paths are made: a cached start then makes one string
    per file (its path) instead of two, which is most of its time.
    """

    relative: str
    mtime_ns: int
    names: str

    def count(self) -> int:
        """How many images the directory holds."""
        return self.names.count(NAME_SEPARATOR) + 1 if self.names else 0


@dataclass
class FileIndex:
    """The image files under ``folder``, directory by directory in sorted order; paths start with ``folder``."""

    folder: Path
    directories: list[Directory]

    def images(self) -> list[str]:
        """Every image path under the folder, in the order of torchvision's ``sorted(os.walk(folder))``."""
        return [path for directory in self.directories for path in self._paths(directory)]

    def labelled(self, classes: list[str]) -> LabelledFiles:
        """(path, label) samples of the class sub-folders, class by class, as ImageFolder's ``samples``."""
        by_subfolder = self._by_subfolder()
        groups = [
            (os.path.join(self.folder, directory.relative, ""), directory.names, label)
            for label, name in enumerate(classes)
            for directory in by_subfolder.get(name, [])
            if directory.names
        ]
        return LabelledFiles(groups)

    def _by_subfolder(self) -> dict[str, list[Directory]]:
        grouped: dict[str, list[Directory]] = {}
        for directory in self.directories:
            grouped.setdefault(directory.relative.split(os.sep, 1)[0], []).append(directory)
        return grouped

    def _paths(self, directory: Directory) -> list[str]:
        """Full paths as os.path.join makes them, built in two C-level passes rather than a Python step per file."""
        if not directory.names:
            return []
        prefix = os.path.join(self.folder, directory.relative, "")
        # "a/b" becomes "<prefix>a\0<prefix>b", split at the NUL (which no path holds).
        return (prefix + directory.names.replace(NAME_SEPARATOR, "\0" + prefix)).split("\0")


class LabelledFiles(Sequence):
    """(path, label) samples of an indexed folder, each made when it is read.

    A cached start of ImageNet then costs reading the index, not making 1.28M path strings and tuples up front
    (most of a cached start's time otherwise; bench/file_index.py), and the samples pickle small for spawned
    DataLoader workers. ``groups`` are (directory path ending in a separator, NAME_SEPARATOR-joined names, label);
    a group's name offsets (4 bytes per name) are worked out on its first read.
    """

    def __init__(self, groups: list[tuple[str, str, int]]) -> None:
        self.groups = groups
        self.ends = list(accumulate(names.count(NAME_SEPARATOR) + 1 for _, names, _ in groups))
        self._starts: dict[int, array] = {}

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, index: int) -> tuple[str, int]:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]  # type: ignore[return-value]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        group = bisect_right(self.ends, index)
        prefix, names, label = self.groups[group]
        position = index - (self.ends[group - 1] if group else 0)
        starts = self._starts.get(group)
        if starts is None:
            starts = self._starts[group] = array(
                "I", accumulate((len(n) + 1 for n in names.split(NAME_SEPARATOR)), initial=0)
            )
        return prefix + names[starts[position] : starts[position + 1] - 1], label

    def labels(self) -> list[int]:
        """Every sample's label, without making the samples."""
        labels: list[int] = []
        for (_, _, label), end, start in zip(self.groups, self.ends, [0, *self.ends], strict=False):
            labels += [label] * (end - start)
        return labels


def cache_folder(data: Any) -> Path | None:
    """Where folder sources keep file indexes: ``<data.cache_dir>/file-index``, or None when data.index_cache=false."""
    return expand_path(data.cache_dir) / "file-index" if data.index_cache else None


def index_folder(folder: Path, cache: Path | None) -> FileIndex:
    """The image files under ``folder``: from the index in ``cache`` while still valid, else walked (and saved).

    With ``cache`` None the folder is walked every time and nothing is written. Local rank 0 walks and writes
    while the machine's other processes wait, so they read its fresh index instead of each walking the folder.
    """
    if cache is None:
        return FileIndex(folder, walk(folder))
    with dist.run_local_rank_zero_first():
        root = folder.resolve()
        cache_file = cache / f"{root.name}-{hashlib.sha256(os.fsencode(root)).hexdigest()[:16]}.json"
        directories = read_index(cache_file, root)
        if directories is None:
            directories = _walk_and_save(folder, root, cache_file)
    return FileIndex(folder, directories)


def walk(folder: Path, workers: int = WORKERS) -> list[Directory]:
    """Every directory under ``folder`` (links followed) with its sorted image names, sorted by relative path.

    Sorting the relative paths orders directories as torchvision's ``sorted(os.walk(...))`` does ("a", "a-b",
    "a/c"), so the files of a class come in the same order as in ImageFolder.
    """
    root = str(folder)
    found: list[Directory] = []
    subfolders = _scan((root, "", os.stat(root).st_mtime_ns), found)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for subtree in pool.map(_walk_subtree, subfolders):
            found += subtree
    found.sort(key=lambda directory: directory.relative)
    return found


def read_index(cache_file: Path, root: Path) -> list[Directory] | None:
    """The listing in ``cache_file`` if it is one of ``root`` and no directory in it changed since; else None."""
    try:
        payload = json.loads(cache_file.read_bytes())
        if any(payload[key] != value for key, value in _header(root).items()):
            return None
        directories: list[Directory] = []
        for relative, mtime_ns, names in payload["directories"]:
            if not (isinstance(relative, str) and isinstance(mtime_ns, int) and isinstance(names, str)):
                return None
            directories.append(Directory(relative, mtime_ns, names))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, unreadable or not an index: walk again
    for directory in directories:
        try:
            if os.stat(os.path.join(root, directory.relative)).st_mtime_ns != directory.mtime_ns:
                return None
        except OSError:
            return None
    return directories


def write_index(cache_file: Path, root: Path, directories: list[Directory]) -> None:
    """Save the listing through a temporary file renamed into place, so no reader sees half a file."""
    payload = {**_header(root), "directories": [list(directory) for directory in directories]}
    text = json.dumps(payload, separators=(",", ":"))  # ASCII: other characters are escaped
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{cache_file.name}.", dir=cache_file.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(text)
        os.replace(temporary, cache_file)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _header(root: Path) -> dict[str, Any]:
    """What an index must match to be used: the file layout's version, the folder, the extensions listed."""
    return {"version": VERSION, "root": str(root), "extensions": list(IMAGE_EXTENSIONS)}


def _walk_and_save(folder: Path, root: Path, cache_file: Path) -> list[Directory]:
    """Walk ``folder`` and, on local rank 0, save the index; print one line saying what it took."""
    started = time.perf_counter()
    directories = walk(folder)
    seconds = time.perf_counter() - started
    where = "not cached"
    # Other local ranks get here only when rank 0 could not write (or the folder changed meanwhile): they walk,
    # but leave the writing, and its warning, to rank 0.
    if dist.get_local_rank() == 0:
        try:
            write_index(cache_file, root, directories)
            where = f"cached in {cache_file}"
        except OSError as error:
            print(
                f"warning: cannot write the file index of {folder} under data.cache_dir ({error}); listing it "
                "on every start instead. Set data.cache_dir to a writable folder, or data.index_cache=false.",
                file=sys.stderr,
                flush=True,
            )
    images = sum(directory.count() for directory in directories)
    holding = sum(1 for directory in directories if directory.names)
    summary = f"{images:,} images in {holding:,} folders ({seconds:.1f} s)"
    print(f"Indexing {folder}: {summary}; {where}", flush=True)
    return directories


def _walk_subtree(top: tuple[str, str, int]) -> list[Directory]:
    """Every directory under one (path, relative path, mtime) sub-folder, the sub-folder included."""
    found: list[Directory] = []
    pending = [top]
    while pending:
        pending += _scan(pending.pop(), found)
    return found


def _scan(directory: tuple[str, str, int], found: list[Directory]) -> list[tuple[str, str, int]]:
    """Add one directory's image names to ``found``; return its sub-directories as (path, relative, mtime).

    A directory's mtime is read before it is listed, so a change made during the walk shows as a changed mtime
    on the next start rather than being missed.
    """
    path, relative, mtime_ns = directory
    images: list[str] = []
    subfolders: list[os.DirEntry[str]] = []
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False  # as os.walk: an entry whose type cannot be read counts as a file
                if is_dir:
                    subfolders.append(entry)
                elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    images.append(entry.name)
    except OSError:
        # As os.walk (so torchvision) does: a folder that cannot be read is skipped.
        images, subfolders = [], []
    images.sort()
    found.append(Directory(relative, mtime_ns, NAME_SEPARATOR.join(images)))
    children = []
    for entry in subfolders:
        try:
            children.append((entry.path, os.path.join(relative, entry.name), entry.stat().st_mtime_ns))
        except OSError:
            continue  # gone since it was listed
    return children
