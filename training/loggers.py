"""Where a run's metrics and findings go: ``metrics.jsonl`` always, and the loggers the recipe's ``logging``
section switches on, checked before any work (``check_logging``) and built for the Trainer (``build_loggers``).

Composer's own WandBLogger, TensorboardLogger and MLFlowLogger are used as they are. Each receives every
``log_metrics`` call of the run, so all three show the same names: the stable ones ``callbacks.metric_names``
logs (``train/loss``, ``train/acc1``, ``lr``, ``val/acc1``) and the doctor's ``train/grad_norm``, beside
Composer's own (``metrics/val/MulticlassAccuracy``, ``loss/train/total``, ``throughput/...``). TensorBoard and
MLflow are optional extras; switching one on without its package, or Slack without its webhook, stops with the
fix before the data or the model is built.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from composer.loggers import LoggerDestination
from omegaconf import DictConfig

from callbacks.metrics_file import MetricsFile
from callbacks.ranks import say
from callbacks.slack_findings import SLACK_WEBHOOK_VARIABLE, SlackFindings
from recipes.errors import UsageError

# logging.<key> -> the module Composer's logger imports, and the pip requirement of the project's extra.
OPTIONAL_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny")}
# MLflow's database stores (mlflow/store/db/db_types.py) run on SQLAlchemy and Alembic, which only the full
# mlflow package installs; the mlflow extra's mlflow-skinny logs to a tracking server or a folder.
MLFLOW_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
MLFLOW_DATABASE_MODULES = ("sqlalchemy", "alembic")
# MLflow 3 refuses its folder store (file:, a bare path) unless this is true (mlflow/store/tracking/file_store.py).
MLFLOW_FILE_STORE_VARIABLE = "MLFLOW_ALLOW_FILE_STORE"
TENSORBOARD_FOLDER = "tensorboard"


def check_logging(logging_cfg: DictConfig) -> None:
    """Refuse, before any work, a logger the recipe switches on that cannot run here: its package missing, an
    MLflow store this install cannot write, Slack without its webhook URL."""
    for key, (module, requirement) in OPTIONAL_PACKAGES.items():
        if not logging_cfg[key]:
            continue
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise UsageError(
                f"logging.{key}=true needs the {module} package ({error}): pip install {requirement} "
                f"(the project's {key} extra: pip install -e '.[{key}]'), or set logging.{key}=false."
            ) from error
    if logging_cfg.mlflow:
        check_mlflow_store(logging_cfg.mlflow_tracking_uri)
    if logging_cfg.slack_findings:
        check_slack_webhook()


def check_mlflow_store(tracking_uri: str | None) -> None:
    """A database store needs the full mlflow package; a folder store, MLflow's opt-in variable."""
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    origin = "logging.mlflow_tracking_uri" if tracking_uri else "MLFLOW_TRACKING_URI or MLflow's default"
    scheme = urlparse(uri).scheme.split("+")[0]
    elsewhere = "or set logging.mlflow_tracking_uri (or MLFLOW_TRACKING_URI) to your tracking server (http://HOST:5000)"
    missing = [name for name in MLFLOW_DATABASE_MODULES if importlib.util.find_spec(name) is None]
    if scheme in MLFLOW_DATABASE_SCHEMES and missing:
        raise UsageError(
            f"logging.mlflow=true logs to {uri} ({origin}), a database store, which needs the full MLflow "
            f"({', '.join(missing)} not installed): pip install mlflow, {elsewhere}."
        )
    allow_file_store = getattr(mlflow.environment_variables, MLFLOW_FILE_STORE_VARIABLE, None)  # MLflow 3.x
    if scheme in ("", "file") and allow_file_store is not None and not allow_file_store.get():
        raise UsageError(
            f"logging.mlflow=true logs to the folder {uri} ({origin}), which MLflow {mlflow.__version__} only "
            f"writes with {MLFLOW_FILE_STORE_VARIABLE}=true in the environment: set it, {elsewhere}."
        )


def check_slack_webhook() -> str:
    """The incoming webhook's URL from the environment, or a UsageError naming the variable."""
    url = os.environ.get(SLACK_WEBHOOK_VARIABLE, "")
    if urlparse(url).scheme not in ("http", "https"):
        found = f"it is {url!r}" if url else "it is not set"
        raise UsageError(
            f"logging.slack_findings=true posts to the Slack incoming webhook in {SLACK_WEBHOOK_VARIABLE}, and "
            f"{found}: export {SLACK_WEBHOOK_VARIABLE}=https://hooks.slack.com/services/... (Slack: Apps, "
            "Incoming Webhooks), or set logging.slack_findings=false."
        )
    return url


def build_loggers(
    logging_cfg: DictConfig, folder: str | Path, run_name: str, recipe: dict[str, Any], resume: bool = False
) -> tuple[list[LoggerDestination], MetricsFile]:
    """The metrics file always; wandb, TensorBoard, MLflow and the Slack poster when the recipe asks for them.

    An autoresumed run continues its MLflow run (found by the ``run_name`` tag Composer sets) and its
    TensorBoard folder; wandb starts a new run per launch (docs/resuming.md).
    """
    metrics_file = MetricsFile(folder, every_n_batches=logging_cfg.metrics_every_n_batches, append=resume)
    destinations: list[LoggerDestination] = [metrics_file]
    if logging_cfg.wandb:
        from composer.loggers import WandBLogger

        destinations.append(
            WandBLogger(
                project=logging_cfg.wandb_project,
                entity=logging_cfg.wandb_entity,
                name=run_name,
                group=logging_cfg.wandb_group,
                init_kwargs={"mode": str(logging_cfg.wandb_mode), "dir": str(folder), "config": recipe},
            )
        )
    if logging_cfg.tensorboard:
        from composer.loggers import TensorboardLogger

        # Composer adds the run's name as the last folder, the name TensorBoard shows for the run.
        log_dir = Path(folder) / TENSORBOARD_FOLDER
        destinations.append(TensorboardLogger(log_dir=str(log_dir)))
        say(f"tensorboard: {log_dir / run_name} (tensorboard --logdir {log_dir})")
    if logging_cfg.mlflow:
        import mlflow
        from composer.loggers import MLFlowLogger

        mlflow_logger = MLFlowLogger(
            experiment_name=logging_cfg.mlflow_experiment,
            tracking_uri=logging_cfg.mlflow_tracking_uri,
            resume=resume,
            # Its CPU/GPU sampling thread needs pynvml for GPUs; throughput and GPU memory are logged already
            # (SpeedMonitor, MemoryMonitor).
            log_system_metrics=False,
        )
        destinations.append(mlflow_logger)
        say(f"mlflow: experiment {logging_cfg.mlflow_experiment} at {mlflow.get_tracking_uri()}")
    if logging_cfg.slack_findings:
        destinations.append(SlackFindings(folder, check_slack_webhook()))
        say(f"slack: each finding of the doctor and the curve watch is posted to ${SLACK_WEBHOOK_VARIABLE}")
    return destinations, metrics_file
