"""The loggers a recipe switches on (training/loggers.py): TensorBoard and MLflow receive the run's metrics under
the names metrics.jsonl (and wandb) use, Slack hears the doctor's findings, and each is refused before any work
when it cannot run. One tiny run with all three on serves the read-back tests; everything stays offline
(TensorBoard's event files, MLflow's folder store, a loopback HTTP server standing in for Slack)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import train
from callbacks.findings import Finding, append_findings, read_findings
from callbacks.metrics_file import COMPOSER_DUPLICATE_PREFIXES
from callbacks.slack_findings import SLACK_WEBHOOK_VARIABLE, SlackFindings
from tests.test_train import tiny_synthetic_overrides
from training.loggers import MLFLOW_FILE_STORE_VARIABLE

RUN_NAME = "logged"
EXPERIMENT = "logger-test"
# A threshold every first batch crosses, so the doctor reports initial_loss_too_high at step 1 of any run.
FORCED_FINDING = ["doctor.initial_loss_ratio=0.01"]
LOGGERS_ON = ["logging.tensorboard=true", "logging.mlflow=true", "logging.slack_findings=true"]


class SlackStandIn(BaseHTTPRequestHandler):
    """Records each JSON body POSTed to it and answers 200, as Slack's incoming webhook does."""

    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:  # one stderr line per request otherwise
        pass


@contextmanager
def loopback_webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback HTTP server in a thread: the webhook's URL and the bodies it receives."""
    received: list[dict[str, Any]] = []
    handler = type("Handler", (SlackStandIn,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/services/T000/B000/test", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def slack_webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The webhook the shared run posts to."""
    with loopback_webhook() as webhook:
        yield webhook


@pytest.fixture(scope="module")
def logged_run(
    tmp_path_factory: pytest.TempPathFactory, slack_webhook: tuple[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Four batches of tiny synthetic images (an evaluation every two) with TensorBoard, MLflow and Slack on and a
    doctor finding forced at step 1; the run's folder, its MLflow store and the Slack messages."""
    url, received = slack_webhook
    root = tmp_path_factory.mktemp("loggers")
    folder, store = root / "run", (root / "mlruns").as_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SLACK_WEBHOOK_VARIABLE, url)
        patch.setenv(MLFLOW_FILE_STORE_VARIABLE, "true")
        # What Composer's MLFlowLogger changes for the whole process, put back afterwards.
        patch.delenv("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", raising=False)
        patch.setattr(sys, "excepthook", sys.excepthook)
        status = train.main(
            ["smoke", *tiny_synthetic_overrides(folder), "model.name=resnet18", "max_duration=4ba",
             "save_interval=4ba", f"run_name={RUN_NAME}", "logging.metrics_every_n_batches=1", *LOGGERS_ON,
             *FORCED_FINDING, f"logging.mlflow_tracking_uri={store}", f"logging.mlflow_experiment={EXPERIMENT}"]
        )  # fmt: skip
    assert status == 0
    return {"folder": folder, "store": store, "slack": received}


def metrics_file_series(folder: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as name -> {step: value}, the stable names the project's own file and wandb carry."""
    series: dict[str, dict[int, float]] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for name, value in record.items():
            if name not in ("phase", "step", "epoch"):
                series.setdefault(name, {})[record["step"]] = value
    return series


def tensorboard_series(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the run's TensorBoard event files, read back as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard" / RUN_NAME))
    events.Reload()
    return {
        tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]
    }


def test_tensorboard_holds_the_metrics_file_names_and_values(logged_run: dict[str, Any]) -> None:
    expected = metrics_file_series(logged_run["folder"])
    logged = tensorboard_series(logged_run["folder"])
    stable = {name for name in logged if not name.startswith(COMPOSER_DUPLICATE_PREFIXES)}
    assert stable == set(expected) and {"train/loss", "lr", "val/acc1"} <= stable
    for name, values in expected.items():
        assert logged[name] == pytest.approx(values, rel=1e-6), name


def test_mlflow_run_holds_the_same_metrics_as_tensorboard(logged_run: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(logged_run["store"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == RUN_NAME and run.info.status == "FINISHED"
    assert set(run.data.metrics) == set(tensorboard_series(logged_run["folder"]))
    losses = {
        metric.step: metric.value for metric in client.get_metric_history(run.info.run_id, "train/loss")
    }
    assert losses == pytest.approx(metrics_file_series(logged_run["folder"])["train/loss"], rel=1e-6)


def test_slack_receives_each_doctor_finding_once(logged_run: dict[str, Any]) -> None:
    findings = [finding for finding in read_findings(logged_run["folder"]) if finding.source == "doctor"]
    assert "initial_loss_too_high" in [finding.code for finding in findings]
    assert [message["text"] for message in logged_run["slack"]] == [
        f"*{RUN_NAME}* {finding.line()}" for finding in findings
    ]


def finding(code: str) -> Finding:
    return Finding(code=code, severity="warning", message="measured and fixed", source="doctor", step=3)


def test_slack_posts_only_complete_findings_added_after_it_started(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    append_findings(tmp_path, [finding("before_the_launch")])
    with loopback_webhook() as (url, received):
        poster = SlackFindings(tmp_path, url)
        poster.run_name = "run-a"
        append_findings(tmp_path, [finding("during_the_run")])
        with (tmp_path / "findings.jsonl").open("a") as file:
            file.write('{"code": "half_wri')  # the doctor mid-write
        poster.post_new_findings()
        assert [message["text"] for message in received] == ["*run-a* " + finding("during_the_run").line()]
    # Slack gone: the finding is said on the console and training goes on.
    with (tmp_path / "findings.jsonl").open("a") as file:
        file.write('tten", "severity": "error", "message": "m", "source": "doctor", "step": 4}\n')
    poster.post_new_findings()
    assert "finding [half_written] not posted to Slack" in capsys.readouterr().out


# ---- refused before any work ----


@pytest.mark.parametrize(
    ("overrides", "environment", "missing_module", "says"),
    [
        (["logging.tensorboard=true"], {}, "tensorboard", ["logging.tensorboard=true", "pip install tensorboard"]),
        (["logging.mlflow=true"], {}, "mlflow", ["logging.mlflow=true", "pip install mlflow-skinny"]),
        (["logging.mlflow=true", "logging.mlflow_tracking_uri=sqlite:///runs.db"], {}, None,
         ["logging.mlflow_tracking_uri", "pip install mlflow,", "http://HOST:5000"]),
        (["logging.mlflow=true", "logging.mlflow_tracking_uri=file:///tmp/mlruns"],
         {MLFLOW_FILE_STORE_VARIABLE: None}, None, [f"{MLFLOW_FILE_STORE_VARIABLE}=true"]),
        (["logging.slack_findings=true"], {SLACK_WEBHOOK_VARIABLE: None}, None,
         ["logging.slack_findings=true", f"export {SLACK_WEBHOOK_VARIABLE}=https://hooks.slack.com/"]),
        (["logging.slack_findings=true"], {SLACK_WEBHOOK_VARIABLE: "hooks.slack.com/x"}, None,
         ["'hooks.slack.com/x'", SLACK_WEBHOOK_VARIABLE]),
    ],
    ids=["tensorboard-missing", "mlflow-missing", "mlflow-database", "mlflow-folder", "slack-unset", "slack-no-url"],
)  # fmt: skip
def test_a_logger_that_cannot_run_is_refused_before_any_work(
    overrides: list[str],
    environment: dict[str, str | None],
    missing_module: str | None,
    says: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if missing_module is not None:
        monkeypatch.setitem(sys.modules, missing_module, None)  # `import` now fails as if not installed
    for name, value in environment.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    folder = tmp_path / "run"
    status = train.main(
        ["smoke", f"save_folder={folder}", f"data.cache_dir={tmp_path / 'cache'}", *overrides]
    )
    error = capsys.readouterr().err
    assert status == 2 and error.startswith("error: ") and len(error.strip().splitlines()) == 1
    assert all(phrase in error for phrase in says), error
    assert not folder.exists() and not (tmp_path / "cache").exists()
