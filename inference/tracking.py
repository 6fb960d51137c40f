"""mlflow tracking: one run per invocation, with the resolved configuration as parameters and the
results as metrics. Default store: sqlite under the repository's mlruns/ (artifacts beside it);
``--mlflow-uri`` or MLFLOW_TRACKING_URI for another store or a server. Telemetry is disabled unless
the user enabled it. A run that fails is ended as FAILED, never left RUNNING.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from inference.models import REPO_ROOT

DEFAULT_STORE = REPO_ROOT / "mlruns"


def tracking_uri(requested: str | None) -> str:
    if requested:
        return requested
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    DEFAULT_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_STORE / 'mlflow.db'}"


def flatten(prefix: str, value, out: dict) -> dict:
    """Nested dicts as dotted keys (mlflow params are flat strings)."""
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value
    return out


@contextmanager
def mlflow_run(uri: str | None, experiment: str, params: dict):
    """Start a run (status FAILED if the block raises) and yield the mlflow module."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    for name in ("mlflow.store.db.utils", "alembic"):  # schema-creation chatter on a new store
        logging.getLogger(name).setLevel(logging.WARNING)

    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if resolved.startswith("sqlite:///"):
            location = (Path(resolved[len("sqlite:///"):]).parent / "artifacts" / experiment).as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    run = mlflow.start_run()
    try:
        mlflow.log_params({key: str(value)[:500] for key, value in flatten("", params, {}).items()})
        yield mlflow
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")
    del run


def log_results(mlflow, results: dict, layer_rows: list[dict] | None = None, statistics_file: str | None = None) -> None:
    metrics = {key: float(value) for key, value in results.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)
               and key not in ("batch_size", "subset", "seed")}
    mlflow.log_metrics(metrics)
    mlflow.set_tag("backend", results.get("backend", ""))
    with tempfile.TemporaryDirectory() as folder:
        config_path = Path(folder) / "results.json"
        config_path.write_text(json.dumps(results, indent=2, default=str))
        mlflow.log_artifact(str(config_path))
        if layer_rows:
            import pandas as pd

            report = Path(folder) / "layer_report.csv"
            pd.DataFrame(layer_rows).to_csv(report, index=False)
            mlflow.log_artifact(str(report))
    if statistics_file and Path(statistics_file).is_file():
        mlflow.log_artifact(statistics_file)
