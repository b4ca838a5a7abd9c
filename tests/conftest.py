"""Shared fixtures: one real smoke-recipe training run, reused by the tests that check its outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder for the digits JPEGs, shared by every test in the session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, digits_cache: Path) -> dict[str, Any]:
    """Train the default smoke recipe once, exactly as `make train` does, and return its folder and summary."""
    import train

    folder = tmp_path_factory.mktemp("smoke") / "run"
    status = train.main(
        ["recipes/smoke.yaml", f"save_folder={folder}", "run_name=smoke-test", f"data.cache_dir={digits_cache}",
         "logging.progress_bar=false"]
    )  # fmt: skip
    assert status == 0
    summary = json.loads((folder / "summary.json").read_text())
    return {"folder": folder, "summary": summary}
