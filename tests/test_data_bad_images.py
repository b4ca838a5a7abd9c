"""ImageNet's oddities decode; undecodable files are skipped and listed, or stop the run by name (data.on_bad_image)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import train
from data import build_data
from data.bad_images import BadImageError, BadImageLog
from data.samples import LabelledImages, open_image
from recipes.errors import UsageError
from tests.test_data_sources import COLOURS, assert_batches_match_labels, recipe, write_image

PIPELINES = ["fast", "torchvision"]


def plant_oddities(folder: Path) -> None:
    """Files that look wrong but decode: CMYK and greyscale JPEGs, a PNG named .JPEG (all red, class 0)."""
    Image.new("RGB", (30, 24), COLOURS[0]).convert("CMYK").save(folder / "cmyk.JPEG", format="JPEG")
    Image.new("RGB", (30, 24), COLOURS[0]).save(folder / "png-inside.JPEG", format="PNG")
    Image.new("L", (30, 24), 76).save(folder / "grey.JPEG", format="JPEG")  # luma of pure red


def plant_bad_files(folder: Path) -> list[Path]:
    """A zero-byte file, a truncated JPEG and a file of garbage, all named like ImageNet images."""
    encoded = io.BytesIO()
    Image.effect_noise((64, 48), 60).convert("RGB").save(encoded, format="JPEG", quality=95)
    bad = {
        "empty.JPEG": b"",
        "truncated.JPEG": encoded.getvalue()[:600],
        "garbage.JPEG": b"not an image" * 20,
    }
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    return [folder / name for name in bad]


def folder_with(tmp_path: Path, plant) -> tuple[Path, list]:
    root = tmp_path / "images"
    for label in range(3):
        for index in range(4):
            for split in ("train", "val"):
                write_image(root / split / ["cat", "dog", "eel"][label] / f"{index}.jpg", label)
    planted = plant(root / "train" / "cat")
    return root, planted


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_cmyk_greyscale_and_png_named_jpeg_decode_as_rgb(tmp_path: Path, pipeline: str) -> None:
    root, _ = folder_with(tmp_path, plant_oddities)
    config = recipe(tmp_path, source="imagefolder", path=str(root), drop_last=False, pipeline=pipeline)
    bundle = build_data(config)
    dataset = bundle.train.dataloader.dataset
    odd = [
        index for index, (path, _) in enumerate(dataset.samples) if Path(path).stem in {"cmyk", "png-inside"}
    ]
    for index in odd:
        image, label = dataset[index]
        assert image.shape == (3, 16, 16) and label == 0
    assert bundle.bad_images.entries() == {}


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_bad_files_are_replaced_listed_and_reported(tmp_path: Path, pipeline: str) -> None:
    root, planted = folder_with(tmp_path, plant_bad_files)
    listing = tmp_path / "run" / "bad_images.tsv"
    config = recipe(
        tmp_path, source="imagefolder", path=str(root), drop_last=False, pipeline=pipeline, num_workers=1
    )
    bundle = build_data(config, bad_image_list=listing)
    seen = sum(len(labels) for _, labels in bundle.train.dataloader)
    assert seen == bundle.train_size == 15  # every sample still yields an image
    listed = bundle.bad_images.entries()
    assert set(listed) == {str(path) for path in planted}
    assert "truncated" in listed[str(root / "train" / "cat" / "truncated.JPEG")].lower()
    report = bundle.bad_images.report()
    assert (
        report is not None and report.startswith("3 image(s) could not be decoded") and str(listing) in report
    )
    sum(len(labels) for _, labels in bundle.train.dataloader)  # a second epoch lists nothing twice
    assert len(listing.read_text().splitlines()) == 3


def test_on_bad_image_fail_stops_naming_the_file(tmp_path: Path) -> None:
    root, _ = folder_with(tmp_path, plant_bad_files)
    config = recipe(tmp_path, source="imagefolder", path=str(root), on_bad_image="fail", num_workers=0)
    dataset = build_data(config).train.dataloader.dataset
    index = next(i for i, (path, _) in enumerate(dataset.samples) if path.endswith("empty.JPEG"))
    with pytest.raises(BadImageError, match=r"empty\.JPEG.*data\.on_bad_image=skip"):
        dataset[index]


def test_a_folder_of_only_bad_files_is_reported_as_broken_data(tmp_path: Path) -> None:
    log = BadImageLog(tmp_path / "bad.tsv", "skip")
    empty = tmp_path / "empty.JPEG"
    empty.write_bytes(b"")
    dataset = LabelledImages([(str(empty), 0)] * 3, open_image, ["a"], None, root="somewhere", bad_images=log)
    with pytest.raises(UsageError, match="in a row could not be decoded"):
        dataset[0]


def test_train_finishes_with_a_bad_image_and_reports_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, _ = folder_with(tmp_path, plant_bad_files)
    run_folder = tmp_path / "run"
    status = train.main(
        [
            "smoke", f"data.path={root}", "data.source=imagefolder", "data.num_workers=0",
            "data.train_resolution=16", "data.eval_resolution=16", "model.name=resnet18", "global_batch_size=5",
            "eval_batch_size=6", "max_duration=1ep", f"save_folder={run_folder}", "logging.progress_bar=false",
            f"data.cache_dir={tmp_path / 'cache'}",
        ]
    )  # fmt: skip
    assert status == 0
    assert "3 image(s) could not be decoded" in capsys.readouterr().out
    assert json.loads((run_folder / "summary.json").read_text())["bad_images"] == 3
    assert len((run_folder / "bad_images.tsv").read_text().splitlines()) == 3


def test_fail_policy_in_a_worker_prints_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, _ = folder_with(tmp_path, plant_bad_files)
    status = train.main(
        [
            "smoke", f"data.path={root}", "data.source=imagefolder", "data.num_workers=1",
            "data.on_bad_image=fail", "data.train_resolution=16", "data.eval_resolution=16",
            "model.name=resnet18", "global_batch_size=15", "max_duration=1ep", "logging.progress_bar=false",
            f"save_folder={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}",
        ]
    )  # fmt: skip
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("error: Cannot decode ") and ".JPEG" in error
    assert "Traceback" not in error


def test_good_images_still_carry_their_labels(tmp_path: Path) -> None:
    root, _ = folder_with(tmp_path, plant_oddities)
    bundle = build_data(recipe(tmp_path, source="imagefolder", path=str(root), drop_last=False))
    assert_batches_match_labels(bundle.val, 12)
    assert torch.is_tensor(next(iter(bundle.train.dataloader))[0])
