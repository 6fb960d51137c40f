"""Shared fixtures: repository paths and a runner for the CLI's main() in this process."""
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def rewrite_statistics(source: Path, target: Path, edit) -> Path:
    """The statistics file ``source`` after ``edit(payload)``, saved as ``target`` with its checksum
    recomputed, as a user who edits the file (or a forger) would; a structure too damaged to have a
    checksum gets "none" (the loader refuses it before comparing)."""
    import torch

    from pytorch_quantizer.formats.stats_io import StatisticsFile, checksum, metadata_of

    payload = torch.load(source, weights_only=True)
    edit(payload)
    metadata = {key: payload.get(key) for key in metadata_of(StatisticsFile("", 0, False, "", "", {}))}
    try:
        payload["checksum"] = checksum(metadata, payload["layers"])
    except Exception:  # noqa: BLE001 - see the docstring
        payload["checksum"] = "none"
    torch.save(payload, target)
    return target


@pytest.fixture
def run_cli(capsys):
    """Call inference_sim.main(argv) in-process; return (exit code, stdout, stderr)."""
    from inference import inference_sim

    def run(*argv: str):
        try:
            code = inference_sim.main([str(arg) for arg in argv])
        except SystemExit as stop:
            code = stop.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def python_exe() -> str:
    return sys.executable


@pytest.fixture(autouse=True, scope="session")
def statistics_cache(tmp_path_factory):
    """The default statistics folder of every CLI run of the suite is a throw-away one."""
    import os

    previous = os.environ.get("PTQ_SIM_CACHE")
    os.environ["PTQ_SIM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield Path(os.environ["PTQ_SIM_CACHE"])
    if previous is None:
        os.environ.pop("PTQ_SIM_CACHE", None)
    else:
        os.environ["PTQ_SIM_CACHE"] = previous


@pytest.fixture(autouse=True, scope="session")
def mlflow_store(tmp_path_factory):
    """Every CLI run of the suite logs to a throw-away sqlite store, not the repository's mlruns/."""
    import os

    store = tmp_path_factory.mktemp("mlruns") / "mlflow.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    yield f"sqlite:///{store}"
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous
