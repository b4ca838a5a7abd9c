"""Benchmark ResNet-50 training speed on the GPU: images/s and peak memory per precision, layout and compilation.

    python bench/gpu_throughput.py [--output FILE] [--batch-size N] [--resolution PX] [--steps N] [--warmup N]
                                   [--modes MODE ...] [--device auto|cuda|cpu]

Every mode trains torchvision's ``resnet50`` (1,000 classes) with SGD (momentum 0.9) on one synthetic batch that
stays on the device, so the data loader is out of the picture and the figure is the GPU's ceiling for this
project's model. Modes: ``fp32`` (the baseline), ``amp_fp16`` (``torch.autocast`` + ``GradScaler``) and
``amp_bf16`` (``torch.autocast``, no scaler), each also with ``+channels_last`` (model and input in NHWC) and
with ``+channels_last+compile`` (``torch.compile``, default mode). Warm-up steps (cuDNN autotuning, compilation)
are not timed; the timed steps end with a device synchronise. Prints a table with each mode's ratio to fp32 and
writes JSON with the GPU name, torch/CUDA/cuDNN versions and the batch size.

Without a GPU it runs a tiny version on the CPU (32 px, batch 2, 2 timed steps) so CI covers the code; modes
the CPU cannot run here are listed as skipped with the reason. GPU settings are train.py's (Composer's): TF32
allowed, so on Ampere and newer GPUs "fp32" runs on TF32 tensor cores; cuDNN autotuning off unless
``--cudnn-benchmark``. Both are recorded in the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision

PRECISIONS = ("fp32", "amp_fp16", "amp_bf16")
AUTOCAST_DTYPES = {"amp_fp16": torch.float16, "amp_bf16": torch.bfloat16}
NUM_CLASSES = 1000
# Full size on a GPU; the CPU run only proves the code path.
GPU_DEFAULTS = {"resolution": 224, "steps": 30, "warmup": 10}
CPU_DEFAULTS = {"resolution": 32, "batch_size": 2, "steps": 2, "warmup": 1}
# Inductor turns ResNet-50's training step into C++ kernels on a CPU. On the 2-core development machine (torch
# 2.7.0, 32 px, batch 2) that took over 3 minutes and then failed in the backward pass with
# "InductorError: KeyError: 'op97'", so the CPU version skips it; GPUs compile through Triton instead.
CPU_COMPILE_SKIP = (
    "torch.compile of ResNet-50 on a CPU takes minutes (and failed in torch 2.7.0's Inductor here)"
)


@dataclass(frozen=True)
class Mode:
    """One way to run the same training step."""

    precision: str
    channels_last: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        """fp32, amp_fp16+channels_last, amp_bf16+channels_last+compile, ..."""
        return "+".join(
            [self.precision] + ["channels_last"] * self.channels_last + ["compile"] * self.compile
        )


ALL_MODES = tuple(
    mode
    for precision in PRECISIONS
    for mode in (Mode(precision), Mode(precision, channels_last=True), Mode(precision, True, compile=True))
)
MODES_BY_NAME = {mode.name: mode for mode in ALL_MODES}


def skip_reason(mode: Mode, device: torch.device) -> str | None:
    """Why this machine cannot run the mode, or None when it can."""
    if device.type == "cpu" and mode.compile:
        return CPU_COMPILE_SKIP
    if device.type == "cuda" and mode.precision == "amp_bf16" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} cannot run bfloat16"
    return None


def build_model(mode: Mode, device: torch.device) -> torch.nn.Module:
    """A freshly initialised ResNet-50 (same seed for every mode), laid out and compiled as the mode says."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=NUM_CLASSES).to(device)
    if mode.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if mode.compile else model


def measure(
    mode: Mode, device: torch.device, batch_size: int, resolution: int, steps: int, warmup: int
) -> dict:
    """Train ``warmup`` untimed steps, then ``steps`` timed ones; images/s, step time and peak memory."""
    model = build_model(mode, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if mode.precision == "amp_fp16" else None
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(batch_size, 3, resolution, resolution, device=device, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), device=device, generator=generator)
    if mode.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    autocast = mode.precision in AUTOCAST_DTYPES

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(mode.precision), enabled=autocast):
            loss = F.cross_entropy(model(images), labels)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    synchronize(device)
    seconds = time.perf_counter() - started
    if not torch.isfinite(loss):
        raise RuntimeError(f"{mode.name}: the loss is {loss.item()} after {warmup + steps} steps")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "images_per_s": round(batch_size * steps / seconds, 2),
        "step_ms": round(1000 * seconds / steps, 2),
        "warmup_s": round(warmup_s, 2),
        "peak_memory_gib": round(peak, 3) if peak is not None else None,
    }


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Free one mode's model, optimizer state and compiled graphs before the next mode is measured."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def machine(device: torch.device) -> dict[str, Any]:
    """What ran the benchmark: GPU or CPU name, and the library versions that decide kernel choice."""
    info: dict[str, Any] = {
        "device": device.type,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info |= {
            "gpu_name": properties.name,
            "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
            "compute_capability": f"{properties.major}.{properties.minor}",
            # Below 8.0 (a T4 is 7.5) bfloat16 runs emulated, without tensor cores.
            "native_bf16": properties.major >= 8,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
    else:
        info |= {
            "gpu_name": None,
            "cpu": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(),
        }
    return info


def pick_device(choice: str) -> torch.device:
    """The GPU when there is one (or when asked for), else the CPU."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but no CUDA GPU is visible; use --device auto or cpu.")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every requested mode; a mode that cannot run, or runs out of memory, is skipped with the reason."""
    device = pick_device(args.device)
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    resolution = defaults["resolution"] if args.resolution is None else args.resolution
    steps = defaults["steps"] if args.steps is None else args.steps
    warmup = defaults["warmup"] if args.warmup is None else args.warmup
    if args.batch_size is not None:
        batch_size = args.batch_size
    else:
        batch_size = gpu_batch_size(device) if device.type == "cuda" else CPU_DEFAULTS["batch_size"]
    if min(resolution, steps, batch_size) < 1 or warmup < 0:
        raise SystemExit(
            "error: --resolution, --steps and --batch-size must be at least 1, --warmup at least 0."
        )
    if device.type == "cuda":
        # As train.py runs: Composer's DeviceGPU allows TF32 in matmuls and convolutions (allow_tf32=True) and
        # leaves cuDNN's autotuner at PyTorch's default, off.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    requested = [MODES_BY_NAME[name] for name in args.modes] if args.modes else ALL_MODES
    baseline = MODES_BY_NAME["fp32"]  # measured first: every ratio is taken against it
    modes = [baseline, *dict.fromkeys(mode for mode in requested if mode != baseline)]
    print(
        f"ResNet-50 training, {resolution} px, batch {batch_size}, {warmup} warm-up + {steps} timed steps on "
        f"{device_label(device)}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for mode in modes:
        reason = skip_reason(mode, device)
        if reason is None:
            try:
                results[mode.name] = measure(mode, device, batch_size, resolution, steps, warmup)
            except torch.OutOfMemoryError:
                reason = f"out of memory at batch {batch_size}; try --batch-size {batch_size // 2}"
            except Exception as error:
                if not mode.compile:
                    raise
                # A compiler failure should cost one row of the table, not the figures already measured.
                reason = f"torch.compile failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            release(device)
        if reason is not None:
            skipped[mode.name] = reason
            print(f"  skipped {mode.name}: {reason}", flush=True)
        else:
            print(f"  {mode.name}: {results[mode.name]['images_per_s']:.1f} images/s", flush=True)
    if "fp32" not in results:
        raise SystemExit(f"error: the fp32 baseline did not run ({skipped['fp32']}).")
    baseline = results["fp32"]["images_per_s"]
    for result in results.values():
        result["ratio_to_fp32"] = round(result["images_per_s"] / baseline, 3)
    return {
        **machine(device),
        "model": "torchvision resnet50",
        "num_classes": NUM_CLASSES,
        "optimizer": "SGD momentum 0.9",
        "data": "one synthetic batch on the device",
        "batch_size": batch_size,
        "resolution": resolution,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "baseline": "fp32",
        "modes": results,
        "skipped": skipped,
    }


def gpu_batch_size(device: torch.device) -> int:
    """256 (NVIDIA's reference batch for ResNet-50) where it fits in fp32, else 128 (a 16 GB T4)."""
    return 256 if torch.cuda.get_device_properties(device).total_memory >= 32 * 2**30 else 128


def device_label(device: torch.device) -> str:
    """The GPU's name, or the CPU and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"the CPU ({os.cpu_count()} cores; a tiny version: use a GPU for real figures)"


def format_table(report: dict[str, Any]) -> str:
    """One line per mode: images/s, ratio to fp32, step time, peak memory; then the skipped modes."""
    lines = [f"{'mode':<32}{'images/s':>10}{'x fp32':>8}{'step ms':>9}{'peak GiB':>10}"]
    for name, result in report["modes"].items():
        peak = "n/a" if result["peak_memory_gib"] is None else f"{result['peak_memory_gib']:.2f}"
        lines.append(
            f"{name:<32}{result['images_per_s']:>10.1f}{result['ratio_to_fp32']:>8.2f}"
            f"{result['step_ms']:>9.1f}{peak:>10}"
        )
    lines += [f"{name:<32}skipped: {reason}" for name, reason in report["skipped"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line: output file, device, and the sizes and modes to measure."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument(
        "--batch-size", type=int, help="default: 256 on GPUs with 32 GB or more, else 128; CPU 2"
    )
    parser.add_argument("--resolution", type=int, help="image side in pixels (default: 224; CPU 32)")
    parser.add_argument("--steps", type=int, help="timed steps per mode (default: 30; CPU 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps per mode first (default: 10; CPU 1)")
    parser.add_argument(
        "--modes", nargs="+", choices=list(MODES_BY_NAME), help="default: all; fp32 always runs"
    )
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN autotune convolutions (train.py does not)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: measure, print the table, write the JSON."""
    args = parse_args(argv)
    report = run(args)
    print(format_table(report))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
