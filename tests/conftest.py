"""Shared fixtures: one real smoke-recipe run reused by the tests of its outputs, an S3 server on loopback, and the
release of every Composer engine a test leaves open."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FAKE_AWS_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
DEVELOPER_AWS_SETTINGS = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "S3_ENDPOINT_URL",
)


@pytest.fixture(autouse=True)
def release_composer_engines(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close and release, after each test, every Composer engine (Trainer) it built.

    Many tests build a Trainer and drop it without ``training.runtime.close_trainer``; each would otherwise stay
    in memory, model and all, until the suite ends (``close_trainer`` says what holds it), and the suite's
    hundreds of runs outgrow the CI machine's memory.
    """
    from composer.core import engine

    from training.runtime import release_engine

    opened: list[Any] = []
    real_init = engine.Engine.__init__

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(engine.Engine, "__init__", recording_init)
    yield
    for built in opened:
        built.close()
        release_engine(built)


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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, shared by the session (each test uses its own buckets or paths)."""
    from moto.server import ThreadedMotoServer

    # One log line per request drowns a failure's output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, and nothing from the developer's own AWS set-up (profile, endpoint, config files)."""
    for name, value in FAKE_AWS_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in DEVELOPER_AWS_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
