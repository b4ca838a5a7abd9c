"""scripts/layout_imagenet.py on tiny fake ImageNet downloads: every form it reads ends as the same class folders."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from data.imagefolder import folder_catalog
from tests.script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "layout_imagenet.py"
layout = load_script("layout_imagenet")

WNIDS = ["n01440764", "n01443537", "n01484850"]
TRAIN = {wnid: [f"{wnid}_{index}.JPEG" for index in (10026, 10027)] for wnid in WNIDS}
# Val images in file-name order and their classes, deliberately not in class order.
VAL = {f"ILSVRC2012_val_{n:08d}.JPEG": wnid for n, wnid in enumerate(WNIDS[::-1] + WNIDS[:2], start=1)}


def content(name: str) -> bytes:
    """Stand-in image bytes that say which file they are (the layout copies bytes; nothing decodes them)."""
    return f"jpeg {name}".encode()


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar holding ``files``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def solution_csv() -> str:
    """Kaggle's LOC_val_solution.csv for VAL (rows in no particular order, as Kaggle's)."""
    rows = [f"{Path(name).stem},{wnid} 12 34 56 78" for name, wnid in sorted(VAL.items(), reverse=True)]
    return "ImageId,PredictionString\n" + "\n".join(rows) + "\n"


def image_net_archives(folder: Path) -> Path:
    """image-net.org's train tar (one tar per class inside) and flat val tar."""
    folder.mkdir(parents=True, exist_ok=True)
    class_tars = {
        f"{wnid}.tar": tar_bytes({name: content(name) for name in names}) for wnid, names in TRAIN.items()
    }
    (folder / layout.TRAIN_ARCHIVE).write_bytes(tar_bytes(class_tars))
    (folder / layout.VAL_ARCHIVE).write_bytes(tar_bytes({name: content(name) for name in VAL}))
    return folder


def devkit(folder: Path) -> None:
    """ILSVRC2012_devkit_t12.tar.gz: meta.mat (IDs not in wnid order, plus a non-leaf synset) and ground truth."""
    ids = {"n01484850": 1, "n01440764": 2, "n01443537": 3}
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "wordnet_height", "num_train_images"]
    synsets = np.zeros((4, 1), dtype=[(field, "O") for field in fields])
    for row, (wnid, number) in enumerate(ids.items()):
        synsets[row, 0] = (number, wnid, "words", "gloss", 0, 0, 2)
    synsets[3, 0] = (4, "n00001740", "entity", "gloss", 3, 9, 0)
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    truth = "".join(f"{ids[wnid]}\n" for _, wnid in sorted(VAL.items()))
    files = {
        "ILSVRC2012_devkit_t12/data/meta.mat": meta.getvalue(),
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": truth.encode(),
    }
    with tarfile.open(folder / layout.DEVKIT_ARCHIVE, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def kaggle_files() -> dict[str, bytes]:
    """What Kaggle's imagenet-object-localization-challenge download holds, in small."""
    files = {"LOC_val_solution.csv": solution_csv().encode(), "LOC_synset_mapping.txt": b"n01440764 tench\n"}
    for wnid, names in TRAIN.items():
        for name in names:
            files[f"ILSVRC/Data/CLS-LOC/train/{wnid}/{name}"] = content(name)
            files[f"ILSVRC/Annotations/CLS-LOC/train/{wnid}/{Path(name).stem}.xml"] = b"<annotation/>"
    for name in VAL:
        files[f"ILSVRC/Data/CLS-LOC/val/{name}"] = content(name)
    files["ILSVRC/Data/CLS-LOC/test/ILSVRC2012_test_00000001.JPEG"] = b"unlabelled"
    return files


def assert_laid_out(dest: Path) -> None:
    """DEST holds exactly TRAIN and VAL in class folders, byte for byte, and the project's imagefolder reads it."""
    for wnid, names in TRAIN.items():
        assert sorted(p.name for p in (dest / "train" / wnid).iterdir()) == names
        for name in names:
            assert (dest / "train" / wnid / name).read_bytes() == content(name)
    for name, wnid in VAL.items():
        assert (dest / "val" / wnid / name).read_bytes() == content(name)
    assert sum(1 for _ in (dest / "val").rglob("*.JPEG")) == len(VAL)
    catalog = folder_catalog(dest / "train", dest / "val", train=True)
    assert catalog.classes == WNIDS
    assert len(list(catalog.train.samples)) == 6 and len(list(catalog.val.samples)) == len(VAL)
    marker = (dest / layout.MARKER).read_text()
    assert '"classes": 3' in marker and '"train_images": 6' in marker and '"val_images": 5' in marker


@pytest.mark.parametrize("labels", ["solution", "val_labels_pairs", "val_labels_lines", "devkit"])
def test_image_net_archives_with_each_label_file(tmp_path: Path, labels: str) -> None:
    source = image_net_archives(tmp_path / "downloads")
    if labels == "solution":
        (source / "LOC_val_solution.csv").write_text(solution_csv())
    elif labels == "val_labels_pairs":
        (source / "val_labels.txt").write_text("".join(f"{name} {wnid}\n" for name, wnid in VAL.items()))
    elif labels == "val_labels_lines":
        (source / "val_labels.txt").write_text("".join(f"{wnid}\n" for _, wnid in sorted(VAL.items())))
    else:
        devkit(source)
    assert layout.main([str(source), str(tmp_path / "imagenet")]) == 0
    assert_laid_out(tmp_path / "imagenet")


def test_kaggle_zip_is_read_in_place(tmp_path: Path) -> None:
    archive = tmp_path / layout.KAGGLE_ZIP
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, data in kaggle_files().items():
            zipped.writestr(name, data)
    assert layout.main([str(tmp_path), str(tmp_path / "imagenet")]) == 0
    assert_laid_out(tmp_path / "imagenet")
    assert not (tmp_path / "imagenet" / "test").exists()


def test_kaggle_tree_is_copied_and_left_as_it_was(tmp_path: Path) -> None:
    source = tmp_path / "kaggle"
    for name, data in kaggle_files().items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    assert layout.main([str(source), str(tmp_path / "imagenet")]) == 0
    assert_laid_out(tmp_path / "imagenet")
    assert (source / "ILSVRC/Data/CLS-LOC/val" / next(iter(VAL))).is_file()


def test_synced_class_folders_are_moved(tmp_path: Path) -> None:
    dest = tmp_path / "imagenet"
    source = dest / ".downloads"
    for wnid, names in TRAIN.items():
        (source / "train" / wnid).mkdir(parents=True)
        for name in names:
            (source / "train" / wnid / name).write_bytes(content(name))
    for name, wnid in VAL.items():
        (source / "val" / wnid).mkdir(parents=True, exist_ok=True)
        (source / "val" / wnid / name).write_bytes(content(name))
    assert layout.main([str(source), str(dest), "--move"]) == 0
    assert_laid_out(dest)
    assert not list(source.rglob("*.JPEG"))


def test_a_finished_layout_is_not_redone_without_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = image_net_archives(tmp_path / "downloads")
    (source / "LOC_val_solution.csv").write_text(solution_csv())
    dest = tmp_path / "imagenet"
    assert layout.main([str(source), str(dest)]) == 0
    (dest / "train" / WNIDS[0] / TRAIN[WNIDS[0]][0]).unlink()
    assert layout.main([str(source), str(dest)]) == 0
    assert "already laid out" in capsys.readouterr().out
    assert layout.main([str(source), str(dest), "--force"]) == 0
    assert_laid_out(dest)


def test_dry_run_names_the_form_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = image_net_archives(tmp_path / "downloads")
    devkit(source)
    assert layout.main([str(source), str(tmp_path / "imagenet"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would lay out archives" in out and layout.DEVKIT_ARCHIVE in out
    assert not (tmp_path / "imagenet").exists()


def test_flat_val_without_labels_fails_before_the_train_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = image_net_archives(tmp_path / "downloads")
    assert layout.main([str(source), str(tmp_path / "imagenet")]) == 2
    error = capsys.readouterr().err
    assert "LOC_val_solution.csv" in error and "val_labels.txt" in error and layout.DEVKIT_ARCHIVE in error
    assert not (tmp_path / "imagenet" / "train").exists()


def test_unknown_source_lists_the_forms(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "README").write_text("nothing here")
    assert layout.main([str(tmp_path / "junk"), str(tmp_path / "imagenet")]) == 2
    error = capsys.readouterr().err
    assert "README" in error and layout.TRAIN_ARCHIVE in error and layout.KAGGLE_ZIP in error


def test_labels_of_other_classes_fail_the_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = image_net_archives(tmp_path / "downloads")
    (source / "val_labels.txt").write_text("".join(f"{name} n09999999\n" for name in VAL))
    assert layout.main([str(source), str(tmp_path / "imagenet")]) == 2
    assert "different class folders" in capsys.readouterr().err
    assert not (tmp_path / "imagenet" / layout.MARKER).exists()


def test_a_label_that_is_a_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = image_net_archives(tmp_path / "downloads")
    (source / "val_labels.txt").write_text("".join(f"{name} ../../escaped\n" for name in VAL))
    assert layout.main([str(source), str(tmp_path / "out" / "imagenet")]) == 2
    assert "refusing the name" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists()
