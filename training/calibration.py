"""A finished run's measured training throughput, for planning the same recipe on the same hardware with it in
place of the published figures (``train.py RECIPE --plan --calibrate-from runs/NAME``, or found by run_name).

The figure is the one ``summary.json`` reports: images over Composer's training clock, which counts data loading,
algorithms and every step's overhead, and leaves out evaluation. It is an average over the measured run's own
resolution schedule; progressive resizing follows a fraction of the run, so a short run of the same recipe passes
through the same sizes. A short run's first steps (cuDNN autotuning, workers starting) weigh more in it, so its
figure errs slow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recipes.errors import UsageError
from recipes.loading import SAVED_RECIPE
from training.checkpointing import run_folders
from training.hardware import Hardware, parse_hardware
from training.summary import SUMMARY_FILENAME

# Recipe keys whose value changes training throughput: a measured run must share them with the planned one.
THROUGHPUT_KEYS = ("model.name", "precision", "global_batch_size", "data.source", "data.train_resolution")


@dataclass(frozen=True)
class MeasuredThroughput:
    """Training images per second a finished run measured, and where the figure comes from."""

    images_per_second: float
    summary_path: str
    # How the summary was chosen: "--calibrate-from" or "found in the save folder of run_name=NAME".
    chosen: str
    # The arithmetic, in words: "12,800 images in 15.8 s of training on Tesla T4".
    measured: str

    def describe(self) -> str:
        return f"measured by {self.summary_path} ({self.chosen}): {self.measured}"


def measured_throughput(
    folder: str | Path, config: DictConfig, recipe_path: str | Path, hardware: Hardware, *, chosen: str
) -> MeasuredThroughput:
    """The throughput ``folder``'s summary.json measured; a UsageError naming the file when there is none, it
    measured nothing, or its run is of another recipe, hardware or throughput key than ``config``'s."""
    folder = Path(folder)
    path = folder / SUMMARY_FILENAME
    fix = "give a finished run of this recipe on this hardware, or plan without --calibrate-from"
    if not folder.is_dir():
        raise UsageError(f"--calibrate-from {folder}: no such run folder; {fix}.")
    if not path.is_file():
        raise UsageError(
            f"{path} does not exist: train.py writes it when a run finishes, so {folder} is not a finished run; "
            f"{fix}."
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"{path} is not a readable summary.json ({error}); {fix}.") from None
    if not isinstance(summary, dict):
        raise UsageError(f"{path} is not a run summary (no JSON object); {fix}.")
    saved = folder / SAVED_RECIPE
    run_recipe = OmegaConf.load(saved) if saved.is_file() else None
    differences = _differences(summary, run_recipe, config, recipe_path, hardware)
    if differences:
        raise UsageError(
            f"{path} measured another setup than this plan's: {'; '.join(differences)}. Its throughput does not "
            f"carry over; {fix}."
        )
    rate, measured = _images_per_second(summary, run_recipe)
    if rate is None:
        raise UsageError(
            f"{path} has no measured throughput (no 'throughput/samples_per_sec', nor 'train_time_s' with "
            f"'samples_seen' or 'steps'); {fix}."
        )
    accelerator = summary.get("accelerator") or summary.get("device")
    return MeasuredThroughput(
        rate, str(path), chosen, measured + (f" on {accelerator}" if accelerator else "")
    )


def find_measured_throughput(
    config: DictConfig, recipe_path: str | Path, hardware: Hardware
) -> tuple[MeasuredThroughput | None, str | None]:
    """A finished run's throughput from the save folder of the recipe's ``run_name``, when it has one that
    matches; else None and, when a summary was there but does not match, why it is not used."""
    if not config.run_name:
        return None, None
    folder = run_folders(str(config.save_folder), str(config.run_name)).output
    if not (folder / SUMMARY_FILENAME).is_file():
        return None, None
    try:
        chosen = f"found in the save folder of run_name={config.run_name}"
        return measured_throughput(folder, config, recipe_path, hardware, chosen=chosen), None
    except UsageError as error:
        return None, f"not calibrated from {folder / SUMMARY_FILENAME}: {error}"


def _differences(
    summary: dict[str, Any],
    run_recipe: Any,
    config: DictConfig,
    recipe_path: str | Path,
    hardware: Hardware,
) -> list[str]:
    """What differs between the measured run and the planned one, each as 'key: run's value, not plan's'."""
    found = []
    run_recipe_name = Path(str(summary.get("recipe", ""))).name
    if run_recipe_name and run_recipe_name != Path(recipe_path).name:
        found.append(f"recipe {run_recipe_name}, not {Path(recipe_path).name}")
    device, world_size = summary.get("device"), summary.get("world_size")
    if device is not None and device != hardware.device:
        found.append(f"it ran on {device}, the plan's hardware '{hardware.text}' is {hardware.device}")
    if world_size is not None and world_size != hardware.world_size:
        found.append(f"{world_size} process(es), not {hardware.world_size}")
    accelerator = str(summary.get("accelerator") or "")
    if (
        accelerator
        and device == "gpu"
        and hardware.gpu
        and hardware.gpu.name.lower() not in accelerator.lower()
    ):
        found.append(f"GPU {accelerator}, not {hardware.gpu.name}")
    if run_recipe is None:
        return found
    run_hardware = parse_hardware(str(run_recipe.get("hardware", "")))
    if run_hardware is not None and (run_hardware.gpu, run_hardware.gpu_count, run_hardware.vcpus) != (
        hardware.gpu,
        hardware.gpu_count,
        hardware.vcpus,
    ):
        found.append(f"hardware '{run_hardware.text}', not '{hardware.text}'")
    for key in THROUGHPUT_KEYS:
        theirs, ours = OmegaConf.select(run_recipe, key), OmegaConf.select(config, key)
        if theirs is not None and str(theirs) != str(ours):
            found.append(f"{key}={theirs}, not {ours}")
    return found


def _number(value: Any) -> float | None:
    """A finite positive number from summary.json (which stores a non-finite one as a string), else None."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) and value > 0 else None


def _images_per_second(summary: dict[str, Any], run_recipe: Any) -> tuple[float | None, str]:
    """Training images per second: the summary's own figure, else images over ``train_time_s``."""
    seconds = _number(summary.get("train_time_s"))
    images = _number(summary.get("samples_seen"))
    steps = _number(summary.get("steps"))
    batch = _number(OmegaConf.select(run_recipe, "global_batch_size")) if run_recipe is not None else None
    if images is None and steps is not None and batch is not None:
        images = steps * batch
    rate = _number(summary.get("throughput/samples_per_sec"))
    if rate is None and images is not None and seconds is not None:
        rate = images / seconds
    if rate is None:
        return None, ""
    if images is not None and seconds is not None:
        return rate, f"{images:,.0f} images in {seconds:,.1f} s of training, {rate:,.1f} img/s"
    return rate, f"{rate:,.1f} img/s"
