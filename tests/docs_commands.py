"""The shell commands the README and docs/ show, in the order a reader meets them, each with how it is checked.

A reader pastes them as written, so each must work: the CPU ones run (tests/proof/test_docs_commands_run.py, with
a tiny duration appended), and those that need a GPU, ImageNet, AWS or a long time are resolved instead: the
recipe and overrides of a ``train.py`` command load as the run would load them, a shell script runs with
``--dry-run``, an ``evaluate.py`` command's flags parse (tests/test_docs_commands.py). A command no rule here
knows fails the tests, so a new kind of command in the docs cannot go unchecked.
"""

from __future__ import annotations

import enum
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Recipes that train on the CPU on the bundled digits: their commands run.
CPU_RECIPES = {None, "smoke", "recipes/smoke.yaml", "moco_v3_smoke", "linear_probe_smoke"}
# What each placeholder the docs use stands for when a command runs or resolves here.
PLACEHOLDERS = {"BUCKET": "docs-check-bucket", "REGION": "us-east-1", "RUN_NAME": "smoke-default"}
# Commands that only make sense on the machine they describe (a download, a clone, a shell loop on EC2, a signal
# to a background job), or that are the test suite itself. Each is named, so the list cannot grow silently.
NOT_RUN = {
    "git": "clones this repository",
    "cd": "enters that clone",
    "wget": "downloads a data set",
    "unzip": "unpacks that download",
    "export": "sets credentials",
    "sleep": "part of the preemption demo: the signal is what tests/test_callbacks_preemption.py checks",
    "kill": "part of the preemption demo",
    "wait": "part of the preemption demo",
    "echo": "part of the preemption demo",
    "while": "the EC2 spot-notice loop: scripts/run_until_done.sh --watch-spot is the tested form of it",
}
# `make test` is the suite these tests are part of, and CI runs it on a fresh clone; `make train` runs what the
# Makefile's train target runs (``make -n train``).
MAKE_TEST = ("make", "test")


class Check(enum.Enum):
    """How a command is checked."""

    RUN = "run"  # run as written, a tiny duration appended to a training command
    RESOLVE = "resolve"  # recipe and overrides loaded, flags parsed, or a shell script's --dry-run
    COLLECT = "collect"  # a pytest command: the files and tests it names exist
    NOT_RUN = "not run"  # NOT_RUN says why


@dataclass(frozen=True)
class DocCommand:
    """One simple command from a page, as a reader would paste it."""

    page: str
    text: str
    words: tuple[str, ...]

    @property
    def program(self) -> str:
        """The command without its interpreter or launcher: ``train.py``, ``tools.ablate``, ``scripts/x.sh``."""
        return self.arguments[0] if self.arguments else ""

    @property
    def arguments(self) -> tuple[str, ...]:
        """The words after the interpreter or launcher (``python``, ``python -m``, ``composer -n 4``)."""
        words = list(self.words)
        if words and words[0].endswith("composer"):
            words = words[1:]
            while words and words[0].startswith("-"):  # composer -n 4 --stdout F ...: flags and their values
                words = words[2:] if words[0] in LAUNCHER_FLAGS_WITH_VALUES else words[1:]
            return tuple(words)
        if words and re.fullmatch(r"(\.venv/bin/)?python3?", words[0]):
            words = words[2:] if words[1:2] == ["-m"] else words[1:]
        return tuple(words)

    @property
    def recipe(self) -> str | None:
        """The recipe a ``train.py`` or ``convert_to_mds.py`` command names (None: the default, smoke)."""
        positional = [word for word in self.arguments[1:] if not word.startswith("-") and "=" not in word]
        return positional[0] if positional else None

    @property
    def overrides(self) -> list[str]:
        """Its ``key=value`` overrides."""
        return [word for word in self.arguments[1:] if "=" in word and not word.startswith("-")]

    @property
    def check(self) -> Check:
        """How this command is checked (see the module docstring)."""
        program = self.program
        if self.words[0] in NOT_RUN or "=" in self.words[0] or self.words[:2] == MAKE_TEST:
            return Check.NOT_RUN
        if self.words[:2] == ("make", "train"):
            return Check.RUN
        if program == "pytest":
            return Check.COLLECT
        if self.words[0].endswith("composer") or program.endswith(".sh"):
            return Check.RESOLVE
        if program == "train.py":
            return Check.RUN if self.recipe in CPU_RECIPES else Check.RESOLVE
        if program in ("evaluate.py", "scripts/predict.py"):
            return Check.RUN
        if program == "tools.ablate":
            return Check.RUN if "--plan" in self.arguments else Check.RESOLVE
        if program == "scripts/convert_to_mds.py":
            return Check.RUN if self.recipe in CPU_RECIPES else Check.RESOLVE
        raise ValueError(
            f"{self.page}: no rule checks `{self.text}`; teach tests/docs_commands.py how (run it, resolve it, "
            "or say why not)"
        )


ANGLE_PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\n]*>")
LAUNCHER_FLAGS_WITH_VALUES = {
    "-n",
    "--nproc",
    "--world_size",
    "--node_rank",
    "--master_addr",
    "--master_port",
}
LAUNCHER_FLAGS_WITH_VALUES |= {"--stdout", "--stderr"}


def substitute(word: str, more: dict[str, str] | None = None) -> str:
    """A word with the docs' placeholders replaced (``s3://BUCKET/x`` becomes ``s3://docs-check-bucket/x``),
    ``more`` too (the folders a run here made)."""
    for placeholder, value in {**PLACEHOLDERS, **(more or {})}.items():
        word = re.sub(rf"\b{placeholder}\b", value, word)
    return word


def simple_commands(block: str) -> list[str]:
    """A shell block's simple commands in order: continuation lines joined, comments dropped, split at ``;``,
    ``&``, ``&&`` and ``|``. A block with a loop is one command (its first word: ``while``)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    if re.search(r"^\s*(while|for|until)\b", joined, re.MULTILINE):
        return [joined.strip()]
    commands = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if set(token) <= set(";&|"):
                commands.append(shlex.join(current))
                current = []
            else:
                current.append(token)
        if current:
            commands.append(shlex.join(current))
    return [command for command in commands if command]


def doc_commands() -> list[DocCommand]:
    """Every simple command in the README's and docs/' shell blocks, the README first, then the pages by name."""
    commands = []
    for page in PAGES:
        for block in SHELL_BLOCK.findall(page.read_text(encoding="utf-8")):
            # `runs/<probe run>/...` is one word to a reader: keep it one word to the shell.
            block = ANGLE_PLACEHOLDER.sub(lambda match: match.group(0).replace(" ", "_"), block)
            for text in simple_commands(block):
                loop = text.startswith(("while", "for", "until"))
                words = (text.split()[0],) if loop else tuple(shlex.split(text))
                commands.append(DocCommand(str(page.relative_to(ROOT)), text, words))
    return commands


def gpu_run_names() -> set[str]:
    """The run names the GPU recipes fix (``moco-v3-imagenet-linear-probe``): a checkpoint under one of them
    exists only after that run, on a GPU, so its ``evaluate.py`` command is resolved, not run."""
    from omegaconf import OmegaConf

    names = set()
    for path in (ROOT / "recipes").glob("*.yaml"):
        if path.stem not in CPU_RECIPES and not path.stem.startswith("_"):
            name = OmegaConf.load(path).get("run_name")
            if name:
                names.add(str(name))
    return names


def dry_run_words(words: list[str]) -> list[str]:
    """A shell script's arguments with ``--dry-run`` added (before a ``--`` and the command after it)."""
    if "--dry-run" in words:
        return words
    split = words.index("--") if "--" in words else len(words)
    return [*words[:split], "--dry-run", *words[split:]]


def resolve(command: DocCommand) -> str:
    """Check a command without running its work: a shell script's ``--dry-run`` (and the command it would launch),
    a recipe command's recipe and overrides loaded as the run loads them, ``evaluate.py``'s flags parsed. Raises
    on what a reader would hit; returns what was checked."""
    import evaluate
    from training.preflight import load_run_recipe

    arguments = [substitute(word) for word in command.arguments]
    program = command.program
    if program.endswith(".sh"):
        words = dry_run_words(arguments)
        environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        finished = subprocess.run(
            ["bash", str(ROOT / words[0]), *words[1:]],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
        )
        assert finished.returncode == 0, (
            f"{command.page}: `{command.text}` --dry-run: {finished.stderr[-2000:]}"
        )
        if "--" in words:  # run_until_done.sh -- CMD: the command it relaunches resolves too
            launched = words[words.index("--") + 1 :]
            resolve(DocCommand(command.page, shlex.join(launched), tuple(launched)))
        return f"{words[0]} --dry-run"
    if program in ("train.py", "scripts/convert_to_mds.py"):
        load_run_recipe(command.recipe, [substitute(override) for override in command.overrides])
        return f"recipe {command.recipe or 'smoke'} with {len(command.overrides)} override(s) loaded"
    if program == "evaluate.py":
        evaluate.parse_args(arguments[1:])
        return "flags parsed"
    if program == "scripts/predict.py":
        from tests.script_modules import load_script

        load_script("predict").parse_args(arguments[1:])
        return "flags parsed"
    if program == "tools.ablate":
        from recipes.studies import load_study
        from tools.ablate import check_study, parse_args

        study = parse_args(arguments[1:]).study
        check_study(load_study(ROOT / study if not Path(study).is_absolute() else study))
        return f"study {study}: every variant's recipe loaded"
    raise ValueError(f"{command.page}: nothing resolves `{command.text}`")
