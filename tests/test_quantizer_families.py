"""analysis/quantizer_families.py in quick mode: post-training and QAT rows of the other seeds'
kinds, one mlflow run each, resumable, and QAT above post-training at W2A2."""

import pandas as pd
import pytest




def test_quick_families_table_has_qat_above_post_training_and_resumes(tmp_path, monkeypatch):
    from analysis import quantizer_families
    from analysis import report

    out = tmp_path / "families"
    argv = ["--quick", "--models", "fmnist_resnet20", "--out", str(out), "--mlflow-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert quantizer_families.main(argv) == 0
    table = pd.read_csv(out / "families.csv")
    top1 = dict(zip(table["recipe"], table["top1"]))
    assert list(table["recipe"]) == list(quantizer_families.planned_rows(True, 1))
    for kind in ("apot W2A2", "n2uq W2A2"):
        assert top1[f"{kind}, QAT 1 epochs"] > top1[f"{kind}, post-training"]
    assert "| ternary (TWN) W2A32, QAT 1 epochs" in (out / "fmnist_resnet20.md").read_text()

    def must_not_run(*_):
        pytest.fail("a finished row ran again")

    monkeypatch.setattr(report, "run_row", must_not_run)
    assert quantizer_families.main(argv) == 0
