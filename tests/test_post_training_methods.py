"""analysis/post_training_methods.py in quick mode: nearest, AdaRound and block reconstruction rows,
one mlflow run each, learning time recorded, resumable."""

import pandas as pd
import pytest




def test_quick_methods_table_records_learning_and_resumes(tmp_path, monkeypatch):
    from analysis import post_training_methods
    from analysis import report

    out = tmp_path / "methods"
    argv = ["--quick", "--out", str(out), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert post_training_methods.main(argv) == 0
    table = pd.read_csv(out / "post_training_methods.csv").set_index("recipe")
    assert list(table.index) == list(post_training_methods.QUICK_ROWS)
    assert table.loc["W4A4, nearest rounding", "learn_seconds"] == 0
    for learned in ("W4A4, adaround", "W4A4, reconstruct block + QDrop 0.5"):
        assert table.loc[learned, "learn_seconds"] > 0
        assert table.loc[learned, "seconds"] >= table.loc[learned, "learn_seconds"]
    assert (table["agreement"] >= 90).all() and (table["fp32_top1"] > 90).all()
    assert "| W4A4, reconstruct block + QDrop 0.5" in (out / "fmnist_mobilenet.md").read_text()

    def must_not_run(*_):
        pytest.fail("a finished row ran again")

    monkeypatch.setattr(report, "run_row", must_not_run)
    assert post_training_methods.main(argv) == 0


def test_full_plan_has_every_method_at_both_precisions_with_learning_settings():
    from analysis import post_training_methods

    rows = post_training_methods.planned_rows("efficientnet_lite0", quick=False)
    assert len(rows) == 24 and len(post_training_methods.planned_rows("efficientnet_lite1", quick=False)) == 10
    assert rows["W4A4, reconstruct block + QDrop 0.5"].endswith("--qdrop 0.5 -cs 100 --recon-iters 200")
    assert "-cs" not in rows["W4A8, equalize"]
    assert "--recon-iters 500" in post_training_methods.planned_rows("fmnist_resnet20", quick=False)["W4A8, adaround"]
    assert post_training_methods.planned_rows("efficientnet_lite2", quick=False)["W4A4, adaround"].endswith(
        "--adaround -cs 16 --recon-iters 50")


@pytest.mark.parametrize("arch", ["fmnist_mobilenet", "efficientnet_lite0"])
def test_issue_27_rows_pass_the_cli_checks(arch, tmp_path):
    from analysis import post_training_methods
    from analysis.report import row_argv
    from inference.inference_sim import build_parser
    from inference.validation import validate

    rows = post_training_methods.scaled_rows(arch)
    assert rows["W4A4, reconstruct block + QDrop 0.5 + step sizes, 1000 steps"].endswith(
        "--learn-step-sizes -cs " + ("100" if arch.startswith("efficientnet") else "256") + " --recon-iters 1000")
    assert rows["W4A8, reconstruct block, 1000 steps"].endswith("--reconstruct block -cs " + (
        "100" if arch.startswith("efficientnet") else "256") + " --recon-iters 1000")
    steps = 200 if arch.startswith("efficientnet") else 500
    assert f"--step-size-lr {0.8 / steps:g} -cs" in rows["W4A4, reconstruct block + step sizes at 0.8 / steps"]
    assert "--qdrop" not in rows["W4A4, reconstruct block + step sizes at 0.8 / steps"]
    assert "-qw int2" in rows["W2A4, nearest rounding"] and "--qtype int3" in rows["W3A3, nearest rounding"]
    for flags in rows.values():
        spec, config = validate(build_parser().parse_args(row_argv(arch, flags, ["-b", "50"], tmp_path)))
        assert config is not None
