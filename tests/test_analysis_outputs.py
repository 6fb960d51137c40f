"""The analysis scripts never overwrite committed results with quick runs: a quick run writes to
results/quick/ (ignored by git) and refuses an --out that holds committed results."""
import subprocess
import sys

import pytest

from analysis.runs import SCRATCH, output_folder
from conftest import REPO_ROOT

QUICK_SCRIPTS = ("bit_allocation_synthetic", "bitrate_vs_accuracy", "mse_analysis", "onnx_deployment",
                 "post_training_methods", "quantizer_families", "report")


def git_status() -> set[str]:
    return set(subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout.splitlines())


def run_script(name: str, *argv: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"analysis/{name}.py", *argv], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)


def test_quick_runs_default_to_the_scratch_folder_and_full_runs_to_results():
    for name in QUICK_SCRIPTS:
        assert output_folder(None, name, quick=True) == (SCRATCH / name, None)
        assert output_folder(None, name, quick=False) == (REPO_ROOT / "results" / name, None)


def test_documented_quick_commands_leave_git_status_clean(tmp_path):
    before = git_status()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name, argv in (("mse_analysis", ["--quick"]), ("bit_allocation_synthetic", ["--quick"]),
                       ("report", ["--quick", "--models", "fmnist_resnet20", "--no-figures", "--mlflow-uri", uri])):
        done = run_script(name, *argv, tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    assert git_status() == before
    assert (SCRATCH / "report" / "report.csv").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--quick", "--out", "results/report", "--models", "fmnist_resnet20"], "holds committed full results"),
    (["--quick", "--update-docs", "docs/results.md", "--models", "fmnist_resnet20"], "--update-docs with --quick"),
    (["--finished-only", "--update-docs", "docs/results.md", "--models", "fmnist_resnet20"],
     "--update-docs rewrites every model's table of the page: run it without --models"),
])
def test_quick_runs_refuse_to_write_over_full_results(tmp_path, argv, message):
    before = git_status()
    done = run_script("report", *argv, tmp_path=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert git_status() == before


def test_a_run_of_some_models_keeps_the_other_models_rows_of_the_csv(tmp_path):
    import pandas as pd

    from analysis.runs import write_model_csv

    path = tmp_path / "table.csv"
    pd.DataFrame({"recipe": ["a", "b", "a", "a"], "top1": [1.0, 2.0, 3.0, 4.0],
                  "model": ["m1", "m1", "m2", "m3"]}).to_csv(path, index=False)
    write_model_csv(pd.DataFrame({"recipe": ["a", "c"], "top1": [5.0, 6.0], "model": ["m2", "m2"]}), path)
    write_model_csv(pd.DataFrame({"recipe": ["a"], "top1": [7.0], "model": ["m4"]}), path)
    table = pd.read_csv(path)
    assert list(table["model"]) == ["m1", "m1", "m2", "m2", "m3", "m4"]
    assert list(table["top1"]) == [1.0, 2.0, 5.0, 6.0, 4.0, 7.0]
