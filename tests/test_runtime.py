"""Runtime resolution: GPU-only settings fall back on CPU with a note, or fail clearly where they cannot."""

from __future__ import annotations

import pytest
import torch
from composer import Trainer
from omegaconf import OmegaConf

from model import build_model
from recipes.errors import UsageError
from recipes.loading import load_recipe
from recipes.runtime import resolve_runtime
from recipes.schema import ModelConfig


def test_cpu_falls_back_to_fp32_and_no_auto_microbatching() -> None:
    runtime = resolve_runtime(load_recipe("g4dn_12xlarge"), cuda_available=False)
    assert runtime.device == "cpu" and runtime.precision == "fp32"
    assert runtime.device_train_microbatch_size is None
    assert any("amp_fp16" in note for note in runtime.notes)


def test_gpu_keeps_mixed_precision() -> None:
    runtime = resolve_runtime(load_recipe("colab"), cuda_available=True)
    assert runtime.device == "gpu" and runtime.precision == "amp_fp16" and not runtime.notes


def test_device_gpu_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_runtime(load_recipe("smoke", ["device=gpu"]), cuda_available=False)


def test_per_device_batch_is_global_batch() -> None:
    runtime = resolve_runtime(load_recipe("g4dn_12xlarge"), cuda_available=False)
    assert runtime.world_size == 1 and runtime.per_device_batch_size == 1024


def test_compile_switch_reaches_composer_which_compiles_the_forward() -> None:
    runtime = resolve_runtime(load_recipe("smoke", ["compile=true"]), cuda_available=False)
    assert runtime.compile_config == {}
    model = build_model(OmegaConf.structured(ModelConfig), 10)
    trainer = Trainer(model=model, device="cpu", compile_config=runtime.compile_config, progress_bar=False)
    # Composer wraps the model's forward with TorchDynamo; compilation itself happens at the first batch.
    assert hasattr(trainer.state.model.forward, "_torchdynamo_orig_callable")
    assert resolve_runtime(load_recipe("smoke"), cuda_available=False).compile_config is None
    assert isinstance(trainer.state.model, torch.nn.Module)
