"""The suite's two tiers and shared fixtures.

Tiers (docs/testing.md): every test under ``tests/proof/`` is an end-to-end claim and gets the ``proof`` marker
(``make proof``); everything else is a unit or mechanism test (``make test``). No test skips: one that cannot run
here fails and names what is missing. Proof tests report their figures with ``record_property("figure", ...)``
and the run lists them at its end.

Fixtures, each made once a session: a short smoke-recipe run for every test that reads a finished run, the two-rank
DDP run and the two-rank MoCo/FSDP checks (one launch each), the digits as JPEGs and as MDS shards, an S3 server on
loopback; and, per test, the release of every Composer engine it leaves open.
"""

from __future__ import annotations

import json
import logging
import os
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


# Inductor compiles in this process instead of starting a pool of worker processes (each importing torch, ~2 s of
# CPU apiece) the first time a test wraps a model with torch.compile; none of the tests runs a compiled step.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

PROOF_FOLDER = Path(__file__).resolve().parent / "proof"
# How long torch waits for a DataLoader worker to exit before terminating it, when a loader is dropped part-way
# through an epoch (torch.utils.data._utils.MP_STATUS_CHECK_INTERVAL, 5 s). Tests drop loaders after a few batches,
# and a worker with a thread still waiting (Streaming's, a Hugging Face stream's) needs the full wait: measured,
# 45 s of the mechanism tier went to these joins, each at whatever later test the garbage collector ran in.
WORKER_EXIT_WAIT_S = 0.5
FIGURE = "figure"


def pytest_configure(config: pytest.Config) -> None:
    """Shorten torch's wait for a dropped DataLoader's workers (WORKER_EXIT_WAIT_S says why)."""
    from torch.utils.data import _utils

    _utils.MP_STATUS_CHECK_INTERVAL = WORKER_EXIT_WAIT_S


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tier is where a test lives: ``tests/proof/`` holds the end-to-end claims."""
    for item in items:
        if PROOF_FOLDER in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.proof)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A skipped test is a failed one: the suite proves nothing by not running, and a test that needs what the
    machine lacks (a second process group, the loopback S3 server) must fail naming it."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} was skipped ({reason}); this suite does not skip: make the test run here, or make it "
            "fail with a message naming the resource it lacks"
        )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures the end-to-end claims measured (``record_property("figure", ...)``), one line each."""
    figures = [
        (report.nodeid, value)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == FIGURE
    ]
    if figures:
        terminalreporter.section("figures measured")
        for nodeid, value in figures:
            terminalreporter.write_line(f"{value}    [{nodeid.split('::')[-1]}]")


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


# The smoke recipe as written, cut to two evaluations of five batches: what a finished run writes, at the cost of a
# few seconds. Its accuracy is not the point (tests/proof/test_smoke_recipe_reaches_its_bar.py trains it whole).
TRAINED_RUN_OVERRIDES = ["max_duration=10ba", "eval_interval=5ba", "logging.progress_bar=false"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, digits_cache: Path) -> dict[str, Any]:
    """The smoke recipe trained once for ten batches, shared by every test that reads a finished run (its outputs,
    evaluate.py, export, torchvision loading): its folder and summary."""
    import train

    folder = tmp_path_factory.mktemp("trained") / "run"
    status = train.main(
        ["recipes/smoke.yaml", f"save_folder={folder}", "run_name=trained", f"data.cache_dir={digits_cache}",
         *TRAINED_RUN_OVERRIDES]
    )  # fmt: skip
    assert status == 0
    summary = json.loads((folder / "summary.json").read_text())
    return {"folder": folder, "summary": summary}


@pytest.fixture(scope="session")
def digits_mds(tmp_path_factory: pytest.TempPathFactory, digits_cache: Path) -> Path:
    """The smoke recipe's digits as MDS shards in a folder (a remote Streaming copies from), groups of 300."""
    from tests.script_modules import load_script

    out = tmp_path_factory.mktemp("digits-mds")
    status = load_script("convert_to_mds").main(
        ["smoke", f"data.cache_dir={digits_cache}", "--out", str(out), "--workers", "1", "--group-size", "300",
         "--shard-size", "256kb", "--verify", "0"]
    )  # fmt: skip
    assert status == 0
    return out


# The step-time breakdown's profiler window inside the two-rank DDP run's four steps (the first three): profiling
# adds traces and timing hooks, and changes nothing that is trained.
PROFILED = ["profiler.enabled=true", "profiler.skip_first=0", "profiler.warmup=0", "profiler.active=3"]


@pytest.fixture(scope="session")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``composer -n 2 train.py`` once (tests/test_ddp.py's run): 2 ranks of 2 images each, microbatched at half
    the per-device batch (one image), profiled, so the DDP tests and the step breakdown's share one launch."""
    from tests.test_ddp import launch

    return launch(2, tmp_path_factory.mktemp("two_processes"), ["device_train_microbatch_size=1", *PROFILED])


@pytest.fixture(scope="session")
def two_rank_checks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``composer -n 2 tests/two_rank_checks.py`` run once: the MoCo step's results in ``moco/``, the FSDP
    check's in ``fsdp/`` (``rank0.pt``, ``rank1.pt`` in each)."""
    import subprocess

    from tests.test_ddp import COMPOSER, LAUNCH_TIMEOUT_S, REPO, launcher_environment

    folder = tmp_path_factory.mktemp("two-ranks")
    command = [str(COMPOSER), "-n", "2", "tests/two_rank_checks.py", str(folder)]
    done = subprocess.run(
        command,
        cwd=REPO,
        env=launcher_environment(),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return folder


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, shared by the session (each test uses its own buckets or paths)."""
    from moto.server import ThreadedMotoServer

    # One log line per request drowns a failure's output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    try:
        server.start()
        host, port = server.get_host_and_port()
    except Exception as error:  # what a machine without loopback networking raises varies
        pytest.fail(
            f"the loopback S3 server (moto's ThreadedMotoServer on 127.0.0.1) did not start: {error!r}"
        )
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
