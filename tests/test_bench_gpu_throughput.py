"""bench/gpu_throughput.py: its tiny CPU version runs end to end and writes the JSON a GPU run would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import gpu_throughput
from bench.gpu_throughput import ALL_MODES, CPU_COMPILE_SKIP, Mode, skip_reason

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gpu_throughput.py"
# fp32 runs anyway as the baseline; these add the GradScaler path in NHWC, bf16 autocast, and a skipped mode.
MODES = ["amp_fp16+channels_last", "amp_bf16", "amp_bf16+channels_last+compile"]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The benchmark's command line on the CPU, shrunk to one warm-up and one timed step per mode."""
    output = tmp_path_factory.mktemp("bench") / "gpu_throughput.json"
    command = [
        sys.executable, str(BENCH), "--device", "cpu", "--resolution", "32", "--batch-size", "2",
        "--steps", "1", "--warmup", "1", "--modes", *MODES, "--output", str(output),
    ]  # fmt: skip
    # One thread: the CPU run only proves the code path, and two threads on cores shared with other processes
    # ran it 5x slower here than one.
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
    return {"report": json.loads(output.read_text()), "stdout": finished.stdout}


class Recorder(torch.nn.Module):
    """A stand-in for ResNet-50 (a convolution, then the classifier) that notes how each training step runs it:
    the logits' dtype, the input's and the weights' memory layout, and the gradient that reaches the logits."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, num_classes)
        self.seen: list[dict[str, Any]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.conv(images).mean(dim=(2, 3)))
        seen = {
            "dtype": logits.dtype,
            "input_channels_last": images.is_contiguous(memory_format=torch.channels_last),
            "weights_channels_last": self.conv.weight.is_contiguous(memory_format=torch.channels_last),
        }
        logits.register_hook(lambda gradient: seen.update(gradient=float(gradient.float().abs().sum())))
        self.seen.append(seen)
        return logits


def test_every_mode_runs_as_its_name_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU, with a small stand-in for ResNet-50: autocast to the named precision (fp32 none), the model
    and the input in NHWC with channels_last, the loss scaled (GradScaler) under amp_fp16 alone, and the model
    compiled with compile (built, not run: the CPU skips those modes)."""
    built: list[Recorder] = []

    def recorder(num_classes: int) -> Recorder:
        built.append(Recorder(num_classes))
        return built[-1]

    monkeypatch.setattr(gpu_throughput.torchvision.models, "resnet50", recorder)
    cpu = torch.device("cpu")
    dtypes = {"fp32": torch.float32, "amp_fp16": torch.float16, "amp_bf16": torch.bfloat16}
    runs = set()
    for mode in ALL_MODES:
        precision, *options = mode.name.split("+")
        model = gpu_throughput.build_model(mode, cpu)
        assert isinstance(model, torch._dynamo.eval_frame.OptimizedModule) == ("compile" in options), (
            mode.name
        )
        assert built[-1].conv.weight.is_contiguous(memory_format=torch.channels_last) == (
            "channels_last" in options
        ), mode.name
        if skip_reason(mode, cpu) is not None:
            continue
        gpu_throughput.measure(mode, cpu, batch_size=2, resolution=8, steps=1, warmup=0)
        (seen,) = built[-1].seen
        # Cross-entropy's gradient at the logits of 2 images sums to at most 2; GradScaler multiplies it by 65536.
        scaled = seen.pop("gradient") > 1000
        assert (seen, scaled) == (
            {
                "dtype": dtypes[precision],
                "input_channels_last": "channels_last" in options,
                "weights_channels_last": "channels_last" in options,
            },
            precision == "amp_fp16",
        ), mode.name
        runs.add((*seen.values(), scaled))
    assert len(runs) == 6  # the six modes the CPU runs, each run its own way


def test_cpu_skips_compilation_and_runs_the_rest() -> None:
    cpu = torch.device("cpu")
    assert skip_reason(Mode("fp32", channels_last=True, compile=True), cpu) == CPU_COMPILE_SKIP
    assert [mode.name for mode in ALL_MODES if skip_reason(mode, cpu) is None] == [
        "fp32",
        "fp32+channels_last",
        "amp_fp16",
        "amp_fp16+channels_last",
        "amp_bf16",
        "amp_bf16+channels_last",
    ]


def test_json_names_the_machine_and_the_settings(cpu_run: dict[str, Any]) -> None:
    report = cpu_run["report"]
    assert report["device"] == "cpu" and report["gpu_name"] is None
    assert report["torch"] == torch.__version__
    assert (report["batch_size"], report["resolution"], report["timed_steps"]) == (2, 32, 1)


def test_measures_fp32_first_as_the_baseline_and_each_mode_against_it(cpu_run: dict[str, Any]) -> None:
    modes = cpu_run["report"]["modes"]
    assert list(modes) == ["fp32", "amp_fp16+channels_last", "amp_bf16"]
    assert modes["fp32"]["ratio_to_fp32"] == 1.0
    for result in modes.values():
        assert result["images_per_s"] > 0
        assert result["ratio_to_fp32"] == pytest.approx(
            result["images_per_s"] / modes["fp32"]["images_per_s"], rel=0.01
        )
        assert result["peak_memory_gib"] is None  # GPU memory only


def test_skipped_modes_are_listed_with_their_reason(cpu_run: dict[str, Any]) -> None:
    assert cpu_run["report"]["skipped"] == {"amp_bf16+channels_last+compile": CPU_COMPILE_SKIP}
    assert f"amp_bf16+channels_last+compile  skipped: {CPU_COMPILE_SKIP}" in cpu_run["stdout"]


def test_prints_a_table_row_per_measured_mode(cpu_run: dict[str, Any]) -> None:
    rows = [line.split()[0] for line in cpu_run["stdout"].splitlines() if line.split()]
    table = rows[rows.index("mode") + 1 :]
    assert table[:3] == ["fp32", "amp_fp16+channels_last", "amp_bf16"]


def test_a_compiler_failure_costs_one_row_not_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_compile(model: torch.nn.Module) -> torch.nn.Module:
        raise RuntimeError("InductorError: KeyError: 'op97'\nlong traceback")

    monkeypatch.setattr(gpu_throughput, "skip_reason", lambda mode, device: None)
    monkeypatch.setattr(torch, "compile", failing_compile)
    args = gpu_throughput.parse_args(
        ["--device", "cpu", "--resolution", "32", "--batch-size", "2", "--steps", "1", "--warmup", "0",
         "--modes", "fp32+channels_last+compile"]
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in cpu_run: steady on cores shared with other processes
    try:
        report = gpu_throughput.run(args)
    finally:
        torch.set_num_threads(threads)
    assert list(report["modes"]) == ["fp32"]
    assert report["skipped"] == {
        "fp32+channels_last+compile": "torch.compile failed: RuntimeError: InductorError: KeyError: 'op97'"
    }
