"""model.name=resnetv2_50, timm's pre-activation ResNet: the recipe's model keys act on it, BlurPool reaches its
strided convolutions, what cannot work is refused, and a trained checkpoint evaluates and exports as trained."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
from composer.algorithms.blurpool import BlurConv2d, BlurMaxPool2d
from composer.functional import apply_blurpool
from omegaconf import OmegaConf
from safetensors.torch import load_file
from timm.models.resnetv2 import PreActBottleneck
from torch import nn

import evaluate
import train
from model import build_model, is_residual_block
from recipes.errors import UsageError
from recipes.schema import ModelConfig
from tools import export
from tools.planning import plan_run
from training.preflight import RecipeFacts, check_recipe, load_run_recipe
from training.weights import extract_model_state, read_checkpoint, to_torchvision_state_dict

NUM_CLASSES = 10


def preact(**keys: object) -> nn.Module:
    """The ResNetV2-50 build_model makes for ``keys``."""
    return build_model(OmegaConf.structured(ModelConfig(name="resnetv2_50", **keys)), NUM_CLASSES).module


def test_model_keys_act_on_the_preact_network() -> None:
    network = preact(init="mosaic", loss="binary_cross_entropy", zero_init_residual=True).eval()
    blocks = [module for module in network.modules() if isinstance(module, PreActBottleneck)]
    # zero_init_residual: a block without a projection shortcut starts as the identity.
    plain = next(block for block in blocks if block.downsample is None)
    features = torch.randn(2, plain.conv1.in_channels, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(plain(features), features)
    # init=mosaic reaches timm's BatchNormAct2d (timm's own init leaves every weight at 1).
    norms = [module.weight for module in network.modules() if isinstance(module, nn.BatchNorm2d)]
    assert all(((weight >= 0) & (weight < 1)).all() for weight in norms)
    # binary_cross_entropy: timm's classifier (head.fc, a 1x1 convolution) starts at bias -log(num_classes).
    torch.testing.assert_close(network.head.fc.bias, torch.full((NUM_CLASSES,), -math.log(NUM_CLASSES)))
    # One FSDP unit / activation-checkpointing unit per residual block: 3 + 4 + 6 + 3.
    assert sum(is_residual_block(module) for module in network.modules()) == len(blocks) == 16


def test_blurpool_replaces_every_strided_convolution_and_the_max_pool() -> None:
    network = preact()
    apply_blurpool(network)
    blurred = {name for name, module in network.named_modules() if isinstance(module, BlurConv2d)}
    # Composer skips layers with fewer than 16 input channels: the 7x7 stem convolution on RGB.
    assert blurred == {
        f"stages.{stage}.blocks.0.{layer}" for stage in (1, 2, 3) for layer in ("conv2", "downsample.conv")
    }
    assert isinstance(network.stem.pool, BlurMaxPool2d)
    assert network(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)


def test_drop_path_rate_drops_residual_branches_in_training_only() -> None:
    torch.manual_seed(0)
    last = preact(drop_path_rate=0.2, zero_init_residual=False).stages[3].blocks[2]  # the full rate, 0.2
    features = torch.randn(400, last.conv1.in_channels, 2, 2)
    with torch.no_grad():
        dropped = (last.train()(features) == features).flatten(1).all(dim=1).float().mean().item()
        kept_at_eval = (last.eval()(features) == features).flatten(1).all(dim=1).any().item()
    assert 0.12 < dropped < 0.28 and not kept_at_eval  # binomial(400, 0.2): 0.2, sd 0.02
    with pytest.raises(UsageError, match=r"algorithms\.stochastic_depth"):
        build_model(OmegaConf.structured(ModelConfig(name="resnet18", drop_path_rate=0.1)), NUM_CLASSES)


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        (["algorithms.stochastic_depth.drop_rate=0.1"], "stochastic_depth_not_for_preact"),
        (["task=moco_v3"], "preact_not_for_task"),
    ],
)
def test_what_the_preact_network_cannot_do_is_refused_before_training(
    overrides: list[str], code: str
) -> None:
    config = load_run_recipe("smoke", ["model.name=resnetv2_50", *overrides])
    findings = check_recipe(
        config, RecipeFacts(world_size=1, device="cpu", num_classes=10, batches_per_epoch=44)
    )
    (finding,) = [finding for finding in findings if finding.code == code]
    assert finding.severity == "error" and "model.name=resnetv2_50" in finding.message


def test_conv1x1_head_and_unknown_names_are_refused() -> None:
    with pytest.raises(UsageError, match=r"model\.head=conv1x1 with model\.name=resnetv2_50"):
        preact(head="conv1x1")
    with pytest.raises(UsageError, match=r"resnet50.*resnetv2_50"):
        build_model(OmegaConf.structured(ModelConfig(name="resnetv2_5")), NUM_CLASSES)


def test_plan_measures_the_preact_network_itself() -> None:
    plans = {
        name: plan_run(
            load_run_recipe("g4dn_xlarge", [f"model.name={name}"]), "g4dn_xlarge", measure_seconds=0.1
        )
        for name in ("resnet50", "resnetv2_50")
    }
    # ResNetV2-50 holds fewer activations than ResNet-50 (measured: 78.7 against 87.4 MB per image at 224 px).
    assert (
        plans["resnetv2_50"].memory.activation_mb_per_image < plans["resnet50"].memory.activation_mb_per_image
    )
    assert any(
        "resnetv2_50 is planned at the GPU figure" in note for note in plans["resnetv2_50"].assumptions
    )


def test_trained_checkpoint_evaluates_and_exports_as_trained(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    args = [
        "smoke", "model.name=resnetv2_50", f"save_folder={folder}", "max_duration=3ba", "eval_interval=3ba",
        "save_interval=3ba", "scheduler.t_warmup=1ba", "global_batch_size=16", "data.num_workers=0",
        "logging.progress_bar=false", "data.source=synthetic", f"data.num_classes={NUM_CLASSES}",
        "data.synthetic_train_samples=48", "data.synthetic_val_samples=20",
        # Full residual branches from the start, so every block changes the logits the exports are compared on;
        # timm's stochastic depth in training, which eval, the checkpoint and the export must not depend on.
        "model.zero_init_residual=false", "model.drop_path_rate=0.05",
    ]  # fmt: skip
    assert train.main(args) == 0
    summary = json.loads((folder / "summary.json").read_text())
    checkpoint, output = folder / "latest-rank0.pt", tmp_path / "eval.json"
    command = ["--checkpoint", str(checkpoint), "--export", str(tmp_path / "export"), "--output", str(output)]
    assert evaluate.main(command) == 0
    results = json.loads(output.read_text())
    assert results["val/acc1"] == pytest.approx(summary["val/acc1"], abs=1e-6)
    assert results["val/loss"] == pytest.approx(summary["val/loss"], abs=1e-5)

    architecture = results["export"]["architecture"]
    assert not architecture["torchvision_compatible"] and architecture["rebuild"].startswith(
        "timm.create_model"
    )
    plain = timm.create_model("resnetv2_50", pretrained=False, num_classes=NUM_CLASSES)
    plain.load_state_dict(load_file(tmp_path / "export" / export.WEIGHTS_SAFETENSORS), strict=True)
    parity = export.check_onnx_parity(tmp_path / "export" / export.ONNX_MODEL, plain.eval(), (3,), 32)
    assert parity[0].max_abs_diff <= parity[0].tolerance

    recipe = load_run_recipe(folder / "recipe.yaml")
    with pytest.raises(UsageError, match=r"do not load into torchvision.*timm.create_model\('resnetv2_50'"):
        to_torchvision_state_dict(extract_model_state(read_checkpoint(checkpoint)), recipe)
