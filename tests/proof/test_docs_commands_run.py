"""The README's and docs/' CPU commands run as a reader pastes them, in the order the pages show them: the README
first, then each page of docs/ by name, all in one folder, so a command that needs an earlier one's run (an
evaluate.py after its train.py, the linear probe after MoCo) finds it where the page says. Training commands get
a tiny duration appended (``TINY``); everything else runs as written. The commands that need a GPU, ImageNet or
AWS are resolved in tests/test_docs_commands.py."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from data.digits import ensure_digits_folder
from tests.docs_commands import (
    ANGLE_PLACEHOLDER,
    ROOT,
    Check,
    DocCommand,
    doc_commands,
    gpu_run_names,
    substitute,
)
from tests.script_modules import load_script

pytestmark = pytest.mark.proof

# Appended to every training command: two steps on a few images, so each command's work is shown, not its length.
TINY = ["max_duration=2ba", "data.subset_size=64", "data.val_subset_size=32"]
TINY_RANGE_TEST = ["--iterations", "20"]  # the shortest sweep the range test takes
# A run that a later command names as its curve watch's reference: the band is derived from the reference's noise
# between evaluations, which needs three of them (callbacks/reference_curves.py).
TINY_REFERENCE = ["max_duration=3ba", "eval_interval=1ba", "data.subset_size=96", "data.val_subset_size=32"]
DIGITS_VAL_FRACTION = 0.2  # the smoke recipe's data.digits_val_fraction


def make_train_commands() -> list[DocCommand]:
    """What ``make train`` runs, read from the Makefile (``make -n``): its train.py and evaluate.py lines."""
    listing = subprocess.run(
        ["make", "-n", "--no-print-directory", "train"], cwd=ROOT, capture_output=True, text=True
    )
    lines = [line for line in listing.stdout.splitlines() if " train.py " in line or " evaluate.py " in line]
    assert len(lines) == 2, f"make -n train printed no train.py and evaluate.py lines:\n{listing.stdout}"
    return [DocCommand("Makefile", line, tuple(line.split())) for line in lines]


def checkpoint_argument(words: list[str], folder: Path) -> list[str]:
    """An evaluate.py command's ``--checkpoint`` with ``<placeholder>`` parts matched against the runs made here
    (``runs/<probe run>/...``: the newest run folder whose name holds ``probe``), and a checkpoint named for a
    step of the full-length run (``ep10-ba220-rank0.pt``) taken as the tiny run's last one."""
    index = words.index("--checkpoint") + 1
    path = words[index]
    if ANGLE_PLACEHOLDER.search(path):
        parent, _, rest = path.partition("<")
        key, _, tail = rest.partition(">")
        matches = sorted(
            (folder / parent).glob(f"*{key.split('_')[0]}*"), key=lambda found: found.stat().st_mtime
        )
        assert matches, f"no run in {folder / parent} for the placeholder <{key}>"
        path = str(matches[-1].relative_to(folder)) + tail
    if not (folder / path).exists() and Path(path).name.startswith("ep"):
        steps = sorted((folder / path).parent.glob("ep*-rank0.pt"), key=lambda found: found.stat().st_mtime)
        path = str(steps[-1].relative_to(folder)) if steps else path
    return [*words[:index], path, *words[index + 1 :]]


def watch_references(commands: list[DocCommand]) -> set[str]:
    """The run names the docs' commands give as ``watch.reference=runs/NAME`` (several seeds: each)."""
    names = set()
    for command in commands:
        for override in command.overrides:
            key, _, value = override.partition("=")
            if key == "watch.reference":
                names |= {Path(part.strip()).name for part in value.split(",") if part.strip()}
    return names


def run_command(
    command: DocCommand, folder: Path, cache: Path, more: dict[str, str], references: set[str] | None = None
) -> str:
    """Run one command in-process (its entry point's ``main``), in ``folder``; returns what ran. A failing
    command fails the test with the page and the command. A training run named in ``references`` is made long
    enough to be a curve watch's reference (``TINY_REFERENCE``)."""
    import evaluate
    import train

    words = [substitute(word, more) for word in command.arguments]
    program, arguments = words[0], words[1:]
    if program == "train.py":
        extra = TINY_RANGE_TEST if "--find-lr" in arguments and "--iterations" not in arguments else []
        named = {word.partition("=")[2] for word in arguments if word.startswith("run_name=")}
        tiny = TINY_REFERENCE if named & (references or set()) else TINY
        status = train.main([*arguments, *tiny, f"data.cache_dir={cache}", *extra])
    elif program == "evaluate.py":
        arguments = checkpoint_argument(arguments, folder)
        checkpoint = Path(arguments[arguments.index("--checkpoint") + 1])
        if not (folder / checkpoint).exists() and checkpoint.parent.name in gpu_run_names():
            evaluate.parse_args(arguments)  # a GPU run's checkpoint: resolved, as in the mechanism tier
            return f"{command.text} (a GPU run's checkpoint: flags parsed)"
        status = evaluate.main(arguments)
    elif program.startswith("scripts/"):
        status = load_script(Path(program).stem).main(arguments)
    elif program == "tools.ablate":
        status = importlib.import_module("tools.ablate").main(arguments)
    else:
        raise ValueError(f"{command.page}: no way to run `{command.text}`")
    assert status == 0, f"{command.page}: `{command.text}` exited with status {status}"
    return " ".join(words)


def test_cpu_commands_run_in_the_order_the_docs_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits_cache: Path, record_property: Any
) -> None:
    (tmp_path / "recipes").symlink_to(
        ROOT / "recipes"
    )  # `train.py recipes/smoke.yaml` as from the repository
    monkeypatch.chdir(tmp_path)
    images = ensure_digits_folder(digits_cache, DIGITS_VAL_FRACTION, 17)
    shutil.copy(next((images / "val").glob("*/*")), tmp_path / "photo.jpg")  # the image export.md predicts
    more = {"DIR": str(images), "OUT": str(tmp_path / "out")}
    started, ran = time.perf_counter(), []
    commands = doc_commands()
    references = watch_references(commands)
    for command in commands:
        if command.check is not Check.RUN:
            continue
        for step in make_train_commands() if command.words[:2] == ("make", "train") else [command]:
            ran.append(run_command(step, tmp_path, digits_cache, more, references))
    seconds = time.perf_counter() - started
    print("\n".join(ran))
    record_property(
        "figure",
        f"{len(ran)} CPU commands of the README and docs/ ran in order, as pasted, in {seconds:.0f} s",
    )
    assert (tmp_path / "runs" / "smoke-first" / "latest-rank0.pt").exists()
