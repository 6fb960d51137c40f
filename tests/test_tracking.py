"""mlflow: every invocation is one run, read back with mlflow.search_runs; failures are FAILED."""
import mlflow


def runs(uri, experiment):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


def test_runs_are_logged_and_read_back_with_printed_accuracy(run_cli, tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    code, stdout, stderr = run_cli("-a", "fmnist_resnet20", "-ss", "300", "-p", "0", "-pcq_w", "-pcq_a", "--qtype", "int4",
                                   "-qw", "int4", "-c", "laplace", "-baa", "-baw", "-bcw", "-me",
                                   "--mlflow-uri", uri, "-mlexp", "w4a4")
    assert code == 0, stderr
    table = runs(uri, "w4a4")
    assert len(table) == 1 and table.loc[0, "status"] == "FINISHED"
    line = next(line for line in stdout.splitlines() if line.startswith(" * Prec@1"))
    top1, top5 = float(line.split()[2]), float(line.split()[4])
    assert round(table.loc[0, "metrics.top1"], 3) == top1 and round(table.loc[0, "metrics.top5"], 3) == top5
    entropy = next(line for line in stdout.splitlines() if line.startswith("Average bit rate: avg.entropy.act - "))
    assert abs(table.loc[0, "metrics.avg.entropy.act"] - float(entropy.split(" - ")[1].split()[0])) < 1e-4
    assert table.loc[0, "params.quantization.activations.bits"] == "4"
    assert table.loc[0, "tags.backend"] in ("kernels", "reference")
    assert table.loc[0, "tags.mlflow.runName"] == "fmnist_resnet20 W4A4 laplace baa baw bcw"
    assert table.loc[0, "tags.recipe"] == "W4A4 laplace baa baw bcw"


def test_bad_flags_leave_no_run_and_failures_are_marked_failed(run_cli, tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    code, _, _ = run_cli("-a", "fmnist_resnet20", "--qtype", "int33", "--mlflow-uri", uri, "-mlexp", "bad")
    assert code == 2
    mlflow.set_tracking_uri(uri)
    assert mlflow.get_experiment_by_name("bad") is None
    code, _, stderr = run_cli("-a", "fmnist_resnet20", "--weights", tmp_path / "missing.pt", "--mlflow-uri", uri,
                              "-mlexp", "fails")
    assert code == 2 and "does not exist" in stderr
    assert list(runs(uri, "fails").status) == ["FAILED"]
