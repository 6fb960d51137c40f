"""analysis/onnx_deployment.py in quick mode: one exported and verified row, resumable."""

import pandas as pd
import pytest




def test_quick_deployment_table_agrees_with_the_simulator_and_resumes(tmp_path, monkeypatch):
    from analysis import onnx_deployment
    from analysis import report

    argv = ["--quick", "--out", str(tmp_path), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert onnx_deployment.main(argv) == 0
    (row,) = pd.read_csv(tmp_path / "onnx_deployment.csv").to_dict("records")
    assert row["agreement %"] >= 99.0 and abs(row["onnxruntime top-1"] - row["simulator top-1"]) <= 1.0
    assert row["integer kernels"] > 0 and (tmp_path / "models" / "fmnist_mobilenet.W8A8.onnx").is_file()

    def must_not_run(*_):
        pytest.fail("a finished row ran again")

    monkeypatch.setattr(report, "run_row", must_not_run)
    assert onnx_deployment.main(argv) == 0
