"""Benchmark the CPU smoke recipe: wall time against its 4-minute target, and accuracy against ImageNet defaults.

    python bench/smoke_recipe.py [--output FILE] [--no-baseline]

Runs ``train.py recipes/smoke.yaml`` in a fresh process and times it end to end (start-up, data, training, the
final evaluation). The baseline, run in the same invocation, is the same recipe with ImageNet-style small-data
choices put back (crop scale 0.08-1, horizontal flip, batch 64, no zero-init residual BN): it shows what the
engineered recipe buys. Prints a table and the ratios; writes JSON with ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 240.0
IMAGENET_STYLE = [
    "data.crop_scale=[0.08,1.0]",
    "data.horizontal_flip=true",
    "global_batch_size=64",
    "model.zero_init_residual=false",
]


def run_recipe(folder: Path, overrides: list[str]) -> dict:
    """Train the smoke recipe in a fresh process; return its summary with the measured wall time."""
    command = [
        sys.executable, "train.py", "recipes/smoke.yaml", f"save_folder={folder}", "run_name=bench",
        f"data.cache_dir={folder.parent / 'cache'}", "logging.progress_bar=false", *overrides,
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, cwd=REPOSITORY, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    summary = json.loads((folder / "summary.json").read_text())
    return {"wall_s": round(seconds, 1), "val_acc1": summary["val/acc1"], "val_acc5": summary["val/acc5"],
            "train_img_s": summary["throughput/samples_per_sec"]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--no-baseline", action="store_true", help="skip the ImageNet-defaults baseline run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        # The first run also writes the digits JPEG cache (about 1 s); the baseline reuses it.
        results = {"smoke": run_recipe(Path(scratch) / "smoke", [])}
        if not args.no_baseline:
            results["imagenet_defaults"] = run_recipe(Path(scratch) / "baseline", IMAGENET_STYLE)

    smoke = results["smoke"]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        **results,
        "target_wall_s": TARGET_SECONDS,
        "wall_over_target": round(smoke["wall_s"] / TARGET_SECONDS, 3),
    }
    print(f"{'run':<20}{'wall s':>10}{'val top-1':>12}{'train img/s':>14}")
    for name, result in results.items():
        print(f"{name:<20}{result['wall_s']:>10.1f}{result['val_acc1']:>12.4f}{result['train_img_s']:>14.1f}")
    print(f"smoke wall time / {TARGET_SECONDS:.0f} s target = {report['wall_over_target']:.2f}")
    if "imagenet_defaults" in results:
        baseline = results["imagenet_defaults"]
        report["acc1_over_imagenet_defaults"] = round(smoke["val_acc1"] / max(baseline["val_acc1"], 1e-9), 2)
        print(f"smoke top-1 / ImageNet-defaults top-1 = {report['acc1_over_imagenet_defaults']:.2f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
