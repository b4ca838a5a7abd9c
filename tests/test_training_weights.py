"""Tests for training/weights.py: loading models back from real Composer checkpoints (wrapper prefixes, BlurPool,
StochasticDepth, EMA weight sets) and converting their weights for plain torchvision."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from composer import Callback, Trainer
from composer.algorithms import EMA, BlurPool
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from model import build_model
from recipes.errors import UsageError
from recipes.schema import ModelConfig, RecipeConfig
from training.weights import (
    build_model_for_checkpoint,
    extract_model_state,
    extract_model_states,
    load_model_from_checkpoint,
    read_checkpoint,
    strip_wrapper_prefixes,
    to_torchvision_state_dict,
)

NUM_CLASSES = 10


def make_recipe(algorithms: dict[str, Any] | None = None, **model_overrides: Any) -> DictConfig:
    """A full recipe DictConfig with the given algorithms and model keys."""
    return OmegaConf.structured(
        RecipeConfig(algorithms=algorithms or {}, model=ModelConfig(**model_overrides))
    )


def images(seed: int = 0) -> Tensor:
    """A fixed tiny batch: resnet50 runs on 32x32 inputs, which keeps these tests fast on a CPU."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def eval_outputs(network: torch.nn.Module, inputs: Tensor) -> Tensor:
    with torch.no_grad():
        return network.eval()(inputs)


def randomize_batchnorm(network: torch.nn.Module) -> None:
    """Non-trivial BN affine weights and running statistics, so every residual branch changes the output."""
    generator = torch.Generator().manual_seed(1)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            shape = module.weight.shape
            module.weight.data = 0.5 + torch.rand(shape, generator=generator)
            module.bias.data = 0.1 * torch.randn(shape, generator=generator)
            module.running_mean = 0.1 * torch.randn(shape, generator=generator)
            module.running_var = 0.5 + torch.rand(shape, generator=generator)


@dataclass
class TrainedRun:
    """A finished 2-batch run: its checkpoint and the training weights seen at the end of each batch."""

    checkpoint_path: Path
    trainer: Trainer
    weights_after_batch: list[dict[str, Tensor]] = field(default_factory=list)


class RecordTrainingWeights(Callback):
    """Keeps the model's weights at BATCH_END, after the optimizer step and before EMA's checkpoint swap."""

    def __init__(self, record: list[dict[str, Tensor]]) -> None:
        self.record = record

    def batch_end(self, state: Any, logger: Any) -> None:
        weights = {key: value.detach().clone() for key, value in state.model.state_dict().items()}
        self.record.append(strip_wrapper_prefixes(weights))


def train_two_batches(folder: Path, recipe: DictConfig, algorithms: list[Any]) -> TrainedRun:
    """Train the recipe's model for two batches on random images and checkpoint after each batch."""
    torch.manual_seed(0)
    dataset = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, NUM_CLASSES, (8,)))
    weights: list[dict[str, Tensor]] = []
    trainer = Trainer(
        model=build_model(recipe.model, NUM_CLASSES),
        train_dataloader=DataLoader(dataset, batch_size=4),
        max_duration="2ba",
        device="cpu",
        algorithms=algorithms,
        callbacks=[RecordTrainingWeights(weights)],
        save_folder=str(folder),
        save_interval="1ba",
        progress_bar=False,
        log_to_console=False,
        loggers=[],
        seed=0,
    )
    trainer.fit()
    return TrainedRun(folder / "latest-rank0.pt", trainer, weights)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    return train_two_batches(tmp_path_factory.mktemp("plain"), make_recipe(), [])


@pytest.fixture(scope="module")
def blurpool_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    recipe = make_recipe({"blurpool": {}})
    return train_two_batches(tmp_path_factory.mktemp("blurpool"), recipe, [BlurPool()])


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    return train_two_batches(tmp_path_factory.mktemp("ema"), make_recipe(), [EMA(half_life="1ba")])


def test_wrapper_prefixes_are_stripped() -> None:
    weights = {"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}
    for prefix in ("module.", "module.module.", "_orig_mod.module.", "module._orig_mod."):
        assert strip_wrapper_prefixes({prefix + k: v for k, v in weights.items()}).keys() == weights.keys()


def test_compiled_model_state_dict_is_keyed_like_torchvision() -> None:
    compiled = torch.compile(build_model(ModelConfig(), NUM_CLASSES))  # lazy: nothing compiles here
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.module.")
    torchvision.models.resnet50(num_classes=NUM_CLASSES).load_state_dict(
        extract_model_state(compiled.state_dict()), strict=True
    )


def test_checkpoint_loads_into_build_model_and_torchvision(plain_run: TrainedRun) -> None:
    recipe = make_recipe()
    expected = eval_outputs(plain_run.trainer.state.model.module, images())
    loaded = load_model_from_checkpoint(plain_run.checkpoint_path, recipe, NUM_CLASSES)
    weights = extract_model_state(read_checkpoint(plain_run.checkpoint_path))
    plain = torchvision.models.resnet50(num_classes=NUM_CLASSES)
    plain.load_state_dict(to_torchvision_state_dict(weights, recipe), strict=True)
    assert torch.equal(eval_outputs(loaded.module, images()), expected)
    assert torch.equal(eval_outputs(plain, images()), expected)


def test_blurpool_checkpoint_rebuilds_with_identical_outputs(blurpool_run: TrainedRun) -> None:
    loaded = load_model_from_checkpoint(
        blurpool_run.checkpoint_path, make_recipe({"blurpool": {}}), NUM_CLASSES
    )
    expected = eval_outputs(blurpool_run.trainer.state.model.module, images())
    assert torch.equal(eval_outputs(loaded.module, images()), expected)


def test_blurpool_checkpoint_refuses_torchvision_conversion(blurpool_run: TrainedRun) -> None:
    weights = extract_model_state(read_checkpoint(blurpool_run.checkpoint_path))
    with pytest.raises(UsageError, match=r"BlurPool.*differs from torchvision.*load_model_from_checkpoint"):
        to_torchvision_state_dict(weights, make_recipe({"blurpool": {}}))


def test_blurpool_checkpoint_with_recipe_without_blurpool_says_so(blurpool_run: TrainedRun) -> None:
    with pytest.raises(UsageError, match=r"unexpected .*blur.*trained with BlurPool.*recipe") as error:
        load_model_from_checkpoint(blurpool_run.checkpoint_path, make_recipe(), NUM_CLASSES)
    assert str(blurpool_run.checkpoint_path) in str(error.value)


def test_plain_checkpoint_with_blurpool_recipe_says_so(plain_run: TrainedRun) -> None:
    with pytest.raises(UsageError, match=r"recipe enables algorithms.blurpool"):
        load_model_from_checkpoint(plain_run.checkpoint_path, make_recipe({"blurpool": {}}), NUM_CLASSES)


def test_ema_checkpoint_labels_ema_and_training_weights(ema_run: TrainedRun) -> None:
    states = extract_model_states(read_checkpoint(ema_run.checkpoint_path))
    # Composer swaps the EMA weights into the model before checkpointing.
    assert states["model_holds"] == "ema"
    assert states["model"] is states["ema"]
    first, last = ema_run.weights_after_batch
    # half_life=1ba: smoothing 0.5, and EMA starts from the weights after batch 1.
    for key, value in states["ema"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.5 * first[key] + 0.5 * last[key])
    for key, value in states["raw"].items():
        assert torch.equal(value, last[key]), key
    assert not torch.equal(states["ema"]["fc.weight"], states["raw"]["fc.weight"])


def test_ema_labels_follow_ema_weights_active(ema_run: TrainedRun) -> None:
    """A checkpoint taken while the training weights are in the model (as between eval and the next batch)."""
    checkpoint = read_checkpoint(ema_run.checkpoint_path)
    saved = extract_model_states(checkpoint)
    ema_state = dict(checkpoint["state"]["algorithms"])["EMA"]
    checkpoint["state"]["model"] = {"module." + k: v for k, v in saved["raw"].items()}
    for part in ("named_parameters_dict", "named_buffers_dict"):
        stored = ema_state["ema_model"][part]
        stored.update({key: saved["ema"][key.removeprefix("module.")] for key in stored})
    ema_state["ema_weights_active"] = False
    states = extract_model_states(checkpoint)
    assert states["model_holds"] == "raw"
    assert all(torch.equal(states["ema"][k], saved["ema"][k]) for k in saved["ema"])
    assert all(torch.equal(states["raw"][k], saved["raw"][k]) for k in saved["raw"])


def test_load_chooses_ema_or_raw_weights(ema_run: TrainedRun, plain_run: TrainedRun) -> None:
    recipe = make_recipe()
    raw = load_model_from_checkpoint(ema_run.checkpoint_path, recipe, NUM_CLASSES, weights="raw")
    auto = load_model_from_checkpoint(ema_run.checkpoint_path, recipe, NUM_CLASSES)
    ema_fc = extract_model_states(read_checkpoint(ema_run.checkpoint_path))["ema"]["fc.weight"]
    assert torch.equal(auto.module.fc.weight, ema_fc)
    assert torch.equal(raw.module.fc.weight, ema_run.weights_after_batch[-1]["fc.weight"])
    with pytest.raises(UsageError, match="no 'ema' weights"):
        load_model_from_checkpoint(plain_run.checkpoint_path, recipe, NUM_CLASSES, weights="ema")


def test_truncated_checkpoint_names_the_file(plain_run: TrainedRun, tmp_path: Path) -> None:
    truncated = tmp_path / "ep0-ba2-rank0.pt"
    data = plain_run.checkpoint_path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match=f"{truncated}.*truncated"):
        read_checkpoint(truncated)


def test_stochastic_depth_keeps_keys_and_folds_into_torchvision() -> None:
    recipe = make_recipe({"stochastic_depth": {"drop_rate": 0.5}}, zero_init_residual=False)
    trained = build_model(recipe.model, NUM_CLASSES).module
    randomize_batchnorm(trained)
    weights = trained.state_dict()
    rebuilt = build_model_for_checkpoint(recipe, NUM_CLASSES, weights).module
    assert rebuilt.state_dict().keys() == weights.keys()  # Composer's StochasticDepth adds no keys...
    unfolded = torchvision.models.resnet50(num_classes=NUM_CLASSES)
    unfolded.load_state_dict(weights, strict=True)
    # ...but scales each residual branch by (1 - drop_rate) at eval, which the conversion folds into bn3.
    assert not torch.allclose(eval_outputs(unfolded, images()), eval_outputs(rebuilt, images()))
    folded = torchvision.models.resnet50(num_classes=NUM_CLASSES)
    folded.load_state_dict(to_torchvision_state_dict(weights, recipe), strict=True)
    torch.testing.assert_close(eval_outputs(folded, images()), eval_outputs(rebuilt, images()))


def test_conv1x1_head_converts_to_torchvision_with_same_outputs() -> None:
    recipe = make_recipe(head="conv1x1", zero_init_residual=False)
    network = build_model(recipe.model, NUM_CLASSES).module
    plain = torchvision.models.resnet50(num_classes=NUM_CLASSES)
    plain.load_state_dict(to_torchvision_state_dict(network.state_dict(), recipe), strict=True)
    torch.testing.assert_close(eval_outputs(plain, images()), eval_outputs(network, images()))
