"""Runtime resolution: GPU-only settings fall back on CPU with a note, or fail clearly where they cannot."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
from composer import Trainer
from omegaconf import OmegaConf

import train
from data import build_data
from model import build_model
from recipes.errors import UsageError
from recipes.schema import ModelConfig
from tests.test_train import tiny_synthetic_overrides
from training import trainer
from training.preflight import load_run_recipe
from training.runtime import resolve_runtime, start_distributed


def test_cpu_falls_back_to_fp32_and_no_auto_microbatching() -> None:
    runtime = resolve_runtime(load_run_recipe("g4dn_12xlarge"), cuda_available=False)
    assert runtime.device == "cpu" and runtime.precision == "fp32"
    assert runtime.device_train_microbatch_size is None
    assert any("amp_fp16" in note for note in runtime.notes)


def test_gpu_keeps_mixed_precision() -> None:
    runtime = resolve_runtime(load_run_recipe("colab"), cuda_available=True)
    assert runtime.device == "gpu" and runtime.precision == "amp_fp16" and not runtime.notes


def test_device_gpu_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_runtime(load_run_recipe("smoke", ["device=gpu"]), cuda_available=False)


def first_batch(world_size: int, rank: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[int]]:
    """As rank ``rank`` of ``world_size`` processes sees it (the launcher's variables; Composer reads them
    while no process group is formed): the runtime's per-device batch and the images of the first training
    batch its loader yields, each by its sum of pixel values, sorted. 16 synthetic images in a global batch
    of 8, each cropped whole (no randomness but the order)."""
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", str(rank))
    config = load_run_recipe(
        "smoke",
        [
            "data.source=synthetic", "data.num_classes=4", "data.synthetic_train_samples=16",
            "data.synthetic_val_samples=8", "data.train_resolution=8", "data.eval_resolution=8",
            "data.crop_scale=[1.0,1.0]", "data.crop_ratio=[1.0,1.0]", "data.num_workers=0", "global_batch_size=8",
        ],
    )  # fmt: skip
    runtime = resolve_runtime(config, cuda_available=False)
    assert runtime.world_size == world_size
    images, _ = next(iter(build_data(config).train.dataloader))
    return runtime.per_device_batch_size, sorted(int(image.sum()) for image in images)


@pytest.mark.parametrize("world_size", [2, 4])
def test_per_device_batch_is_the_global_batch_split_over_the_processes(
    world_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of N processes gets 1/N of the global batch, and the N ranks' first batches are together the one
    process's first batch, image for image."""
    one_process, whole_batch = first_batch(1, 0, monkeypatch)
    assert one_process == len(set(whole_batch)) == 8  # eight different images
    shares = [first_batch(world_size, rank, monkeypatch) for rank in range(world_size)]
    assert [(per_device, len(images)) for per_device, images in shares] == [
        (8 // world_size,) * 2
    ] * world_size
    assert sorted(image for _, images in shares for image in images) == whole_batch


def test_compile_switch_reaches_composer_which_compiles_the_forward() -> None:
    runtime = resolve_runtime(load_run_recipe("smoke", ["compile=true"]), cuda_available=False)
    assert runtime.compile_config == {}
    model = build_model(OmegaConf.structured(ModelConfig), 10)
    trainer = Trainer(model=model, device="cpu", compile_config=runtime.compile_config, progress_bar=False)
    # Composer wraps the model's forward with TorchDynamo; compilation itself happens at the first batch.
    assert hasattr(trainer.state.model.forward, "_torchdynamo_orig_callable")
    assert resolve_runtime(load_run_recipe("smoke"), cuda_available=False).compile_config is None
    assert isinstance(trainer.state.model, torch.nn.Module)


def test_cudnn_autotuning_is_on_for_gpu_runs_unless_switched_off_or_deterministic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def benchmark(*overrides: str, cuda: bool = True, before: bool) -> bool:
        runtime = resolve_runtime(load_run_recipe("g4dn_xlarge", list(overrides)), cuda_available=cuda)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", before)
        start_distributed(runtime)
        return torch.backends.cudnn.benchmark

    assert benchmark(before=False) is True
    assert benchmark("cudnn_benchmark=false", before=True) is False
    assert benchmark("deterministic=true", before=True) is False
    assert benchmark(cuda=False, before=False) is False  # a CPU run leaves the backend as it was
    assert benchmark(cuda=False, before=True) is True


def test_the_process_group_waits_dist_timeout_for_the_other_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 of two with no second rank: the start-up gives up after the recipe's dist_timeout (Composer's 300 s
    default would hang this test for five minutes). In this process: the group is never formed, so nothing of it
    is left for the tests after this one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = {
        "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "NODE_RANK": "0",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    }  # fmt: skip
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    runtime = resolve_runtime(load_run_recipe("smoke", ["dist_timeout=3"]), cuda_available=False)
    started = time.monotonic()
    with pytest.raises(Exception) as failure:
        start_distributed(runtime)
    name = type(failure.value).__name__
    assert "Timeout" in name or "Store" in name or "timed out" in str(failure.value), repr(failure.value)
    assert 3 <= time.monotonic() - started < 30
    assert not torch.distributed.is_initialized()


def test_composer_config_banner_is_dropped_and_its_warnings_kept(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny run on a terminal with both of Composer's consoles on (its bar and its metric lines): neither prints
    Composer's hyperparameter banner (``node_name: unknown because NODENAME ...``), while Composer's own warning
    about the two consoles together still reaches the user."""
    monkeypatch.setattr(trainer, "console_is_terminal", lambda: True)
    overrides = [
        *tiny_synthetic_overrides(tmp_path),
        "model.name=resnet18",
        "max_duration=1ba",
        "eval_interval=1ba",
        "save_interval=1ba",
        "logging.progress_bar=true",
        "logging.log_to_console=true",
    ]
    with pytest.warns(UserWarning, match="Setting both `progress_bar` and `log_to_console`"):
        assert train.main(["smoke", *overrides]) == 0
    captured = capfd.readouterr()
    console = captured.out + captured.err
    assert "Eval metrics/val/acc1" in console  # Composer's console spoke
    assert "NODENAME" not in console and "num_cpus_per_node" not in console and "Config:" not in console
