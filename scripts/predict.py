"""Classify an image with the files ``evaluate.py --export DIR`` wrote, and print the top 5 with class names.

    python scripts/predict.py IMAGE --weights DIR [--backend onnx|torch] [--dry-run]

``--backend onnx`` (the default) runs DIR/model.onnx with onnxruntime and needs nothing but onnxruntime, numpy and
Pillow: DIR and this file can be copied to a machine without torch or this project (that is also why it has its
own ``UsageError``). ``--backend torch`` loads DIR/weights.safetensors into torchvision's ResNet; a BlurPool export
has no torchvision equivalent and is rebuilt by this project's ``training.weights`` from DIR/recipe.yaml.

The image goes through the recipe's eval transform as DIR/metadata.json records it, in the steps of torchvision's
Resize + CenterCrop + ToTensor + Normalize (the ``torchvision`` pipeline of ``data/transforms.py``; on a PIL image
those are PIL's resize and plain arithmetic, so numpy and Pillow give the same numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

REPOSITORY = Path(__file__).resolve().parent.parent
BACKENDS = ("onnx", "torch")
TOP = 5
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


class UsageError(Exception):
    """A failure the user can fix (a missing file, a folder that is no export); its message names it."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line: the image, the export folder, the backend."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("image", type=Path, help="image file (any format Pillow reads)")
    parser.add_argument("--weights", type=Path, required=True, help="folder written by evaluate.py --export")
    parser.add_argument("--backend", choices=BACKENDS, default="onnx", help="onnxruntime (default) or torch")
    parser.add_argument("--dry-run", action="store_true", help="check the inputs and say what would run")
    return parser.parse_args(argv)


def read_export(folder: Path) -> tuple[dict[str, Any], list[str]]:
    """The export's metadata and class names (in label order)."""
    metadata_path, classes_path = folder / "metadata.json", folder / "classes.json"
    for path in (metadata_path, classes_path):
        if not path.is_file():
            raise UsageError(
                f"{path} does not exist: --weights must be a folder written by "
                "`python evaluate.py --checkpoint CKPT --export DIR`."
            )
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    classes = json.loads(classes_path.read_text(encoding="utf-8"))
    return metadata, [classes[str(index)] for index in range(len(classes))]


def open_image(path: Path) -> Image.Image:
    """The decoded image in RGB (ImageNet has greyscale and CMYK JPEGs; the model wants three channels)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise UsageError(f"Image {path} does not exist.") from error
    except (UnidentifiedImageError, OSError) as error:
        raise UsageError(f"Cannot read {path} as an image: {error}.") from error


def preprocess(image: Image.Image, preprocessing: dict[str, Any]) -> np.ndarray:
    """A (1, 3, crop, crop) float32 batch: torchvision's Resize(resize) + CenterCrop(crop) + ToTensor + Normalize."""
    width, height = image.size
    short = preprocessing["resize"]
    # torchvision's _compute_resized_output_size: the short side becomes `resize`, the long side is truncated.
    size = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    if size != image.size:
        image = image.resize(size, RESAMPLING[preprocessing["interpolation"]])
    crop = preprocessing["crop"]
    # torchvision's center_crop rounding.
    left, top = round((size[0] - crop) / 2.0), round((size[1] - crop) / 2.0)
    pixels = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255
    mean = np.asarray(preprocessing["mean"], dtype=np.float32)
    std = np.asarray(preprocessing["std"], dtype=np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)[None].copy()


def onnx_logits(folder: Path, metadata: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """Logits from DIR/model.onnx run by onnxruntime on the CPU."""
    try:
        import onnxruntime
    except ImportError as error:
        raise UsageError(f"--backend onnx needs onnxruntime ({error}): pip install onnxruntime.") from error
    session = onnxruntime.InferenceSession(
        str(folder / metadata["files"]["onnx"]), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run([metadata["onnx"]["output"]], {metadata["onnx"]["input"]: images})
    return np.asarray(logits)


def torch_logits(folder: Path, metadata: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """Logits from DIR/weights.safetensors in torchvision's ResNet, or in the rebuilt BlurPool network."""
    try:
        import torch
        import torchvision
        from safetensors.torch import load_file
    except ImportError as error:
        raise UsageError(
            f"--backend torch needs torch, torchvision and safetensors ({error}); or use --backend onnx."
        ) from error
    architecture = metadata["architecture"]
    weights = load_file(folder / metadata["files"]["safetensors"])
    if architecture["torchvision_compatible"]:
        network = torchvision.models.get_model(
            architecture["name"], weights=None, num_classes=architecture["num_classes"]
        )
        network.load_state_dict(weights, strict=True)
    else:
        network = rebuild_with_project(folder, architecture["num_classes"], weights)
    with torch.no_grad():
        return network.eval()(torch.from_numpy(images)).numpy()


def rebuild_with_project(folder: Path, num_classes: int, weights: dict[str, Any]) -> Any:
    """A BlurPool export's network, rebuilt from DIR/recipe.yaml by this project's training.weights.

    torchvision has no BlurPool layers to load the weights into; the checkout this script lives in has them.
    """
    if str(REPOSITORY) not in sys.path:
        sys.path.insert(0, str(REPOSITORY))
    try:
        from recipes.loading import SAVED_RECIPE, load_recipe
        from training.weights import build_model_for_checkpoint
    except ImportError as error:
        raise UsageError(
            f"This export has BlurPool layers, which --backend torch rebuilds with this project's training.weights "
            f"({error}): run this script from a checkout of the project, or use --backend onnx."
        ) from error
    return build_model_for_checkpoint(load_recipe(folder / SAVED_RECIPE), num_classes, weights).module


def top_classes(logits: np.ndarray, classes: list[str]) -> list[tuple[float, int, str]]:
    """(probability, index, name) of the most likely classes, best first."""
    shifted = np.exp(logits - logits.max())
    probabilities = shifted / shifted.sum()
    best = np.argsort(-probabilities, kind="stable")[: min(TOP, len(classes))]
    return [(float(probabilities[index]), int(index), classes[index]) for index in best]


def main(argv: list[str] | None = None) -> int:
    """Print the top 5; exit 0 on success, 2 on a usage error (with the message, not a traceback)."""
    args = parse_args(argv)
    try:
        metadata, classes = read_export(args.weights)
        image = open_image(args.image)
        model_file = metadata["files"]["onnx" if args.backend == "onnx" else "safetensors"]
        if not (args.weights / model_file).is_file():
            raise UsageError(
                f"{args.weights / model_file} does not exist; export again with evaluate.py --export."
            )
        plan = f"{args.image} ({image.width}x{image.height}) through {args.weights / model_file} ({args.backend})"
        if args.dry_run:
            print(f"would classify {plan}")
            return 0
        images = preprocess(image, metadata["preprocessing"])
        logits = (onnx_logits if args.backend == "onnx" else torch_logits)(args.weights, metadata, images)
    except UsageError as error:
        print(f"predict: error: {error}", file=sys.stderr)
        return 2
    print(f"top {min(TOP, len(classes))} of {plan}:")
    for probability, index, name in top_classes(logits[0], classes):
        print(f"  {probability:7.2%}  {name}  (class {index})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
