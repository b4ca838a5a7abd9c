"""The file index: the same listing as torchvision's ImageFolder, read from its cache until the folder changes."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from torchvision.datasets import ImageFolder

from data import build_data, file_index
from data.file_index import index_folder
from data.imagefolder import labelled_files
from data.samples import class_folders
from tests.test_data_sources import image_folder, recipe

# A fixed, old mtime for every directory of a test tree, so a change made a millisecond after indexing still
# shows as a new mtime on filesystems whose clock ticks coarsely.
OLD_MTIME_NS = 1_000_000_000 * 10**9


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def age_directories(root: Path) -> None:
    """Set every directory's mtime to OLD_MTIME_NS."""
    for directory, _, _ in os.walk(root):
        os.utime(directory, ns=(OLD_MTIME_NS, OLD_MTIME_NS))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Class folders with nested sub-folders ("sub", "sub-2" and "sub/deeper" sort differently as paths),
    mixed-case extensions, non-image files, a hidden file and a linked folder. Files are empty: listing never
    opens them."""
    root = tmp_path / "train"
    for name in [
        "cat/b.jpg", "cat/A.JPG", "cat/notes.txt", "cat/.hidden.png", "cat/sub/x.Jpeg",
        "cat/sub/deeper/y.webp", "cat/sub-2/z.PNG", "cat/sub.old/w.bmp", "dog/1.jpeg", "dog/2.tiff",
        "dog/archive.jpg.bak", "eel/only.ppm", "elsewhere-not-a-class.jpg",
    ]:  # fmt: skip
        touch(root / name)
    touch(tmp_path / "outside" / "linked.jpg")
    (root / "eel" / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    age_directories(tmp_path)
    return root


def samples(root: Path, cache: Path | None) -> list[tuple[str, int]]:
    return list(labelled_files(root, class_folders(root), cache))


@pytest.mark.parametrize("cached", [False, True])
def test_samples_labels_and_order_match_torchvision(tree: Path, tmp_path: Path, cached: bool) -> None:
    cache = tmp_path / "cache" if cached else None
    expected = ImageFolder(str(tree)).samples
    assert samples(tree, cache) == expected
    assert samples(tree, cache) == expected  # the second time from the cache, when there is one


def test_flat_listing_follows_sorted_os_walk(tree: Path, tmp_path: Path) -> None:
    expected = [
        os.path.join(directory, name)
        for directory, _, names in sorted(os.walk(tree, followlinks=True))
        for name in sorted(names)
        if name.lower().endswith(file_index.IMAGE_EXTENSIONS)
    ]
    assert index_folder(tree, tmp_path / "cache").images() == expected


def test_second_start_reads_the_cache_quietly(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    first = index_folder(tree, cache)
    (cache_file,) = cache.iterdir()
    assert capsys.readouterr().out == (
        f"Indexing {tree}: 12 images in 9 folders (0.0 s); cached in {cache_file}\n"
    )

    def no_walk(*args: object, **kwargs: object) -> None:
        raise AssertionError("walked although the cache is valid")

    monkeypatch.setattr(file_index, "walk", no_walk)
    assert index_folder(tree, cache) == first
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "change",
    [
        "add a file",
        "add a file in a sub-folder",
        "add a file through a link",
        "remove a file",
        "rename a file",
        "add a class folder",
        "remove a sub-folder",
    ],
)
def test_a_changed_tree_is_walked_again(tree: Path, tmp_path: Path, change: str) -> None:
    cache = tmp_path / "cache"
    index_folder(tree, cache)
    if change == "add a file":
        touch(tree / "dog" / "3.jpg")
    elif change == "add a file in a sub-folder":
        touch(tree / "cat" / "sub" / "deeper" / "new.jpg")
    elif change == "add a file through a link":
        touch(tmp_path / "outside" / "new.jpg")
    elif change == "remove a file":
        (tree / "dog" / "1.jpeg").unlink()
    elif change == "rename a file":
        (tree / "dog" / "1.jpeg").rename(tree / "dog" / "0.jpeg")
    elif change == "add a class folder":
        touch(tree / "fox" / "1.jpg")
    else:
        (tree / "cat" / "sub-2" / "z.PNG").unlink()
        (tree / "cat" / "sub-2").rmdir()
    assert samples(tree, cache) == ImageFolder(str(tree)).samples


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b"{}", b'{"version": 1}', "half"])
def test_a_corrupt_cache_file_is_rebuilt(tree: Path, tmp_path: Path, content: bytes | str) -> None:
    cache = tmp_path / "cache"
    first = index_folder(tree, cache)
    (cache_file,) = cache.iterdir()
    whole = cache_file.read_bytes()
    cache_file.write_bytes(whole[: len(whole) // 2] if content == "half" else content)
    assert index_folder(tree, cache) == first
    assert cache_file.read_bytes() == whole


def test_without_a_cache_nothing_is_written_or_printed(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert samples(tree, None) == ImageFolder(str(tree)).samples
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "train"]


@pytest.mark.parametrize("index_cache", [True, False])
def test_data_index_cache_switches_the_cache(tmp_path: Path, index_cache: bool) -> None:
    root = image_folder(tmp_path / "images")
    bundle = build_data(recipe(tmp_path, source="imagefolder", path=str(root), index_cache=index_cache))
    assert (bundle.train_size, bundle.val_size) == (12, 6)
    written = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "file-index").glob("*"))
    assert written == (["train", "val"] if index_cache else [])


def test_unwritable_cache_folder_warns_and_lists_anyway(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    touch(tmp_path / "a-file")
    assert samples(tree, tmp_path / "a-file" / "file-index") == ImageFolder(str(tree)).samples
    output = capsys.readouterr()
    assert output.err.count("\n") == 1
    assert "warning: cannot write the file index" in output.err and "data.cache_dir" in output.err
    assert output.out.endswith("; not cached\n")


def test_other_local_ranks_read_but_never_write(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr(file_index.dist, "get_local_rank", lambda: 1)
    assert samples(tree, cache) == ImageFolder(str(tree)).samples
    assert not cache.exists()


def test_samples_are_made_on_read_and_behave_like_the_list(tree: Path, tmp_path: Path) -> None:
    lazy = labelled_files(tree, class_folders(tree), tmp_path / "cache")
    reference = ImageFolder(str(tree)).samples
    assert len(lazy) == len(reference)
    assert [lazy[i] for i in range(len(lazy))] == reference
    assert lazy[-1] == reference[-1] and lazy[1:4] == reference[1:4]
    assert lazy.labels() == [label for _, label in reference]
    with pytest.raises(IndexError):
        lazy[len(reference)]
    assert list(pickle.loads(pickle.dumps(lazy))) == reference  # what spawned DataLoader workers receive
