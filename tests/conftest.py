"""Shared fixtures: repository paths and a runner for the CLI's main() in this process."""
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


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
