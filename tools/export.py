"""Export a checkpoint's weights for use outside this project, each format checked against the trained model.

    DIR/weights.pt, DIR/weights.safetensors   the state dict (torchvision's ResNet keys; see below for BlurPool)
    DIR/model.onnx                            the true architecture, dynamic batch axis, checked with onnxruntime
    DIR/classes.json                          class index -> name ("0": "tench", ...)
    DIR/recipe.yaml                           the recipe the weights were trained with
    DIR/metadata.json                         preprocessing, architecture, weight set, opset, parity figures

metadata.json is written last, after every check passed: a folder without it holds a failed or unfinished export.

Composer's ``export_for_inference`` (``composer.utils.inference``) writes TorchScript or ONNX and stops there: it
writes no weights a plain torchvision model can load, no safetensors, does not check the exported graph against
the model, and fails on a BlurPool network with a dynamic batch axis (see ``static_blurmaxpool``). This module
adds those. Every export is compared with the model ``evaluate.py`` rebuilds (`training.weights.build_model_for_checkpoint`)
on random images, and a difference beyond ``PARITY_TOLERANCE`` fails the export instead of writing a model that
quietly computes something else.

Plain and StochasticDepth runs export torchvision's own state dict: ``torchvision.models.<name>(num_classes=K)``
loads it with ``strict=True`` (``training.weights.to_torchvision_state_dict`` reshapes a conv1x1 head and folds StochasticDepth
exactly). A BlurPool network has no torchvision equivalent: a blur before a strided 3x3 convolution composes to a
5x5 kernel that differs at the borders (the blur zero-pads its input, the convolution then zero-pads the blurred
map), and BlurMaxPool (max, blur, subsample) is not a max-pool. So a BlurPool export holds the BlurPool network's
own state dict (torchvision's keys plus the blur layers' ``.conv.`` keys and fixed filter buffers), and
``metadata.json`` says how to rebuild it; the ONNX model carries the BlurPool architecture itself.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
import torchvision
from composer.algorithms.blurpool.blurpool_layers import BlurMaxPool2d, blur_2d
from omegaconf import DictConfig
from safetensors.torch import save
from torch import Tensor, nn

from algorithms.registry import enabled_algorithms
from data.transforms import eval_resize_size
from model import PREACT_NAMES
from recipes.errors import UsageError
from recipes.loading import SAVED_RECIPE, recipe_to_yaml
from training.weights import (
    ARCHITECTURE_CHANGING_ALGORITHMS,
    ModelStates,
    WeightSet,
    build_model_for_checkpoint,
    choose_weight_set,
    to_torchvision_state_dict,
)

WEIGHTS_PT = "weights.pt"
WEIGHTS_SAFETENSORS = "weights.safetensors"
ONNX_MODEL = "model.onnx"
CLASSES = "classes.json"
RECIPE = SAVED_RECIPE
METADATA = "metadata.json"
EXPORT_FILES = (WEIGHTS_PT, WEIGHTS_SAFETENSORS, ONNX_MODEL, CLASSES, RECIPE, METADATA)

# The TorchScript exporter's default opset in torch 2.7 (it goes up to 20); every onnxruntime since 1.13 runs it.
ONNX_OPSET = 17
ONNX_INPUT, ONNX_OUTPUT = "images", "logits"
# The ONNX graph is traced at one batch size and checked at another, which fails unless the batch axis is dynamic.
TRACE_BATCH_SIZE, CHECK_BATCH_SIZE = 2, 3
# Largest allowed |exported - PyTorch| logit difference, as a fraction of the largest |PyTorch logit| (at least 1).
# fp32 ResNet-50 on the CPU measures about 1e-6 of it (onnxruntime folds BatchNorm into the convolutions):
# 8.5e-4 on logits up to 876 at 224 px, 1e-5 on logits up to 10 at 32 px. Within the tolerance a top-1 flip needs
# two logits closer than twice it, so top-1 agreement is reported, not required.
PARITY_TOLERANCE = 1e-4


@dataclass
class Parity:
    """How closely an export's logits match the PyTorch model's on the same random images."""

    batch_size: int
    max_abs_diff: float
    tolerance: float
    top1_agreement: float


def check_export_folder(folder: Path) -> Path:
    """The export folder, created if missing; fails before any work if it cannot be one."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(
            f"--export {folder} is a file; pass a folder (it is created if missing) to write {', '.join(EXPORT_FILES)}."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"Cannot create the export folder {folder}: {error}. Pass a writable folder."
        ) from error
    return folder


def choose_weights(states: ModelStates, weights: WeightSet) -> str:
    """The weight set to export; ``auto`` is the EMA weights when the run has them, which is what was evaluated."""
    return choose_weight_set(states, weights, "--export-weights: the checkpoint")


def export_checkpoint(
    folder: Path,
    config: DictConfig,
    states: ModelStates,
    class_names: list[str],
    *,
    weights: WeightSet = "auto",
    checkpoint: str = "",
    evaluations: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Write every export file into ``folder`` and return the metadata (also written, last, as metadata.json).

    ``states`` are the checkpoint's weight sets (`training.weights.extract_model_states`), ``class_names`` the data's in
    label order. ``checkpoint`` and the exported set's entry of ``evaluations`` (metrics per weight set, as
    evaluate.py reports them) are recorded in the metadata.
    """
    folder = check_export_folder(folder)
    (folder / METADATA).unlink(missing_ok=True)  # a failure below must not leave an earlier export's metadata
    choice = choose_weights(states, weights)
    num_classes = len(class_names)
    network = build_model_for_checkpoint(
        config, num_classes, states[choice], source=f"checkpoint {checkpoint}"
    ).module.eval()
    architecture = _architecture(config, num_classes)
    resolution = config.data.eval_resolution
    if architecture["torchvision_compatible"]:
        state_dict = to_torchvision_state_dict(states[choice], config)
        torchvision_parity = check_torchvision_parity(network, state_dict, config.model.name, resolution)
    else:
        state_dict = network.state_dict()
        torchvision_parity = None
    write_weights(folder, state_dict, architecture)
    onnx_parity = export_onnx(network, folder / ONNX_MODEL, resolution)
    write_classes(folder, class_names)
    (folder / RECIPE).write_text(recipe_to_yaml(config), encoding="utf-8")
    metadata = {
        "checkpoint": checkpoint,
        "weights": choice,
        "architecture": architecture,
        "files": {
            "pt": WEIGHTS_PT,
            "safetensors": WEIGHTS_SAFETENSORS,
            "onnx": ONNX_MODEL,
            "classes": CLASSES,
        },
        "preprocessing": _preprocessing(config.data),
        "onnx": {
            "opset": ONNX_OPSET,
            "exporter": "torch.onnx.export, TorchScript-based (dynamo=False)",
            "input": ONNX_INPUT,
            "output": ONNX_OUTPUT,
            "dynamic_axes": {ONNX_INPUT: {"0": "batch"}, ONNX_OUTPUT: {"0": "batch"}},
            "trace_batch_size": TRACE_BATCH_SIZE,
            "parity": [asdict(parity) for parity in onnx_parity],
        },
        "torchvision_parity": asdict(torchvision_parity) if torchvision_parity else None,
        "evaluation": dict(evaluation) if (evaluation := (evaluations or {}).get(choice)) else None,
    }
    (folder / METADATA).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return metadata


def describe_export(folder: Path, metadata: Mapping[str, Any]) -> str:
    """One line for the console: what was written where, and how closely the ONNX model matches PyTorch."""
    worst = max(parity["max_abs_diff"] for parity in metadata["onnx"]["parity"])
    batches = " and ".join(str(parity["batch_size"]) for parity in metadata["onnx"]["parity"])
    return (
        f"exported {metadata['weights']} weights to {folder}/ ({', '.join(EXPORT_FILES)}); "
        f"ONNX vs PyTorch max abs diff {worst:.2g} at batch sizes {batches}"
    )


def _architecture(config: DictConfig, num_classes: int) -> dict[str, Any]:
    """What the weights belong to, and the code that rebuilds it."""
    algorithms = enabled_algorithms(config.algorithms)
    changing = {name: algorithms.get(name) for name in ARCHITECTURE_CHANGING_ALGORITHMS}
    name = config.model.name
    # timm's pre-activation ResNets export timm's own state dict (training.weights refuses torchvision's).
    if name in PREACT_NAMES:
        plain = f"timm.create_model('{name}', pretrained=False, num_classes={num_classes})"
    else:
        plain = f"torchvision.models.{name}(num_classes={num_classes})"
    # SqueezeExcite and Factorize add layers torchvision's ResNet lacks: exported like BlurPool, as they train.
    added_layers = any(changing[key] is not None for key in ("blurpool", "squeeze_excite", "factorize"))
    compatible = not added_layers and name not in PREACT_NAMES
    if not added_layers:
        rebuild = f"{plain}.load_state_dict(weights, strict=True)"
    else:
        rebuild = (
            f"training.weights.build_model_for_checkpoint(recipes.loading.load_recipe('{RECIPE}'), {num_classes}, "
            "weights) "
            "in this project"
        )
        only_blurpool = all(value is None for key, value in changing.items() if key != "blurpool")
        if config.model.head == "fc" and only_blurpool:
            rebuild += (
                f"; or composer.functional.apply_blurpool({plain}, **blurpool) then "
                "load_state_dict(weights, strict=True)"
            )
    return {
        "name": name,
        "num_classes": num_classes,
        "head": config.model.head,
        **changing,
        # StochasticDepth and the conv1x1 head are folded into torchvision's layout; BlurPool and timm's cannot be.
        "torchvision_compatible": compatible,
        "rebuild": rebuild,
    }


def _preprocessing(data: Any) -> dict[str, Any]:
    """The recipe's eval transform (``data.transforms.eval_transform``, torchvision pipeline) as plain numbers."""
    return {
        "resize": eval_resize_size(data.eval_resolution, data.eval_crop_ratio),
        "crop": data.eval_resolution,
        "interpolation": data.interpolation,
        "mean": list(data.mean),
        "std": list(data.std),
        "input": "float32 NCHW RGB: resize the short side, center-crop, scale to [0, 1], (x - mean) / std",
    }


def random_images(batch_size: int, resolution: int, seed: int = 0) -> Tensor:
    """A fixed batch of normalised-looking images for parity checks."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, resolution, resolution, generator=generator)


def compare_logits(reference: Tensor, candidate: Tensor, label: str) -> Parity:
    """Max abs difference and top-1 agreement; a UsageError naming ``label`` if beyond ``PARITY_TOLERANCE``."""
    difference = (candidate - reference).abs().max().item()
    tolerance = PARITY_TOLERANCE * max(1.0, reference.abs().max().item())
    agreement = (candidate.argmax(dim=1) == reference.argmax(dim=1)).float().mean().item()
    parity = Parity(len(reference), difference, tolerance, agreement)
    if not difference <= tolerance:  # also catches NaN
        raise UsageError(
            f"Export check failed: {label} differs from the PyTorch model by up to {difference:.3g} "
            f"(tolerance {tolerance:.3g}, top-1 agreement {agreement:.2f}) on {len(reference)} random images. "
            "The exported file is not a faithful copy; report this with the checkpoint's recipe."
        )
    return parity


def check_torchvision_parity(
    network: nn.Module, state_dict: dict[str, Tensor], name: str, resolution: int
) -> Parity:
    """Plain torchvision ``name`` loads ``state_dict`` strictly and computes what ``network`` computes."""
    plain = torchvision.models.get_model(name, weights=None, num_classes=state_dict["fc.weight"].shape[0])
    plain.load_state_dict(state_dict, strict=True)
    images = random_images(TRACE_BATCH_SIZE, resolution)
    with torch.no_grad():
        return compare_logits(network(images), plain.eval()(images), f"torchvision.models.{name}")


def write_weights(folder: Path, state_dict: Mapping[str, Tensor], architecture: Mapping[str, Any]) -> None:
    """The state dict as a torch .pt (a plain dict of tensors) and as safetensors (with the architecture name)."""
    tensors = {key: value.detach().contiguous() for key, value in state_dict.items()}
    torch.save(tensors, folder / WEIGHTS_PT)
    header = {
        "format": "pt",
        "architecture": architecture["name"],
        "num_classes": str(architecture["num_classes"]),
    }
    # save() rather than save_file(): save_file creates the file owner-only (0600), unlike every other export file.
    (folder / WEIGHTS_SAFETENSORS).write_bytes(save(tensors, metadata=header))


def write_classes(folder: Path, class_names: list[str]) -> None:
    """classes.json: ``{"0": name, ...}`` in label order, the names the data gives its classes."""
    classes = {str(index): name for index, name in enumerate(class_names)}
    (folder / CLASSES).write_text(json.dumps(classes, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class StaticBlurMaxPool2d(nn.Module):
    """Composer's BlurMaxPool2d with its channel count fixed: the same computation, exportable with a dynamic batch.

    BlurMaxPool2d calls ``blur_2d(channels=-1)``, which reads the channel count from the input's shape and repeats
    the blur filter by it at run time. With a dynamic batch axis the ONNX tracer records that shape as a graph
    value, the depthwise convolution's kernel has no static shape, and the export fails ("ONNX export of
    convolution for kernel of unknown shape", https://github.com/mosaicml/composer/issues/3466). BlurConv2d
    already passes a fixed count, so it exports as is.
    """

    def __init__(self, pool: BlurMaxPool2d, channels: int) -> None:
        super().__init__()
        self.pool = pool
        self.channels = channels
        self.register_buffer("blur_filter", pool.filt2d.repeat(channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Max over each window at stride 1, then the blur with the pool's stride (`blurmax_pool2d`'s steps)."""
        pool = self.pool
        maxima = nn.functional.max_pool2d(
            x,
            pool.kernel_size,
            stride=1,
            padding=pool.padding,
            dilation=pool.dilation,
            ceil_mode=pool.ceil_mode,
        )
        return blur_2d(maxima, channels=self.channels, stride=pool.stride, filter=self.blur_filter)


def static_blurmaxpool(network: nn.Module, images: Tensor) -> nn.Module:
    """A copy of ``network`` whose BlurMaxPool2d layers have the channel counts ``images`` give them."""
    network = copy.deepcopy(network)
    channels: dict[str, int] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            channels[name] = inputs[0].shape[1]

        return hook

    hooks = [
        module.register_forward_pre_hook(record(name))
        for name, module in network.named_modules()
        if isinstance(module, BlurMaxPool2d)
    ]
    with torch.no_grad():
        network(images)
    for hook in hooks:
        hook.remove()
    for name, count in channels.items():
        parent, _, attribute = name.rpartition(".")
        owner = network.get_submodule(parent)
        setattr(owner, attribute, StaticBlurMaxPool2d(getattr(owner, attribute), count))
    return network


def export_onnx(network: nn.Module, path: Path, resolution: int) -> list[Parity]:
    """Export ``network`` (in eval mode) to ONNX with a dynamic batch axis and check it with onnxruntime.

    torch 2.7's TorchScript-based exporter, its default: ``dynamo=True`` would need onnxscript as well, and naming
    the exporter keeps a later torch that changes the default from switching it silently. The parity check runs
    the original ``network``, not the exportable copy, so it also covers the BlurMaxPool swap. A failed check
    removes the file.
    """
    images = random_images(TRACE_BATCH_SIZE, resolution)
    exportable = static_blurmaxpool(network, images)
    with torch.no_grad(), warnings.catch_warnings():
        # BlurPool's padding helper turns its fixed filter's shape into ints; the tracer warns about every such
        # conversion. The filter is constant, and the parity check below is the real test of the trace.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            exportable,
            (images,),
            str(path),
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    try:
        onnx.checker.check_model(str(path))
        return check_onnx_parity(path, network, (TRACE_BATCH_SIZE, CHECK_BATCH_SIZE), resolution)
    except Exception:
        path.unlink(missing_ok=True)
        raise


def check_onnx_parity(
    path: Path, network: nn.Module, batch_sizes: tuple[int, ...], resolution: int
) -> list[Parity]:
    """onnxruntime's logits against ``network``'s at each batch size (different seeds, so different images)."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = []
    for seed, batch_size in enumerate(batch_sizes):
        images = random_images(batch_size, resolution, seed=seed)
        (logits,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: images.numpy()})
        with torch.no_grad():
            reference = network(images)
        results.append(compare_logits(reference, torch.from_numpy(np.asarray(logits)), f"ONNX model {path}"))
    return results
