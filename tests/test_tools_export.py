"""tools/export.py, evaluate.py --export and scripts/predict.py: every exported file computes what was trained.

The checkpoints come from real three-batch train.py runs; each is exported once through ``evaluate.py --export``: a
ResNet-50 on an image folder with named classes (evaluated, then exported), and a ResNet-18 with BlurPool and EMA
(exported without evaluating; the BlurMaxPool swap and EMA's bookkeeping do not depend on the depth).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision
from composer.algorithms.blurpool.blurpool_layers import BlurMaxPool2d
from composer.functional import apply_blurpool
from composer.utils import export_for_inference
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor

import evaluate
import train
from data import build_data
from data.transforms import eval_transform
from recipes.errors import UsageError
from tests.script_modules import load_script
from tools import export
from training.preflight import load_run_recipe
from training.weights import extract_model_states, load_model_from_checkpoint, read_checkpoint

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "predict.py"
predict = load_script("predict")

# Sorted, as class folders are read; none equals its index, so a name mapped to the wrong label shows.
CLASS_NAMES = (
    "apple",
    "bear",
    "castle",
    "dolphin",
    "elephant",
    "forest",
    "garden",
    "harbor",
    "island",
    "jungle",
)
NUM_CLASSES = len(CLASS_NAMES)
# The ONNX models are traced at batch 2 and checked by the export at 2 and 3; these are new to them.
OTHER_BATCH_SIZES = (1, 5)


@dataclass
class Exported:
    """A finished tiny run, its export folder and evaluate.py's JSON results."""

    checkpoint: Path
    folder: Path
    results: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads((self.folder / export.METADATA).read_text())

    @cached_property
    def network(self) -> torch.nn.Module:
        """The trained network (EMA weights if any) as evaluate.py rebuilds it: what every export must match."""
        recipe = load_run_recipe(self.checkpoint.parent / "recipe.yaml")
        return load_model_from_checkpoint(self.checkpoint, recipe, NUM_CLASSES).module.eval()

    @cached_property
    def session(self) -> onnxruntime.InferenceSession:
        return onnxruntime.InferenceSession(
            str(self.folder / export.ONNX_MODEL), providers=["CPUExecutionProvider"]
        )

    def onnx_outputs(self, inputs: Tensor) -> Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"images": inputs.numpy()})[0])


def train_and_export(folder: Path, *overrides: str, evaluate_first: bool = True) -> Exported:
    """Train the smoke recipe for three batches with ``overrides``, then run evaluate.py --export on its checkpoint."""
    args = [
        # Composer's warmup runs the first two batches at LR 0 (measured: after two batches with t_warmup=1ba the
        # EMA and training weights are equal), so the third is the one that moves the weights.
        "smoke", f"save_folder={folder / 'run'}", "max_duration=3ba", "eval_interval=3ba", "save_interval=3ba",
        "scheduler.t_warmup=1ba", "global_batch_size=16", "eval_batch_size=64", "data.num_workers=0",
        "logging.progress_bar=false",
        # Full residual branches from the start, so every block changes the logits the exports are compared on.
        "model.zero_init_residual=false", *overrides,
    ]  # fmt: skip
    assert train.main(args) == 0
    checkpoint = folder / "run" / "latest-rank0.pt"
    output = folder / "eval.json"
    command = ["--checkpoint", str(checkpoint), "--export", str(folder / "export"), "--output", str(output)]
    assert evaluate.main(command + ([] if evaluate_first else ["--no-eval"])) == 0
    return Exported(checkpoint, folder / "export", json.loads(output.read_text()))


def synthetic(*overrides: str) -> list[str]:
    """Synthetic 32 px data with NUM_CLASSES classes: the cheapest way to a real checkpoint."""
    return [
        "data.source=synthetic", f"data.num_classes={NUM_CLASSES}", "data.synthetic_train_samples=32",
        "data.synthetic_val_samples=8", *overrides,
    ]  # fmt: skip


def write_image_folder(root: Path) -> Path:
    """train/<name>/ and val/<name>/ with two small non-square JPEGs per class."""
    generator = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in CLASS_NAMES:
            (root / split / name).mkdir(parents=True)
            for index in range(2):
                pixels = generator.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{index}.jpg")
    return root


@pytest.fixture(scope="module")
def folder_export(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """ResNet-50 on an image folder with named classes, evaluated and exported."""
    folder = tmp_path_factory.mktemp("imagefolder")
    images_root = write_image_folder(folder / "images")
    overrides = ["data.source=imagefolder", f"data.path={images_root}", f"data.cache_dir={folder / 'cache'}"]
    return train_and_export(folder, *overrides)


@pytest.fixture(scope="module")
def blurpool_export(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """ResNet-18 with algorithms.blurpool (BlurConv2d and BlurMaxPool2d layers) and EMA, exported without eval."""
    overrides = synthetic(
        "model.name=resnet18", "algorithms.blurpool.replace_convs=true", "algorithms.ema.half_life=1ba"
    )
    return train_and_export(tmp_path_factory.mktemp("blurpool"), *overrides, evaluate_first=False)


def images(batch_size: int, seed: int = 7) -> Tensor:
    return torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def eval_outputs(network: torch.nn.Module, inputs: Tensor) -> Tensor:
    with torch.no_grad():
        return network.eval()(inputs)


def assert_within_export_tolerance(candidate: Tensor, reference: Tensor) -> None:
    tolerance = export.PARITY_TOLERANCE * max(1.0, reference.abs().max().item())
    assert (candidate - reference).abs().max().item() <= tolerance
    assert torch.equal(candidate.argmax(dim=1), reference.argmax(dim=1))


def an_image(folder: Path) -> Path:
    """A non-square photo-like image, so the resize and the center crop both do something."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    path = folder / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def predicted_lines(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert predict.main(list(args)) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.startswith("top 5 of")
    return lines


def test_export_writes_every_file_and_the_evaluated_accuracy(folder_export: Exported) -> None:
    assert sorted(p.name for p in folder_export.folder.iterdir()) == sorted(export.EXPORT_FILES)
    metadata = folder_export.metadata
    assert metadata["weights"] == "model" and metadata["architecture"]["torchvision_compatible"]
    assert metadata["evaluation"]["val/acc1"] == folder_export.results["val/acc1"]
    assert folder_export.results["export"] == metadata


def test_torchvision_resnet50_loads_pt_and_safetensors_strictly_with_the_same_outputs(
    folder_export: Exported,
) -> None:
    expected = eval_outputs(folder_export.network, images(4))
    plain = torchvision.models.resnet50(num_classes=NUM_CLASSES)
    for file in (export.WEIGHTS_PT, export.WEIGHTS_SAFETENSORS):
        path = folder_export.folder / file
        plain.load_state_dict(torch.load(path) if file == export.WEIGHTS_PT else load_file(path), strict=True)
        torch.testing.assert_close(eval_outputs(plain, images(4)), expected)


def test_onnx_batch_axis_is_dynamic_and_matches_pytorch(folder_export: Exported) -> None:
    model = onnx.load(str(folder_export.folder / export.ONNX_MODEL))
    assert model.opset_import[0].version == export.ONNX_OPSET
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch_size in OTHER_BATCH_SIZES:
        inputs = images(batch_size)
        assert_within_export_tolerance(
            folder_export.onnx_outputs(inputs), eval_outputs(folder_export.network, inputs)
        )


def test_classes_json_names_the_class_folders(folder_export: Exported) -> None:
    classes = json.loads((folder_export.folder / export.CLASSES).read_text())
    assert classes == {str(index): name for index, name in enumerate(CLASS_NAMES)}


def test_classes_json_uses_imagenet_synset_names(tmp_path: Path) -> None:
    root = tmp_path / "ILSVRC"
    wnids = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus"}
    for split in ("train", "val"):
        for wnid in wnids:
            (root / "Data" / "CLS-LOC" / split / wnid).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / "Data" / "CLS-LOC" / split / wnid / f"{wnid}_1.JPEG")
    lines = [f"{wnid} {names}" for wnid, names in wnids.items()]
    (root / "LOC_synset_mapping.txt").write_text("\n".join(lines) + "\n")
    recipe = load_run_recipe(
        "smoke", ["data.source=ilsvrc", f"data.path={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    )
    export.write_classes(tmp_path, build_data(recipe, train=False).class_names)
    assert json.loads((tmp_path / export.CLASSES).read_text()) == {"0": "tench", "1": "goldfish"}


def test_predict_preprocessing_is_the_recipe_eval_transform(folder_export: Exported, tmp_path: Path) -> None:
    recipe = load_run_recipe(folder_export.folder / export.RECIPE, ["data.pipeline=torchvision"])
    image = Image.open(an_image(tmp_path)).convert("RGB")
    ours = predict.preprocess(image, folder_export.metadata["preprocessing"])
    assert ours.shape == (1, 3, 32, 32)
    assert torch.equal(torch.from_numpy(ours[0]), eval_transform(recipe.data)(image))


def test_predict_prints_top5_with_names_from_both_backends(
    folder_export: Exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, folder = str(an_image(tmp_path)), str(folder_export.folder)
    onnx_lines = predicted_lines(capsys, image, "--weights", folder)
    torch_lines = predicted_lines(capsys, image, "--weights", folder, "--backend", "torch")
    assert len(onnx_lines) == 5
    ranked = [line.split()[1:] for line in onnx_lines]  # name, "(class", "N)"
    assert all(name == CLASS_NAMES[int(index.rstrip(")"))] for name, _, index in ranked)
    assert [line.split()[1:] for line in torch_lines] == ranked


def test_blurpool_onnx_export_keeps_a_dynamic_batch_and_matches(blurpool_export: Exported) -> None:
    model = onnx.load(str(blurpool_export.folder / export.ONNX_MODEL))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    network = blurpool_export.network
    assert any(isinstance(module, BlurMaxPool2d) for module in network.modules())
    for batch_size in OTHER_BATCH_SIZES:
        inputs = images(batch_size)
        assert_within_export_tolerance(blurpool_export.onnx_outputs(inputs), eval_outputs(network, inputs))


def test_blurpool_weights_rebuild_with_composer_apply_blurpool(blurpool_export: Exported) -> None:
    architecture = blurpool_export.metadata["architecture"]
    assert not architecture["torchvision_compatible"]
    weights = load_file(blurpool_export.folder / export.WEIGHTS_SAFETENSORS)
    plain = torchvision.models.get_model(architecture["name"], num_classes=NUM_CLASSES)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        plain.load_state_dict(weights, strict=True)
    rebuilt = torchvision.models.get_model(architecture["name"], num_classes=NUM_CLASSES)
    apply_blurpool(rebuilt, **architecture["blurpool"])
    rebuilt.load_state_dict(weights, strict=True)
    assert torch.equal(eval_outputs(rebuilt, images(2)), eval_outputs(blurpool_export.network, images(2)))


def test_predict_backends_agree_on_a_blurpool_export(
    blurpool_export: Exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, folder = str(an_image(tmp_path)), str(blurpool_export.folder)
    onnx_lines = predicted_lines(capsys, image, "--weights", folder)
    torch_lines = predicted_lines(capsys, image, "--weights", folder, "--backend", "torch")
    assert [line.split()[1:] for line in torch_lines] == [line.split()[1:] for line in onnx_lines]
    assert len(onnx_lines) == 5 and all(line.split()[1].startswith("class_") for line in onnx_lines)


def test_static_blurmaxpool_computes_what_blurmaxpool_computes() -> None:
    pool = BlurMaxPool2d(kernel_size=3, stride=2, padding=1)
    inputs = torch.randn(3, 16, 17, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(export.StaticBlurMaxPool2d(pool, channels=16)(inputs), pool(inputs))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # Composer's BlurPool layers, while tracing
def test_composer_export_for_inference_still_fails_on_blurpool_with_a_dynamic_batch(tmp_path: Path) -> None:
    """Composer issue #3466, the reason for StaticBlurMaxPool2d: when this starts passing, the swap can go."""
    network = torchvision.models.resnet18(num_classes=NUM_CLASSES).eval()
    with pytest.raises(Exception, match="kernel of unknown shape"):
        export_for_inference(
            network, "onnx", str(tmp_path / "model.onnx"), sample_input=(images(2),), surgery_algs=[apply_blurpool],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )  # fmt: skip


def test_ema_export_holds_the_ema_weights(blurpool_export: Exported) -> None:
    states = extract_model_states(read_checkpoint(blurpool_export.checkpoint))
    exported = load_file(blurpool_export.folder / export.WEIGHTS_SAFETENSORS)
    assert blurpool_export.metadata["weights"] == "ema"
    assert exported.keys() == states["ema"].keys()
    assert all(torch.equal(exported[key], value) for key, value in states["ema"].items())
    assert not torch.equal(exported["fc.weight"], states["raw"]["fc.weight"])


def test_export_weights_choice() -> None:
    ema_states: Any = {"model": {}, "ema": {}, "raw": {}, "model_holds": "ema"}
    assert export.choose_weights(ema_states, "auto") == "ema"
    assert export.choose_weights(ema_states, "raw") == "raw"
    assert export.choose_weights({"model": {}}, "auto") == "model"
    with pytest.raises(UsageError, match="no started EMA"):
        export.choose_weights({"model": {}}, "raw")


def test_export_into_a_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "latest-rank0.pt").write_bytes(b"")
    target = tmp_path / "weights.onnx"
    target.write_text("not a folder")
    assert evaluate.main(["--checkpoint", str(tmp_path / "latest-rank0.pt"), "--export", str(target)]) == 2
    assert f"--export {target} is a file; pass a folder" in capsys.readouterr().err


def test_parity_beyond_tolerance_fails_loudly() -> None:
    reference = torch.tensor([[4.0, -2.0, 1.0], [0.5, 3.0, -1.0]])
    assert export.compare_logits(reference, reference + 1e-5, "close").top1_agreement == 1.0
    with pytest.raises(
        UsageError, match=r"Export check failed: ONNX model x\.onnx differs .* by up to 0\.01"
    ):
        export.compare_logits(reference, reference + 0.01, "ONNX model x.onnx")


def test_predict_names_a_folder_that_is_no_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict.main([str(an_image(tmp_path)), "--weights", str(tmp_path)]) == 2
    assert f"{tmp_path / 'metadata.json'} does not exist" in capsys.readouterr().err
