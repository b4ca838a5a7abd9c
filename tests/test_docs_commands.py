"""Every command the README and docs/ show resolves as a reader would paste it: a training or conversion command's
recipe and overrides load, a shell script's --dry-run succeeds (and the command it launches resolves), evaluate.py's
flags parse, a study's variants load, a pytest command names tests that exist. The CPU commands also run, in order,
in tests/proof/test_docs_commands_run.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs_commands import ROOT, Check, DocCommand, doc_commands, gpu_run_names, resolve, simple_commands

COMMANDS = doc_commands()
# Each distinct command once: the docs repeat some (the MoCo pair, --print-config), and each check costs a
# recipe load.
DISTINCT = list({command.text: command for command in COMMANDS}.values())


def test_every_command_in_the_docs_has_a_check() -> None:
    """A command no rule knows raises here, naming the page and the command."""
    checks = {command.text: command.check for command in COMMANDS}
    assert checks[".venv/bin/python evaluate.py --checkpoint runs/smoke-first/latest-rank0.pt"] is Check.RUN
    assert checks["composer -n 4 train.py g4dn_12xlarge"] is Check.RESOLVE
    with pytest.raises(ValueError, match="no rule checks `frobnicate --now`"):
        _ = DocCommand("docs/x.md", "frobnicate --now", ("frobnicate", "--now")).check


@pytest.mark.parametrize(
    "command",
    [
        command
        for command in DISTINCT
        if command.check in (Check.RUN, Check.RESOLVE) and command.words[0] != "make"
    ],
    ids=lambda command: f"{command.page}:{command.text[:60]}",
)
def test_command_resolves(command: DocCommand) -> None:
    resolve(command)


def test_a_stale_override_in_the_docs_fails(tmp_path: Path) -> None:
    """The check sees what a reader would hit: a key the schema lost, a flag evaluate.py lost."""
    from recipes.errors import UsageError

    with pytest.raises(UsageError, match=r"optimizer\.bse_lr"):
        resolve(DocCommand("x.md", "", ("python", "train.py", "colab", "optimizer.bse_lr=0.1")))
    with pytest.raises(SystemExit):
        resolve(DocCommand("x.md", "", ("python", "evaluate.py", "--checkpoint", "a.pt", "--json")))


def test_shell_blocks_split_into_the_commands_a_shell_runs() -> None:
    block = "train.py smoke a=1 \\\n    b=2   # comment\nx & pid=$!\nsleep 1; kill $pid\n"
    assert simple_commands(block) == ["train.py smoke a=1 b=2", "x", "'pid=$!'", "sleep 1", "kill '$pid'"]


def test_pytest_commands_name_tests_that_exist() -> None:
    for command in (command for command in COMMANDS if command.check is Check.COLLECT):
        for word in command.arguments[1:]:
            if word.startswith("tests/"):
                path, _, name = word.partition("::")
                assert (ROOT / path).is_file(), (
                    f"{command.page}: `{command.text}` names {path}, which is gone"
                )
                if name:
                    source = (ROOT / path).read_text(encoding="utf-8")
                    assert re.search(rf"^def {name}\(", source, re.MULTILINE), (
                        f"{command.page}: no test {name}"
                    )


def test_evaluate_commands_that_are_not_run_point_at_gpu_runs() -> None:
    """An evaluate.py command runs unless its checkpoint is one only a GPU recipe's run writes."""
    names = gpu_run_names()
    assert "moco-v3-imagenet-linear-probe" in names and "smoke-default" not in names
