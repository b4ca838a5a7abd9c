"""Benchmark the file index: listing an ImageNet-shaped train folder, against torchvision's ImageFolder scan.

    python bench/file_index.py [--root FOLDER] [--files 200000] [--folders 1000] [--output FILE]

Generates (once; reused while its size matches) ``--root/train`` with ``--files`` empty ``.JPEG`` files spread
over ``--folders`` class folders, named as ImageNet's (n01440764/n01440764_123.JPEG); listing never opens a file,
so empty files list as fast as real ones. In one run it times the baseline, torchvision's ``ImageFolder(root)``
construction, and what a start of ours does (class names plus labelled samples through ``data.file_index``):
the first build (no index yet: walk and write it) and a cached start (read the index, re-stat the directories,
set up the samples, which ``LabelledFiles`` makes only when each is read). It also times reading the index
alone and the bare walk on one thread, on ``file_index.WORKERS`` threads
(one per core, at most 8) and on 8. Each figure is the median of five runs, all with the folder in the page
cache (it cannot be dropped here), so the walk figures are a lower bound for a cold disk or a network
filesystem. Prints a table and the ratios; writes JSON with ``--output``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from torchvision.datasets import ImageFolder  # noqa: E402

from data import file_index  # noqa: E402
from data.imagefolder import labelled_files  # noqa: E402
from data.samples import class_folders  # noqa: E402

REPEATS = 5
FIRST_WNID = 1440764  # n01440764, ImageNet's first class


def generate(root: Path, files: int, folders: int) -> Path:
    """``root/train`` with ``files`` empty files in ``folders`` class folders; reused if already that size."""
    train, manifest = root / "train", root / "tree.json"
    wanted = {"files": files, "folders": folders}
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted:
        return train
    if train.exists():
        raise SystemExit(f"{train} exists but is not a tree this benchmark wrote; pass another --root.")
    print(f"Writing {files:,} empty files in {folders:,} folders under {train} (once) ...", flush=True)
    started = time.perf_counter()
    for index in range(folders):
        wnid = f"n{FIRST_WNID + index:08d}"
        folder = train / wnid
        folder.mkdir(parents=True)
        count = files // folders + (index < files % folders)
        for number in range(count):
            os.close(os.open(folder / f"{wnid}_{number}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))
    manifest.write_text(json.dumps(wanted))
    print(f"  written in {time.perf_counter() - started:.1f} s", flush=True)
    return train


def median_seconds(run: Callable[[], object], prepare: Callable[[], None] = lambda: None) -> float:
    """Median wall time of REPEATS runs of ``run``, each after an untimed ``prepare``; its prints are dropped."""
    times = []
    for _ in range(REPEATS):
        prepare()
        with contextlib.redirect_stdout(io.StringIO()):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(train: Path, cache: Path) -> dict:
    """Time the baseline, our first build, our cached start and the walk with and without threads."""
    expected = ImageFolder(str(train)).samples  # also warms the page cache for every run below
    if list(labelled_files(train, class_folders(train), None)) != expected:
        raise SystemExit("The file index lists other samples than torchvision's ImageFolder; not timing it.")

    def our_start() -> None:
        labelled_files(train, class_folders(train), cache)

    def clear_cache() -> None:
        for cache_file in cache.glob("*.json"):
            cache_file.unlink()

    results = {
        "files": len(expected),
        "folders": len(class_folders(train)),
        "imagefolder_s": median_seconds(lambda: ImageFolder(str(train))),
        "first_build_s": median_seconds(our_start, prepare=clear_cache),
        "cached_s": median_seconds(our_start),
        "index_read_s": median_seconds(lambda: file_index.index_folder(train, cache)),
        "walk_one_thread_s": median_seconds(lambda: file_index.walk(train, workers=1)),
        "walk_threads_s": median_seconds(lambda: file_index.walk(train)),
        "walk_8_threads_s": median_seconds(lambda: file_index.walk(train, workers=8)),
    }
    results = {key: round(value, 4) if isinstance(value, float) else value for key, value in results.items()}
    results["cached_speedup"] = round(results["imagefolder_s"] / results["cached_s"], 1)
    results["index_read_speedup"] = round(results["imagefolder_s"] / results["index_read_s"], 1)
    results["first_build_speedup"] = round(results["imagefolder_s"] / results["first_build_s"], 2)
    results["threads_speedup"] = round(results["walk_one_thread_s"] / results["walk_threads_s"], 2)
    results["workers"] = file_index.WORKERS
    results["cache_file_bytes"] = sum(f.stat().st_size for f in cache.glob("*.json"))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=str(Path(tempfile.gettempdir()) / "mosaic-resnet50-file-index-bench"),
        help="where the generated tree lives (reused across runs)",
    )
    parser.add_argument("--files", type=int, default=200_000, help="image files in the tree")
    parser.add_argument("--folders", type=int, default=1000, help="class folders in the tree")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()

    train = generate(Path(args.root), args.files, args.folders)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as cache:
        results = measure(train, Path(cache))
    results.update(
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
        load_average_1min=round(max(load_before, os.getloadavg()[0]), 2),
        page_cache="warm for all runs (not dropped on this shared machine); median of 5 each",
    )

    rows = [
        ("torchvision ImageFolder(root)", results["imagefolder_s"], 1.0),
        ("file index, first build (walk + write)", results["first_build_s"], results["first_build_speedup"]),
        ("file index, cached start", results["cached_s"], results["cached_speedup"]),
        ("  of which reading the index", results["index_read_s"], None),
        ("walk only, 1 thread", results["walk_one_thread_s"], None),
        (f"walk only, {results['workers']} threads (WORKERS)", results["walk_threads_s"], None),
        ("walk only, 8 threads", results["walk_8_threads_s"], None),
    ]
    print(f"\n{results['files']:,} files in {results['folders']:,} folders; page cache warm for every run")
    print(f"{'':40} {'seconds':>9} {'vs ImageFolder':>15}")
    for name, seconds, ratio in rows:
        print(f"{name:40} {seconds:9.3f} {'' if ratio is None else f'{ratio:.1f}x':>15}")
    print(
        f"cached start: {results['cached_speedup']}x faster than ImageFolder (target >= 10x); "
        f"threads over one thread: {results['threads_speedup']}x; load average {results['load_average_1min']}"
    )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
