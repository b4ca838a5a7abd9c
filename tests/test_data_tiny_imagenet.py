"""data.source=tiny_imagenet on a generated folder laid out as tiny-imagenet-200.zip unpacks: labels of train and
flat val images, class order and names, subsets, errors, and the tiny_imagenet recipe trained on it.

Each class's images are one solid colour, so a sample's pixels tell which wnid it was written as.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torchvision
from omegaconf import OmegaConf
from PIL import Image

import train
from data import build_data, tiny_imagenet
from recipes.errors import UsageError
from recipes.schema import RecipeConfig
from training.preflight import load_run_recipe
from training.weights import extract_model_state, read_checkpoint, to_torchvision_state_dict

# wnids.txt's order, deliberately not sorted: classes must come out sorted.
COLOURS = {
    "n09999999": (255, 0, 0),
    "n01443537": (0, 255, 0),
    "n02012849": (0, 0, 255),
    "n03000134": (255, 255, 0),
    "n02002724": (0, 255, 255),
}
# words.txt covers more wnids than the classes; two classes share the first name "crane".
WORDS = {
    "n00001740": "entity",
    "n01443537": "goldfish, Carassius auratus",
    "n02012849": "crane",
    "n03000134": "crane, a lifting machine",
    "n02002724": "black stork, Ciconia nigra",
    "n09999999": "volcano",
    "n04000000": "unused class",
}
TRAIN_PER_CLASS = 4
VAL_PER_CLASS = 2


def write_jpeg(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), colour).save(path, quality=95)


def colour_wnid(path: str) -> str:
    """The wnid whose colour the image at ``path`` is nearest to."""
    pixel = Image.open(path).convert("RGB").getpixel((32, 32))
    return min(COLOURS, key=lambda wnid: sum((a - b) ** 2 for a, b in zip(COLOURS[wnid], pixel, strict=True)))


def tiny_imagenet_folder(root: Path) -> tuple[Path, dict[str, str]]:
    """The official layout in miniature; returns the root and each val image's annotated wnid."""
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{wnid}\n" for wnid in COLOURS))
    (root / "words.txt").write_text("".join(f"{wnid}\t{name}\n" for wnid, name in WORDS.items()))
    for wnid, colour in COLOURS.items():
        for index in range(TRAIN_PER_CLASS):
            write_jpeg(root / "train" / wnid / "images" / f"{wnid}_{index}.JPEG", colour)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    annotated: dict[str, str] = {}
    wnids = list(COLOURS)
    for index in range(len(wnids) * VAL_PER_CLASS):
        wnid = wnids[(index * 3) % len(wnids)]  # spread over the classes, not in class order
        annotated[f"val_{index}.JPEG"] = wnid
        write_jpeg(root / "val" / "images" / f"val_{index}.JPEG", COLOURS[wnid])
    lines = "".join(f"{name}\t{wnid}\t0\t0\t63\t63\n" for name, wnid in annotated.items())
    (root / "val" / "val_annotations.txt").write_text(lines)
    for index in range(3):  # unlabelled: must not appear anywhere
        write_jpeg(root / "test" / "images" / f"test_{index}.JPEG", (128, 128, 128))
    return root, annotated


def recipe(tmp_path: Path, **data: object):
    settings = {"source": "tiny_imagenet", "num_workers": 0, "cache_dir": str(tmp_path / "cache")}
    return OmegaConf.merge(
        OmegaConf.structured(RecipeConfig),
        {"global_batch_size": 4, "eval_batch_size": 4, "data": {**settings, **data}},
    )


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return tiny_imagenet_folder(tmp_path / "tiny-imagenet-200")


def test_labels_are_sorted_wnids_named_from_words_txt(
    tmp_path: Path, folder: tuple[Path, dict[str, str]]
) -> None:
    root, annotated = folder
    catalog = tiny_imagenet.build_catalog(recipe(tmp_path, path=str(root)).data, seed=0, train=True)
    wnids = sorted(COLOURS)
    assert catalog.classes == ["goldfish", "black stork", "crane (n02012849)", "crane (n03000134)", "volcano"]
    assert len(catalog.train.samples) == 5 * TRAIN_PER_CLASS and len(catalog.val.samples) == 5 * VAL_PER_CLASS
    for path, label in [*catalog.train.samples, *catalog.val.samples]:
        assert colour_wnid(path) == wnids[label], path
    # One val image checked against its line in val_annotations.txt.
    path, label = next(sample for sample in catalog.val.samples if Path(sample[0]).name == "val_3.JPEG")
    assert wnids[label] == annotated["val_3.JPEG"] == "n02002724" and label == 1
    # The same class indices (and samples) as torchvision's ImageFolder of train/.
    folder_view = torchvision.datasets.ImageFolder(str(root / "train"))
    assert folder_view.class_to_idx == {wnid: label for label, wnid in enumerate(wnids)}
    assert list(catalog.train.samples) == folder_view.samples


def test_subset_keys_apply(tmp_path: Path, folder: tuple[Path, dict[str, str]]) -> None:
    root, _ = folder
    data = {"path": str(root), "max_classes": 2, "max_samples_per_class": 3, "drop_last": False}
    bundle = build_data(recipe(tmp_path, **data, train_resolution=32, eval_resolution=32))
    assert bundle.class_names == ["goldfish", "black stork"]
    assert (bundle.num_classes, bundle.train_size, bundle.val_size) == (2, 6, 2 * VAL_PER_CLASS)
    val_labels = {label for _, label in bundle.val.dataloader.dataset.samples}
    assert val_labels == {0, 1}


def break_wnids(root: Path) -> None:
    (root / "wnids.txt").unlink()


def break_val_label(root: Path) -> None:
    annotations = root / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text().replace("val_0.JPEG\tn09999999", "val_0.JPEG\tn07777777"))


def break_train_class(root: Path) -> None:
    for path in sorted((root / "train" / "n01443537").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "train" / "n01443537").rmdir()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (break_wnids, r"wnids\.txt does not exist.*tiny-imagenet-200\.zip"),
        (
            break_val_label,
            r"val_annotations\.txt gives 'n07777777' for val_0\.JPEG, which is not one of the 5",
        ),
        (break_train_class, r"train do not match .*wnids\.txt: missing n01443537; not in wnids\.txt: none"),
    ],
)
def test_broken_layouts_name_the_file_and_the_fix(
    tmp_path: Path, folder: tuple[Path, dict[str, str]], damage, message: str
) -> None:
    root, _ = folder
    damage(root)
    with pytest.raises(UsageError, match=message):
        build_data(recipe(tmp_path, path=str(root)))


def test_evaluation_alone_needs_no_train_folder(tmp_path: Path, folder: tuple[Path, dict[str, str]]) -> None:
    root, annotated = folder
    break_train_class(root)  # even a broken train folder does not matter: wnids.txt gives the classes
    bundle = build_data(recipe(tmp_path, path=str(root)), train=False)
    assert bundle.train is None and (bundle.num_classes, bundle.val_size) == (5, len(annotated))


def test_without_data_path_says_which_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"data\.source=tiny_imagenet needs data\.path.*wnids\.txt"):
        build_data(recipe(tmp_path))


def test_recipe_trains_on_the_layout_and_exports_to_torchvision(
    tmp_path: Path, folder: tuple[Path, dict[str, str]]
) -> None:
    """The recipe as written, with only the data's place, the duration and the batch made small."""
    root, _ = folder
    overrides = [
        f"data.path={root}", f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0",
        "max_duration=1ep", "eval_interval=1ep", "save_interval=1ep", "global_batch_size=10",
        f"save_folder={tmp_path / 'run'}", "save_overwrite=true", "logging.progress_bar=false",
    ]  # fmt: skip
    assert train.main(["tiny_imagenet", *overrides]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["num_classes"], summary["train_images"], summary["val_images"]) == (5, 20, 10)
    assert summary["steps"] == 2 and "val/acc1" in summary
    config = load_run_recipe("tiny_imagenet", overrides)
    state = extract_model_state(read_checkpoint(tmp_path / "run" / "latest-rank0.pt"))
    network = torchvision.models.resnet50(num_classes=5)
    network.load_state_dict(to_torchvision_state_dict(state, config), strict=True)
