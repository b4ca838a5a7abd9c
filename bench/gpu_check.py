"""One command that proves a GPU machine before a paid run: ``make gpu-check`` (at most ~8 minutes on one GPU).

    python bench/gpu_check.py [--output FILE] [--steps N] [--work DIR]

1. The environment: torch, CUDA, cuDNN, and a computed fp16 matmul on every GPU (``scripts/check_gpu.py``).
2. The throughput table of ``bench/gpu_throughput.py`` for the modes the paid phases use.
3. The ``g4dn_xlarge`` recipe as configured (amp_fp16, channels_last, BlurPool, EMA, label smoothing, data-side
   progressive resizing, auto microbatching, the doctor), plus the Medium set's SAM so every algorithm of the
   paid phases runs, for ``--steps`` steps (200) on generated JPEGs, nothing downloaded: SIGTERM a quarter in (the
   spot-interruption path: checkpoint at the next batch, exit status 75), then the same command again, which
   resumes from the checkpoint and finishes. Over every GPU through ``composer -n`` when there are several.
4. On 2 or more GPUs, the same recipe under FSDP (``parallelism.strategy=fsdp``) for 30 steps.
5. One table on the console, and JSON with ``--output``.

On a machine without a GPU it says so and runs a CPU-sized version (32 px, batch 8, 16 steps) of the same steps,
then exits 0, so CI keeps the command working; its figures prove the code path, not a machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from callbacks.metrics_file import last_logged_step  # noqa: E402
from data.synthetic import SyntheticImages  # noqa: E402

RECIPE = "g4dn_xlarge"
PREEMPTED_EXIT_STATUS = 75  # callbacks.preemption.PREEMPTED_EXIT_STATUS, read from the process's exit
# The paid phases' modes: the fp32 baseline, their AMP precision with and without channels-last, and compiled.
THROUGHPUT_MODES = ["amp_fp16", "amp_fp16+channels_last", "amp_fp16+channels_last+compile"]
# Generated data: learnable (a colour per class), ImageNet-like side before the recipe's crops.
GPU_DATA = {"classes": 100, "train_per_class": 30, "val_per_class": 5, "side": 256}
CPU_DATA = {"classes": 10, "train_per_class": 4, "val_per_class": 2, "side": 48}
CPU_OVERRIDES = [
    "global_batch_size=8",
    "eval_batch_size=8",
    "data.train_resolution=32",
    "data.eval_resolution=32",
    "data.num_workers=0",
]
SAM_FROM_MEDIUM = "algorithms.sam={rho: 0.5, interval: 20480sp}"
# The FSDP run over every GPU of a multi-GPU machine: long enough to pass warm-up and write a checkpoint.
FSDP_STEPS = 30


def load_script(path: Path) -> ModuleType:
    """A script of this repository (bench/, scripts/) as a module, without making those folders packages."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def environment() -> dict[str, Any]:
    """Versions, and each GPU computing a matmul (or why there is none)."""
    check_gpu = load_script(REPOSITORY / "scripts" / "check_gpu.py")
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": torch.cuda.device_count(),
        "cpu_cores": os.cpu_count(),
    }
    try:
        report["gpu_lines"] = check_gpu.check(None)
    except RuntimeError as error:
        report["gpu_lines"] = []
        report["no_gpu"] = str(error)
    return report


def throughput() -> dict[str, Any]:
    """``bench/gpu_throughput.py`` for the paid phases' modes (its tiny CPU version without a GPU)."""
    bench = load_script(REPOSITORY / "bench" / "gpu_throughput.py")
    report = bench.run(bench.parse_args(["--modes", *THROUGHPUT_MODES, "--cudnn-benchmark"]))
    report["table"] = bench.format_table(report)
    return report


def write_images(root: Path, classes: int, train_per_class: int, val_per_class: int, side: int) -> None:
    """An ImageFolder (train/ and val/) of JPEGs from the project's synthetic generator."""
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        images = SyntheticImages(seed=0, split=split, size=side, num_classes=classes)
        for index in range(classes * per_class):
            folder = root / split / f"class_{images.label(index):03d}"
            folder.mkdir(parents=True, exist_ok=True)
            images(index).save(folder / f"{index:06d}.jpg", quality=90)


def recipe_run(work: Path, steps: int, gpus: int) -> dict[str, Any]:
    """Train the recipe on generated JPEGs, SIGTERM it a quarter of the way in, relaunch it, and read the finished run.

    A quarter, not half: the signal must land while steps remain. On the CPU a step takes ~0.1 s, and a SIGTERM sent
    three steps before the end arrived after training had finished (exit 0, nothing to resume) on a loaded CI machine.
    """
    data = GPU_DATA if gpus else CPU_DATA
    images = work / "images"
    started = time.perf_counter()
    write_images(images, **data)
    generate_s = time.perf_counter() - started
    folder = work / "run"
    launcher = ["composer", "-n", str(gpus)] if gpus > 1 else []
    command = [
        *(launcher or [sys.executable]), "train.py", RECIPE, "run_name=gpu-check", "autoresume=true",
        f"save_folder={folder}", f"data.cache_dir={work / 'cache'}", "data.source=imagefolder",
        f"data.path={images}", "data.max_classes=null", "data.max_samples_per_class=null",
        f"max_duration={steps}ba", f"eval_interval={steps}ba", f"save_interval={steps}ba",
        "logging.metrics_every_n_batches=1", "logging.progress_bar=false", "logging.log_to_console=false",
        SAM_FROM_MEDIUM, *([] if gpus else CPU_OVERRIDES),
    ]  # fmt: skip
    if launcher:
        command[0] = shutil.which("composer") or str(Path(sys.executable).parent / "composer")
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    started = time.perf_counter()
    with (logs / "first.log").open("w") as log:
        process = subprocess.Popen(command, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None and last_logged_step(folder / "metrics.jsonl") < max(1, steps // 4):
            time.sleep(0.05)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        first_status = process.wait(timeout=600)
    stopped_at = last_logged_step(folder / "metrics.jsonl")
    with (logs / "second.log").open("w") as log:
        second_status = subprocess.run(
            command, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT, timeout=900
        ).returncode
    wall_s = time.perf_counter() - started
    second = (logs / "second.log").read_text()
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return {
        "recipe": RECIPE,
        "algorithms_added": [SAM_FROM_MEDIUM],
        "command": " ".join(command),
        "images": dict(data),
        "generate_images_s": round(generate_s, 1),
        "preempted_status": first_status,
        "preempted_after_step": stopped_at,
        "relaunch_status": second_status,
        "resumed": "resuming from" in second,
        "steps": summary.get("steps"),
        "wall_time_s": round(wall_s, 1),
        "throughput/samples_per_sec": summary.get("throughput/samples_per_sec"),
        "val/acc1": summary.get("val/acc1"),
        "precision": summary.get("precision"),
        "world_size": summary.get("world_size"),
        "doctor_findings": [finding["code"] for finding in summary.get("findings", [])],
        "ok": first_status == PREEMPTED_EXIT_STATUS
        and second_status == 0
        and "resuming from" in second
        and summary.get("steps") == steps,
        "log_tail": second[-2000:] if second_status else "",
    }


def fsdp_run(work: Path, gpus: int) -> dict[str, Any]:
    """The recipe under FSDP over every GPU (``parallelism.strategy=fsdp``; the recipe has no SAM, which Composer
    refuses under FSDP in fp16) for ``FSDP_STEPS`` steps on the images ``recipe_run`` generated."""
    if gpus < 2:
        return {"skipped": f"FSDP runs on 2 or more GPUs (this machine: {gpus})", "ok": True}
    folder = work / "fsdp-run"
    command = [
        shutil.which("composer") or str(Path(sys.executable).parent / "composer"), "-n", str(gpus), "train.py",
        RECIPE, "run_name=gpu-check-fsdp", f"save_folder={folder}", f"data.cache_dir={work / 'cache'}",
        "data.source=imagefolder", f"data.path={work / 'images'}", "data.max_classes=null",
        "data.max_samples_per_class=null", f"max_duration={FSDP_STEPS}ba", f"eval_interval={FSDP_STEPS}ba",
        f"save_interval={FSDP_STEPS}ba", "logging.progress_bar=false", "parallelism.strategy=fsdp",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=900)
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return {
        "command": " ".join(command),
        "status": done.returncode,
        "steps": summary.get("steps"),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "throughput/samples_per_sec": summary.get("throughput/samples_per_sec"),
        "val/acc1": summary.get("val/acc1"),
        "ok": done.returncode == 0 and summary.get("steps") == FSDP_STEPS,
        "log_tail": (done.stdout + done.stderr)[-2000:] if done.returncode else "",
    }


def format_report(report: dict[str, Any]) -> str:
    """The one table a person reads: environment, throughput, and the recipe run."""
    env, run = report["environment"], report["recipe_run"]
    lines = [f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, {env['gpus']} GPU(s)"]
    lines += env["gpu_lines"] or [f"no GPU: {env.get('no_gpu')}"]
    lines += ["", report["throughput"]["table"], ""]
    rows = [
        ("recipe", f"{run['recipe']} + {', '.join(run['algorithms_added'])}"),
        ("precision, world size", f"{run['precision']}, {run['world_size']}"),
        ("preempted (SIGTERM)", f"exit {run['preempted_status']} after step {run['preempted_after_step']}"),
        ("relaunched", f"exit {run['relaunch_status']}, resumed: {run['resumed']}, steps {run['steps']}"),
        ("wall time", f"{run['wall_time_s']} s (images generated in {run['generate_images_s']} s)"),
        ("throughput", f"{run['throughput/samples_per_sec']} images/s (training, both launches' clock)"),
        ("val/acc1", f"{run['val/acc1']}"),
        ("doctor findings", ", ".join(run["doctor_findings"]) or "none"),
        ("result", "OK" if run["ok"] else "FAILED (see recipe_run.log_tail in the JSON)"),
    ]
    fsdp = report["fsdp_run"]
    if "skipped" in fsdp:
        rows.append(("FSDP", f"skipped: {fsdp['skipped']}"))
    else:
        outcome = "OK" if fsdp["ok"] else "FAILED (see fsdp_run.log_tail in the JSON)"
        rows.append(("FSDP", f"exit {fsdp['status']}, {fsdp['steps']} steps, "
                             f"{fsdp['throughput/samples_per_sec']} images/s: {outcome}"))  # fmt: skip
    lines += [f"{name:<24}{value}" for name, value in rows]
    if not env["gpus"]:
        lines += ["", "gpu-check needs a GPU for real figures: this was the CPU-sized version of every step."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", help="write the report as JSON here")
    parser.add_argument("--steps", type=int, help="training steps of the recipe run (default: 200; CPU 16)")
    parser.add_argument(
        "--work", type=Path, help="folder for the generated images and the run (default: temp)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every step, print the table, write the JSON; exit 1 when a step failed."""
    args = parse_args(argv)
    gpus = torch.cuda.device_count()
    steps = args.steps or (200 if gpus else 16)
    if not gpus:
        print("gpu-check: no GPU visible; running the CPU-sized version of each step", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        report = {"environment": environment(), "throughput": throughput()}
        report["recipe_run"] = recipe_run(work, steps, gpus)
        report["fsdp_run"] = fsdp_run(work, gpus)
    print(format_report(report))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["recipe_run"]["ok"] and report["fsdp_run"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
