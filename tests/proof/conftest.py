"""The end-to-end tier: checked for the disk and memory it needs before any of it starts; the smoke recipe's run,
trained once for every claim that reads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psutil
import pytest

# Measured over a whole `make proof` on a fresh clone on the 2-core machine: memory in use peaked 9.4 GB above what
# the machine used before it (four DDP ranks, two simulated nodes), and the temporary folders at 2.0 GB (a passing
# test's are removed as it ends: pyproject.toml's tmp_path_retention_policy). Each with some room to spare.
NEEDED_FREE_DISK_GB = 4.0
NEEDED_AVAILABLE_MEMORY_GB = 11.0


def shortfalls(temporary: Path) -> list[str]:
    """What this machine lacks for the proof tier, one sentence each; empty when it has enough."""
    missing = []
    free_disk = shutil.disk_usage(temporary).free / 1e9
    if free_disk < NEEDED_FREE_DISK_GB:
        missing.append(
            f"{free_disk:.1f} GB free on the disk of {temporary}, {NEEDED_FREE_DISK_GB:.0f} GB needed "
            "(free some space, or point pytest's --basetemp at a larger disk)"
        )
    memory = psutil.virtual_memory().available / 1e9
    if memory < NEEDED_AVAILABLE_MEMORY_GB:
        missing.append(
            f"{memory:.1f} GB of memory available, {NEEDED_AVAILABLE_MEMORY_GB:.0f} GB needed (close other programs)"
        )
    return missing


@pytest.fixture(scope="session", autouse=True)
def enough_resources(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Stops `make proof` before its first test when the machine is short of disk or memory: better than a run
    killed an hour in."""
    missing = shortfalls(tmp_path_factory.getbasetemp())
    if missing:
        pytest.exit("make proof cannot run here: " + "; ".join(missing), returncode=3)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, digits_cache: Path) -> dict[str, Any]:
    """`make train`'s run: recipes/smoke.yaml with nothing changed but where it writes and the progress bar;
    trained once for the smoke recipe's own claims and as the curve watch's reference."""
    import train

    folder = tmp_path_factory.mktemp("smoke") / "run"
    status = train.main(
        ["recipes/smoke.yaml", f"save_folder={folder}", "run_name=smoke-test", f"data.cache_dir={digits_cache}",
         "logging.progress_bar=false"]
    )  # fmt: skip
    assert status == 0
    return {"folder": folder, "summary": json.loads((folder / "summary.json").read_text())}
