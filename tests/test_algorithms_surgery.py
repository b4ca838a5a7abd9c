"""The surgery and batch algorithms added to the registry: each changes what it says, a checkpoint trained with
it evaluates with evaluate.py, and the combinations that cannot work are refused before any work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from composer import Trainer
from composer.core import Callback, State
from composer.loggers import Logger
from omegaconf import OmegaConf
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

import evaluate
import train
from algorithms.registry import build_algorithms
from model import build_model
from recipes.errors import UsageError
from recipes.schema import ModelConfig
from training.preflight import RecipeFacts, check_recipe, load_run_recipe
from training.weights import (
    build_model_for_checkpoint,
    extract_model_state,
    read_checkpoint,
    to_torchvision_state_dict,
)

NUM_CLASSES = 4


class Inputs(Callback):
    """The images each forward pass sees."""

    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []

    def before_forward(self, state: State, logger: Logger) -> None:
        self.images.append(state.batch[0].detach().clone())


def fit(algorithms: dict[str, Any], batches: int = 1, batch_size: int = 8) -> tuple[Trainer, Inputs]:
    """ResNet-18 at 32 px on constant images (so a cut-out hole is plain to see) for a few batches."""
    inputs = Inputs()
    model = build_model(OmegaConf.structured(ModelConfig(name="resnet18")), NUM_CLASSES)
    images = torch.ones(batch_size * batches, 3, 32, 32)
    labels = torch.arange(batch_size * batches) % NUM_CLASSES
    trainer = Trainer(
        model=model,
        train_dataloader=DataLoader(TensorDataset(images, labels), batch_size=batch_size),
        max_duration=f"{batches}ba",
        algorithms=build_algorithms(OmegaConf.create(algorithms), global_batch_size=batch_size),
        callbacks=[inputs],
        device="cpu",
        progress_bar=False,
        seed=0,
    )
    trainer.fit()
    return trainer, inputs


def kinds(trainer: Trainer, name: str) -> list[torch.nn.Module]:
    return [module for module in trainer.state.model.modules() if type(module).__name__ == name]


def test_squeeze_excite_follows_convolutions_with_min_channels() -> None:
    trainer, _ = fit({"squeeze_excite": {"min_channels": 256, "latent_channels": 16}})
    blocks = kinds(trainer, "SqueezeExciteConv2d")
    # ResNet-18's convolutions with 256 channels or more in and out: layer3 (but its first conv, 128 in) and layer4.
    assert blocks and all(min(b.conv.in_channels, b.conv.out_channels) >= 256 for b in blocks)
    assert all(b.se.latent_channels == 16 for b in blocks)
    assert type(trainer.state.model.module.layer2[1].conv1).__name__ == "Conv2d"


def test_factorize_replaces_convolutions_above_min_channels() -> None:
    trainer, _ = fit({"factorize": {"min_channels": 256, "latent_channels": 0.25}})
    factorized = kinds(trainer, "FactorizedConv2d")
    assert factorized and all(min(f.in_channels, f.out_channels) >= 256 for f in factorized)
    assert all(f.latent_channels == min(f.in_channels, f.out_channels) // 4 for f in factorized)


def test_weight_standardization_standardizes_conv_weights_in_effect() -> None:
    trainer, _ = fit({"weight_standardization": {}})
    conv = trainer.state.model.module.layer1[0].conv1
    assert parametrize.is_parametrized(conv, "weight")
    per_filter = conv.weight.flatten(1)  # what the forward pass uses
    torch.testing.assert_close(per_filter.mean(1), torch.zeros(len(per_filter)), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        per_filter.std(1, unbiased=False), torch.ones(len(per_filter)), atol=1e-4, rtol=0
    )


def test_ghost_batchnorm_normalises_each_ghost_batch_and_evaluates_any_batch() -> None:
    trainer, _ = fit({"ghost_batchnorm": {"ghost_batch_size": 4}})
    network = trainer.state.model.module
    layer = network.bn1
    assert type(layer).__name__ == "EvalSafeGhostBatchNorm2d"
    layer.train()
    features = torch.cat([torch.randn(4, 64, 8, 8), torch.randn(4, 64, 8, 8) * 5 + 3])
    out = layer(features)
    for chunk in out.chunk(2):  # each half of 4 has zero mean and unit variance on its own
        torch.testing.assert_close(
            chunk.mean((0, 2, 3)), layer.batchnorm.bias.detach().expand(64), atol=1e-4, rtol=0
        )
    network.eval()
    with torch.no_grad():
        assert network(torch.randn(1, 3, 32, 32)).shape == (1, NUM_CLASSES)  # Composer's refuses 1 < 4


def test_cutout_masks_a_square_in_the_batch_the_model_sees() -> None:
    _, inputs = fit({"cutout": {"num_holes": 1, "length": 0.5}})
    zeros = inputs.images[0][0, 0] == 0
    rows, cols = zeros.any(1).nonzero(), zeros.any(0).nonzero()
    side = 16 // 2 * 2  # int(32 * 0.5), clipped at the border
    assert 0 < zeros.sum() <= side * side
    assert zeros[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one filled rectangle
    assert (inputs.images[0][:, :, zeros] == 0).all()  # the same square in every image and channel


def test_selective_backprop_keeps_the_stated_fraction_for_backward() -> None:
    _, inputs = fit(
        {"selective_backprop": {"start": 0.0, "end": 1.0, "keep": 0.25, "interrupt": 0}}, batches=2
    )
    assert [len(images) for images in inputs.images] == [2, 2]  # a quarter of each batch of 8


def test_channels_last_runs_after_factorize_whatever_the_recipe_order() -> None:
    trainer, _ = fit({"channels_last": {}, "factorize": {"min_channels": 256}})
    factorized = kinds(trainer, "FactorizedConv2d")
    assert factorized and all(
        f.module0.weight.is_contiguous(memory_format=torch.channels_last) for f in factorized
    )


def test_weight_standardization_before_factorize_is_refused() -> None:
    with pytest.raises(UsageError, match=r"weight_standardization' comes before 'algorithms\.factorize"):
        load_run_recipe("smoke", ["algorithms.weight_standardization={}", "algorithms.factorize={}"])


def test_selective_backprop_on_the_fast_pipeline_is_refused() -> None:
    with pytest.raises(UsageError, match=r"selective_backprop.*data\.pipeline=torchvision"):
        load_run_recipe("smoke", ["algorithms.selective_backprop={}"])


@pytest.mark.parametrize("name", ["selective_backprop", "layer_freezing"])
def test_fsdp_refuses_algorithms_that_act_after_wrapping(name: str) -> None:
    config = load_run_recipe(
        "smoke", [f"algorithms.{name}={{}}", "parallelism.strategy=fsdp", "data.pipeline=torchvision"]
    )
    findings = check_recipe(
        config, RecipeFacts(world_size=2, device="gpu", num_classes=10, batches_per_epoch=10)
    )
    refused = [f for f in findings if f.code == "fsdp_algorithm_refused"]
    assert len(refused) == 1 and f"algorithms.{name}" in refused[0].message


def test_layer_freezing_freezes_early_layers_on_schedule() -> None:
    # freeze_start 0: at the end of epoch 1 of 2 half the freeze level is reached, so layers stop changing.
    model = build_model(OmegaConf.structured(ModelConfig(name="resnet18")), NUM_CLASSES)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % NUM_CLASSES
    trainer = Trainer(
        model=model,
        train_dataloader=DataLoader(TensorDataset(images, labels), batch_size=4),
        max_duration="2ep",
        optimizers=torch.optim.SGD(model.parameters(), lr=0.1),
        algorithms=build_algorithms(
            OmegaConf.create({"layer_freezing": {"freeze_start": 0.0, "freeze_level": 1.0}}),
            global_batch_size=4,
        ),
        device="cpu",
        progress_bar=False,
        seed=0,
    )
    trainer.fit(duration="1ep")
    conv1, fc = model.module.conv1.weight, model.module.fc.weight
    assert not conv1.requires_grad and fc.requires_grad
    frozen, trained = conv1.detach().clone(), fc.detach().clone()
    trainer.fit(duration="1ep")
    assert torch.equal(conv1, frozen) and not torch.equal(fc, trained)


def tiny_run(folder: Path, *overrides: str) -> dict[str, Any]:
    args = [
        "smoke", f"save_folder={folder}", "max_duration=2ba", "eval_interval=2ba", "save_interval=2ba",
        "global_batch_size=8", "eval_batch_size=6", "data.num_workers=0", "logging.progress_bar=false",
        "model.name=resnet18", "data.source=synthetic", "data.num_classes=4", "data.synthetic_train_samples=16",
        "data.synthetic_val_samples=10", *overrides,
    ]  # fmt: skip
    assert train.main(args) == 0
    return json.loads((folder / "summary.json").read_text())


@pytest.mark.parametrize(
    "override",
    [
        "algorithms.squeeze_excite.min_channels=128",
        "algorithms.factorize.min_channels=128",
        "algorithms.weight_standardization.n_last_layers_ignore=1",
        # 10 images in batches of 6: the last eval batch (4) is smaller than the ghost batch.
        "algorithms.ghost_batchnorm.ghost_batch_size=8",
    ],
)
def test_surgery_checkpoint_evaluates_as_trained(tmp_path: Path, override: str) -> None:
    summary = tiny_run(tmp_path / "run", override)
    output = tmp_path / "eval.json"
    assert (
        evaluate.main(["--checkpoint", str(tmp_path / "run" / "latest-rank0.pt"), "--output", str(output)])
        == 0
    )
    assert json.loads(output.read_text())["val/acc1"] == pytest.approx(summary["val/acc1"], abs=1e-6)


def test_weight_standardization_folds_into_torchvision_and_squeeze_excite_refuses(tmp_path: Path) -> None:
    tiny_run(tmp_path / "ws", "algorithms.weight_standardization={}", "max_duration=1ba", "eval_interval=1ba")
    recipe = load_run_recipe(tmp_path / "ws" / "recipe.yaml")
    weights = extract_model_state(read_checkpoint(tmp_path / "ws" / "latest-rank0.pt"))
    plain = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    plain.load_state_dict(to_torchvision_state_dict(weights, recipe), strict=True)
    ours = build_model_for_checkpoint(recipe, NUM_CLASSES, weights)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(images), ours.module.eval()(images), atol=1e-4, rtol=1e-4)
    se_recipe = load_run_recipe(tmp_path / "ws" / "recipe.yaml", ["algorithms.squeeze_excite={}"])
    with pytest.raises(UsageError, match=r"squeeze_excite.*Squeeze-and-Excitation"):
        to_torchvision_state_dict(weights, se_recipe)
