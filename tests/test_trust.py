"""Saved state serves only the weights and recipe it was made for; files are written with the
permissions of an ordinary write."""
import os
import stat
import subprocess
import sys

import pytest
import torch

from conftest import rewrite_statistics
from inference.models import CHECKPOINT_DIR

ERROR = "inference_sim.py: error: "
FAST = ("-a", "fmnist_resnet20", "-ss", "40", "-b", "20", "-j", "0")


def one_error_line(code: int, stderr: str, *expected: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith(ERROR)]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert all(text in errors[0] for text in expected), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    """fmnist_resnet20's weights with one value changed: the same architecture, other weights."""
    state = torch.load(CHECKPOINT_DIR / "fmnist_resnet20.pt", weights_only=True)
    state["fc.weight"][0, 0] += 0.01
    path = tmp_path_factory.mktemp("weights") / "other.pt"
    torch.save(state, path)
    return path


def test_statistics_and_rounding_refuse_other_weights_and_serve_their_own(run_cli, tmp_path, other_weights):
    folder = tmp_path / "stats"
    recipe = ("--qtype", "int4", "-qw", "int4", "--adaround", "--recon-iters", "5", "--recon-batch", "16", "-sf", folder)
    code, _, stderr = run_cli(*FAST, *recipe, "-sm", "collect", "-cs", "32")
    assert code == 0, stderr
    code, _, stderr = run_cli(*FAST, *recipe, "-sm", "use", "--weights", other_weights)
    one_error_line(code, stderr, "was collected for other weights (fingerprint", "again with -sm collect")
    code, _, stderr = run_cli(*FAST, "--qtype", "int4", "-qw", "int4", "-sf", folder, "-sm", "use")
    assert code == 0, stderr                         # the same weights: statistics serve without the rounding too
    (folder / "fmnist_resnet20.per_tensor.output.stats.pt").unlink()
    (folder / "fmnist_resnet20.per_channel.output.stats.pt").unlink()
    code, _, stderr = run_cli(*FAST, "--qtype", "int4", "-qw", "int4", "-sf", folder, "-sm", "collect", "-cs", "32",
                              "--weights", other_weights)
    assert code == 0, stderr                         # statistics of the other weights now, the rounding still ours
    code, _, stderr = run_cli(*FAST, *recipe, "-sm", "use", "--weights", other_weights)
    one_error_line(code, stderr, "was learned for other weights (fingerprint", "--adaround -sm collect")


def test_statistics_refuse_another_collection_recipe(run_cli, tmp_path):
    folder = tmp_path / "stats"
    code, _, stderr = run_cli(*FAST, "--qtype", "int4", "-sf", folder, "-sm", "collect", "-cs", "32", "-sba")
    assert code == 0, stderr
    code, _, stderr = run_cli(*FAST, "--qtype", "int4", "-sf", folder, "-sm", "use")
    assert code == 0, stderr                         # how it was collected does not matter for a plain run ...
    code, _, stderr = run_cli(*FAST, "--qtype", "int4", "-sf", folder, "-sm", "use", "--keep-8bit", "none")
    one_error_line(code, stderr, "was collected with keep_8bit ['conv1', 'fc'], this run's []")  # ... but this does


def test_statistics_measured_before_the_fused_activation_was_taken_into_account_are_refused(run_cli, tmp_path):
    """Files of measured clipping (here -c pct) written before the measurement took the fused ReLU
    into account recorded the method and bits only; their ranges start below 0, so they are refused."""
    folder = tmp_path / "stats"
    recipe = (*FAST, "--qtype", "int4", "-c", "pct", "-sf", folder)
    code, _, stderr = run_cli(*recipe, "-sm", "collect", "-cs", "32")
    assert code == 0, stderr
    for path in folder.iterdir():
        rewrite_statistics(path, path, lambda payload: payload["recipe"].__setitem__("measured_clipping", ["pct", 4]))
    code, _, stderr = run_cli(*recipe, "-sm", "use")
    one_error_line(code, stderr, "was collected with measured_clipping ['pct', 4], this run's ['pct', 4, \"within")


def test_the_default_statistics_folder_is_a_per_user_cache(run_cli, statistics_cache):
    code, _, stderr = run_cli(*FAST, "--qtype", "int8", "-sm", "collect", "-cs", "20")
    assert code == 0, stderr
    assert sorted(path.name for path in (statistics_cache / "statistics").iterdir()) == [
        "fmnist_resnet20.per_channel.output.stats.pt", "fmnist_resnet20.per_tensor.output.stats.pt"]


def written_modes(tmp_path, umask: int) -> dict[str, int]:
    """The permission bits of every file one CLI run writes, run under ``umask``."""
    out = tmp_path / f"umask{umask:o}"
    out.mkdir()
    argv = [sys.executable, "-m", "inference.inference_sim", *FAST, "--qtype", "int8", "-qw", "int8", "-sm", "collect",
            "-cs", "20", "-sf", str(out / "stats"), "--results-json", str(out / "results.json"),
            "--report-csv", str(out / "layers.csv"), "--export-onnx", str(out / "model.onnx")]
    done = subprocess.run(argv, capture_output=True, text=True, preexec_fn=lambda: os.umask(umask), timeout=300)
    assert done.returncode == 0, done.stderr
    return {str(path.relative_to(out)): stat.S_IMODE(path.stat().st_mode) for path in out.rglob("*") if path.is_file()}


def test_written_files_have_the_permissions_of_the_umask(tmp_path):
    shared, private = written_modes(tmp_path, 0o022), written_modes(tmp_path, 0o077)
    assert len(shared) == 6   # results, report, two statistics files, the model and its encodings
    assert all(mode == 0o644 for mode in shared.values()), shared
    assert all(mode == 0o600 for mode in private.values()), private


@pytest.mark.parametrize("runs", [2, 4])
def test_runs_started_at_once_on_a_fresh_store_all_finish_and_are_logged(tmp_path, runs):
    import sqlite3

    store = tmp_path / "mlruns" / "mlflow.db"
    store.parent.mkdir()
    environment = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    started = [subprocess.Popen([sys.executable, "-m", "inference.inference_sim", *FAST, "-ss", "20"],
                                env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for _ in range(runs)]
    failures = [process.communicate(timeout=600)[1] for process in started if process.wait(timeout=600) != 0]
    assert not failures, failures
    with sqlite3.connect(store) as connection:
        statuses = [status for (status,) in connection.execute("SELECT status FROM runs")]
    assert statuses == ["FINISHED"] * runs
