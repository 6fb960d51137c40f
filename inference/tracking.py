"""mlflow tracking: one run per invocation, with the resolved configuration as parameters and the
results as metrics. Default store: sqlite under the repository's mlruns/ (artifacts beside it);
``--mlflow-uri`` or MLFLOW_TRACKING_URI for another store or a server. Telemetry is disabled unless
the user enabled it. A run that fails is ended as FAILED, an interrupted one as KILLED, never left
RUNNING. The store is checked before any work (``check_tracking_store``), and any failure of the store
during the run is a ``TrackingStoreError`` naming the store and the fix.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import urlopen

from inference.errors import UserError
from inference.models import REPO_ROOT

DEFAULT_STORE = REPO_ROOT / "mlruns"
SERVER_TIMEOUT_SECONDS = 3
SQLITE_HEADER = b"SQLite format 3\x00"
STORE_FIX = "pass --mlflow-uri sqlite:///PATH/mlflow.db or a running server's http://HOST:PORT"


class TrackingStoreError(UserError):
    """The mlflow store cannot be reached, read or written."""


def check_tracking_store(requested: str | None) -> str:
    """The resolved tracking URI, once it is known to be usable: an sqlite file that is a database in
    a writable folder, or a server that answers ``/health`` within ``SERVER_TIMEOUT_SECONDS``."""
    uri = tracking_uri(requested)
    parsed = urlparse(uri)
    scheme = parsed.scheme
    if scheme == "sqlite":
        check_sqlite_store(uri)
    elif scheme in ("http", "https"):
        if not parsed.hostname:
            raise TrackingStoreError(f"mlflow store {uri}: names no server host (http://HOST:PORT); {STORE_FIX}")
        check_server(uri)
    elif scheme == "" and not file_stores_allowed():
        raise TrackingStoreError(f"mlflow store {uri}: is not a tracking URI (no scheme such as sqlite: or http:; a "
                                 "folder store needs MLFLOW_ALLOW_FILE_STORE=true); " + STORE_FIX)
    elif scheme in ("", "file"):
        if not file_stores_allowed():
            raise TrackingStoreError(f"mlflow store {uri}: mlflow 3 refuses folder (file:) stores unless "
                                     f"MLFLOW_ALLOW_FILE_STORE=true; {STORE_FIX}")
    else:
        raise TrackingStoreError(f"mlflow store {uri}: scheme {scheme!r} is not supported here; {STORE_FIX}")
    return uri


def file_stores_allowed() -> bool:
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() == "true"


def check_sqlite_store(uri: str) -> None:
    if not uri.startswith("sqlite:///") or uri == "sqlite:///" or uri.endswith("/"):
        raise TrackingStoreError(f"mlflow store {uri}: an sqlite URI is sqlite:///RELATIVE/PATH or "
                                 f"sqlite:////ABSOLUTE/PATH to a database file; {STORE_FIX}")
    path = Path(uri[len("sqlite:///"):])
    blocking = next((parent for parent in path.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise TrackingStoreError(f"mlflow store {uri}: {blocking} is a file, not a folder; {STORE_FIX}")
    if not path.parent.is_dir():
        raise TrackingStoreError(f"mlflow store {uri}: folder {path.parent} does not exist; create it or {STORE_FIX}")
    if path.is_dir():
        raise TrackingStoreError(f"mlflow store {uri}: {path} is a folder, not a database file; {STORE_FIX}")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise TrackingStoreError(f"mlflow store {uri}: {path if path.exists() else path.parent} is not writable; "
                                 f"{STORE_FIX}")
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            raise TrackingStoreError(f"mlflow store {uri}: {path} is not an sqlite database (damaged or another "
                                     f"kind of file); move it away or {STORE_FIX}")
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)) as connection:
                connection.execute("PRAGMA quick_check(1)").fetchall()
        except sqlite3.DatabaseError as error:
            raise TrackingStoreError(f"mlflow store {uri}: {path} is a damaged sqlite database ({error}); move it "
                                     f"away or {STORE_FIX}") from None


def check_server(uri: str) -> None:
    health = uri.rstrip("/") + "/health"
    try:
        with urlopen(health, timeout=SERVER_TIMEOUT_SECONDS) as response:
            status = response.status
    except HTTPError as error:
        status = error.code
    except (URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingStoreError(f"mlflow server {uri} does not answer within {SERVER_TIMEOUT_SECONDS} s ({reason}); "
                                 f"start it or {STORE_FIX}") from None
    if status != 200:
        raise TrackingStoreError(f"mlflow server {uri} answers {health} with HTTP {status}; check the URI or {STORE_FIX}")


@contextmanager
def store_errors(uri: str | None):
    """Failures of the tracking store itself (unreachable, damaged, read-only) as TrackingStoreError."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (MlflowException, RequestException, SQLAlchemyError, sqlite3.Error) as error:
        detail = " ".join(str(error).split())[:200]
        raise TrackingStoreError(f"mlflow store {tracking_uri(uri)} failed: {detail}; {STORE_FIX}") from None


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
def restored_tracking_environment():
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI in the process environment: put back
    what was there, so one run's --mlflow-uri does not become the next in-process run's default."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@contextmanager
def mlflow_run(uri: str | None, experiment: str, params: dict, name: str | None = None, tags: dict | None = None):
    """Start a run named ``name`` with ``tags`` and yield the mlflow module; the run ends FINISHED,
    KILLED if the block is interrupted (KeyboardInterrupt, SIGTERM) or FAILED if it raises. The
    process environment's MLFLOW_TRACKING_URI is as before afterwards."""
    with restored_tracking_environment():
        yield from _mlflow_run(uri, experiment, params, name, tags)


def _mlflow_run(uri: str | None, experiment: str, params: dict, name: str | None, tags: dict | None):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # mlflow's default retries for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    import mlflow

    for logger in ("mlflow.store.db.utils", "alembic"):  # schema-creation chatter on a new store
        logging.getLogger(logger).setLevel(logging.WARNING)

    resolved = tracking_uri(uri)
    with store_errors(uri), taking_turns(resolved):
        mlflow.set_tracking_uri(resolved)
        if mlflow.get_experiment_by_name(experiment) is None:
            location = None
            if resolved.startswith("sqlite:///"):
                location = (Path(resolved[len("sqlite:///"):]).parent / "artifacts" / experiment).as_uri()
            mlflow.create_experiment(experiment, artifact_location=location)
        mlflow.set_experiment(experiment)
        mlflow.start_run(run_name=name, tags=tags)
    try:
        with store_errors(uri):
            mlflow.log_params({key: str(value)[:500] for key, value in flatten("", params, {}).items()})
        yield mlflow
    except KeyboardInterrupt:
        end_run_quietly(mlflow, "KILLED")
        raise
    except BaseException:
        end_run_quietly(mlflow, "FAILED")
        raise
    with store_errors(uri):
        mlflow.end_run(status="FINISHED")


@contextmanager
def taking_turns(uri: str):
    """Runs that start at once against one sqlite store create its tables, migrate them and create
    their experiment one after the other (an exclusive lock on ``<database>.lock`` beside it):
    mlflow's schema migration is not safe against itself and would leave a half-migrated store."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    database = Path(uri[len("sqlite:///"):])
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def end_run_quietly(mlflow, status: str) -> None:
    """End the active run with ``status`` while another error is on its way up: a failure of the
    store here must not hide that error."""
    try:
        mlflow.end_run(status=status)
    except Exception:  # noqa: BLE001 - the error being raised is the one to report
        logging.getLogger(__name__).warning(f"the mlflow run could not be marked {status}")


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
