"""Run an ablation study: every variant of a base recipe trained once per seed, compared with the base honestly.

    python -m tools.ablate STUDY.yaml [key=value ...] [--plan] [--jobs N] [--python PYTHON]

``key=value`` overrides (a data path, say) apply to every run of the study, as its own ``overrides`` do.

Each (variant, seed) is an ordinary ``train.py`` run in its own process and folder (``runs/<variant>/seed<S>`` under
the study's output), with the same checkpoints, metrics, summary and training doctor as any run, and its console
in ``train.log`` there. Before anything trains, every variant's recipe is loaded and validated, so a typo in the
last variant fails in a second, naming the variant and the key.

Runs go one after another, or one per GPU when several are visible (``--jobs``). A run that fails, or that the
doctor stops, becomes a row marked failed with its log, and the study goes on; relaunching the same command skips
the finished runs, retries the failed ones (their folder kept as ``seed<S>.failed-<k>``) and autoresumes an
interrupted one from its last checkpoint. A SIGTERM or Ctrl-C (a spot interruption, ``run_until_done.sh``) is
passed to the running trainings, which save and stop; the study then writes what it has and exits 75.

The results (``tools.ablation_results``): ``results.md``, ``results.csv``, ``results.json`` and two PNG plots in the
study's output folder, rewritten after every run. ``--plan`` prints each variant's steps, time and cost from the
planner and the study's total, and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from omegaconf import DictConfig, OmegaConf

from algorithms.registry import enabled_algorithms
from callbacks.preemption import PREEMPTED_EXIT_STATUS
from callbacks.training_doctor import DOCTOR_STOPPED_EXIT_STATUS
from recipes.errors import UsageError, user_message
from recipes.loading import resolve_recipe_path
from recipes.studies import Study, Variant, load_study
from tools.ablation_results import (
    DONE,
    FAILED,
    INTERRUPTED,
    STATUS_FILE,
    read_status,
    run_folder,
    write_results,
)
from tools.planning import plan_run
from training.preflight import load_run_recipe

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = ROOT / "train.py"
LOG_FILE = "train.log"
# Lines of a failed run's log kept as the reason in its row.
REASON_LINES = 3


def run_overrides(study: Study, variant: Variant, seed: int) -> list[str]:
    """The overrides of one run: the variant's, then the study's own (seed, name, folder, autoresume, the wandb
    group that gathers the study's runs)."""
    folder = run_folder(study, variant.name, seed)
    return [
        *variant.overrides,
        f"seed={seed}",
        f"run_name={study.name}-{variant.name}-seed{seed}",
        f"save_folder={folder}",
        "autoresume=true",
        f"logging.wandb_group={study.name}",
        "logging.progress_bar=false",
    ]


def check_study(study: Study) -> dict[str, DictConfig]:
    """Load every variant's recipe as its runs will (validated by the schema and the registries): an unknown key or
    a bad value fails here, naming the variant; so does a variant whose recipe is the base's (it would compare the
    base with itself: an algorithm removed that the base never had, say). Returns each variant's recipe by name."""
    resolve_recipe_path(study.recipe)
    configs, resolved = {}, {}
    for variant in study.variants:
        try:
            config = load_run_recipe(study.recipe, run_overrides(study, variant, study.seeds[0]))
        except UsageError as error:
            raise UsageError(
                f"Study {study.path}, variant '{variant.name}': {user_message(error)}"
            ) from error
        configs[variant.name] = config
        plain = OmegaConf.to_container(config, resolve=True)
        for key in ("run_name", "save_folder", "seed"):
            plain.pop(key)
        # An algorithm set to null is the same recipe as one never named.
        plain["algorithms"] = enabled_algorithms(config.algorithms)
        resolved[variant.name] = plain
    base = resolved[study.variants[0].name]
    for variant in study.variants[1:]:
        if resolved[variant.name] == base:
            raise UsageError(
                f"Study {study.path}, variant '{variant.name}' trains the same recipe as the base "
                f"({' '.join(variant.overrides) or 'no overrides'}); the base may not use what it removes. "
                "Change or drop the variant."
            )
    return configs


def plan_study(study: Study, configs: dict[str, DictConfig]) -> str:
    """Every variant's planned steps, time and cost (the planner's figures for one run of ``configs``, the
    recipes ``check_study`` loaded) times the seeds."""
    lines = [f"Plan for study {study.name}: {len(study.variants)} variants x {len(study.seeds)} seeds"]
    total_hours, total_cost, steps = 0.0, 0.0, 0
    priced = True
    for variant in study.variants:
        plan = plan_run(configs[variant.name], resolve_recipe_path(study.recipe))
        hours = plan.time.total_hours * len(study.seeds)
        cost = plan.time.cost_usd
        priced = priced and cost is not None
        total_hours += hours
        total_cost += (cost or 0.0) * len(study.seeds)
        steps += plan.total_steps * len(study.seeds)
        cost_text = "" if cost is None else f", ${cost * len(study.seeds):,.2f}"
        errors = "".join(f"\n      {finding.line()}" for finding in plan.errors)
        lines.append(
            f"  {variant.name:<24} {plan.total_steps:,} steps x {len(study.seeds)} seeds, "
            f"{plan.time.total_hours * 60:,.1f} min each, {hours:,.2f} h{cost_text}{errors}"
        )
    cost_line = f", ${total_cost:,.2f}" if priced else " (no price for this hardware)"
    lines.append(f"  total: {steps:,} steps, {total_hours:,.2f} h one run at a time{cost_line}")
    return "\n".join(lines)


def write_status(folder: Path, **record: object) -> None:
    """The run's status record beside its outputs (the reader is ``tools.ablation_results.read_status``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATUS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def failure_reason(folder: Path, exit_code: int) -> str:
    """Why a run failed, in a line: the doctor's stop, or the last lines of its log."""
    if exit_code == DOCTOR_STOPPED_EXIT_STATUS:
        prefix = "stopped by the training doctor"
    else:
        prefix = f"exit status {exit_code}"
    log = folder / LOG_FILE
    lines = (
        [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if log.is_file()
        else []
    )
    tail = " / ".join(lines[-REASON_LINES:]).replace("|", "/")
    return f"{prefix}: {tail}" if tail else prefix


def set_aside(folder: Path) -> Path:
    """Move a failed run's folder out of the way (kept, not deleted) so a retry starts fresh."""
    attempt = 1
    while (target := folder.with_name(f"{folder.name}.failed-{attempt}")).exists():
        attempt += 1
    shutil.move(str(folder), str(target))
    return target


@dataclass
class Running:
    """A training process of the study, and the GPU it was given."""

    variant: Variant
    seed: int
    process: subprocess.Popen
    log: object
    gpu: int | None
    attempts: int


class StudyRunner:
    """Starts the study's runs ``jobs`` at a time and records how each ended."""

    def __init__(self, study: Study, jobs: int, gpus: int, python: str) -> None:
        self.study = study
        self.jobs = max(1, jobs)
        self.gpus = gpus
        self.python = python
        self.stopping = False
        self.running: list[Running] = []

    def pending(self) -> list[tuple[Variant, int, int]]:
        """Runs still to do, with their attempt number: not finished; a failed one's folder set aside first."""
        todo = []
        for variant in self.study.variants:
            for seed in self.study.seeds:
                folder = run_folder(self.study, variant.name, seed)
                status = read_status(folder)
                if status.get("status") == DONE and (folder / "summary.json").is_file():
                    continue
                attempts = int(status.get("attempts", 0))
                if status.get("status") == FAILED:
                    set_aside(folder)
                todo.append((variant, seed, attempts + 1))
        return todo

    def stop(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM or Ctrl-C: pass a SIGTERM to every training (each saves a checkpoint and exits 75), start no more."""
        if not self.stopping:
            print(f"ablate: signal {signum}: stopping the running trainings (they save and exit)", flush=True)
        self.stopping = True
        for run in self.running:
            if run.process.poll() is None:
                run.process.send_signal(signal.SIGTERM)

    def start(self, variant: Variant, seed: int, attempts: int) -> Running:
        """Launch one run's train.py in its own session (so a terminal's Ctrl-C reaches it once, through us)."""
        folder = run_folder(self.study, variant.name, seed)
        folder.mkdir(parents=True, exist_ok=True)
        busy = {run.gpu for run in self.running}
        gpu = next((index for index in range(self.gpus) if index not in busy), None)
        environment = dict(os.environ)
        if gpu is not None:
            environment["CUDA_VISIBLE_DEVICES"] = str(gpu)
        command = [
            self.python,
            str(TRAIN_SCRIPT),
            str(self.study.recipe),
            *run_overrides(self.study, variant, seed),
        ]
        log = (folder / LOG_FILE).open("a", encoding="utf-8")
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        write_status(folder, status="running", attempts=attempts, command=command)
        print(f"ablate: {variant.name} seed {seed} (attempt {attempts}) -> {folder / LOG_FILE}", flush=True)
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
            cwd=os.getcwd(),
        )
        return Running(variant, seed, process, log, gpu, attempts)

    def finish(self, run: Running) -> None:
        """Record how a run ended: done, failed (the reason and log) or interrupted (resumable)."""
        run.log.close()
        code = run.process.returncode
        folder = run_folder(self.study, run.variant.name, run.seed)
        if code == 0 and (folder / "summary.json").is_file():
            state, reason = DONE, ""
        elif code == PREEMPTED_EXIT_STATUS or (self.stopping and code in (-signal.SIGTERM, 143)):
            state, reason = INTERRUPTED, "stopped by a signal; relaunch the study to resume it"
            self.stopping = True
        else:
            state, reason = FAILED, failure_reason(folder, code)
        write_status(
            folder,
            status=state,
            exit_code=code,
            reason=reason,
            attempts=run.attempts,
            log=str(folder / LOG_FILE),
        )
        print(
            f"ablate: {run.variant.name} seed {run.seed}: {state}{f' ({reason})' if reason else ''}",
            flush=True,
        )
        write_results(self.study)

    def run(self) -> int:
        """Run everything pending; 75 if stopped by a signal (relaunch to continue), 1 if any run failed, else 0."""
        queue = self.pending()
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while queue or self.running:
                while queue and not self.stopping and len(self.running) < self.jobs:
                    self.running.append(self.start(*queue.pop(0)))
                time.sleep(0.2)
                for run in [run for run in self.running if run.process.poll() is not None]:
                    self.running.remove(run)
                    self.finish(run)
                    if self.stopping:
                        self.stop(signal.SIGTERM, None)
                if self.stopping and not self.running:
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        paths = write_results(self.study)
        print(f"ablate: results in {paths['markdown']}", flush=True)
        if self.stopping:
            print("ablate: stopped; relaunch the same command to resume", flush=True)
            return PREEMPTED_EXIT_STATUS
        failed = [
            (variant.name, seed)
            for variant in self.study.variants
            for seed in self.study.seeds
            if read_status(run_folder(self.study, variant.name, seed)).get("status") == FAILED
        ]
        return 1 if failed else 0


def visible_gpus() -> int:
    """GPUs this process can see (0 on a CPU machine)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", help="the study file (YAML)")
    parser.add_argument(
        "overrides", nargs="*", help="recipe overrides for every run, e.g. data.path=/data/tiny"
    )
    parser.add_argument(
        "--plan", action="store_true", help="print steps, time and cost per variant; run nothing"
    )
    parser.add_argument(
        "--jobs", type=int, help="runs at a time (default: one per visible GPU, or 1 on a CPU machine)"
    )
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs train.py")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when every run finished, 1 when some failed (rows marked, logs named), 2 on a bad study,
    75 when stopped by a signal (relaunch the same command to resume)."""
    args = parse_args(argv)
    try:
        study = load_study(args.study, args.overrides)
        configs = check_study(study)
        if args.plan:
            print(plan_study(study, configs))
            return 0
        gpus = visible_gpus()
        jobs = args.jobs if args.jobs is not None else max(1, gpus)
        return StudyRunner(study, jobs, gpus, args.python).run()
    except UsageError as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
