"""analysis/cross_validated.py: every fold one run on its own part, pooled figures the image-weighted
means, resumable; the full plan's folds pass the CLI's checks."""
import numpy as np
import pandas as pd
import pytest


def test_quick_folds_pool_and_resume(tmp_path, monkeypatch):
    from analysis import cross_validated, report

    out = tmp_path / "cv"
    argv = ["--quick", "--out", str(out), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert cross_validated.main(argv) == 0
    table = pd.read_csv(out / "cross_validated.csv", dtype={"fold": str})
    assert list(table["fold"]) == ["1", "2", "1-2 pooled"] * 2
    for _, rows in table.groupby("recipe"):
        folds, pooled = rows[rows["fold"] != "1-2 pooled"], rows[rows["fold"] == "1-2 pooled"].iloc[0]
        assert (folds["images"] == 100).all() and pooled["images"] == 200
        assert pooled["top1"] == pytest.approx(folds["top1"].mean())
        assert pooled["fp32_top1"] > 85 and pooled["agreement"] >= 90
    learned = table[(table["recipe"] == "W4A4, adaround") & (table["fold"] != "1-2 pooled")]
    assert (learned["learn_seconds"] > 0).all()
    assert "| W4A4, adaround" in (out / "fmnist_mobilenet.md").read_text()

    def must_not_run(*_):
        pytest.fail("a finished fold ran again")

    monkeypatch.setattr(report, "run_row", must_not_run)
    assert cross_validated.main(argv) == 0


def test_pooled_figures_weigh_folds_by_their_images():
    from analysis.cross_validated import pooled, table

    folds = pd.DataFrame({"recipe": ["r"] * 3, "fold": ["1", "2", "3"], "images": [100, 300, 50],
                          "top1": [80.0, 90.0, 60.0], "top5": [90.0, 95.0, 85.0], "agreement": [85.0, 95.0, 70.0],
                          "kl": [0.2, 0.1, 0.4], "fp32_top1": [85.0, 88.0, 70.0], "learn_seconds": [10.0, 20.0, 5.0],
                          "seconds": [12.0, 25.0, 6.0]})
    whole = pooled(folds, "all")
    assert whole["images"] == 450 and whole["learn_seconds"] == 35.0
    assert whole["top1"] == pytest.approx(np.average([80, 90, 60], weights=[100, 300, 50]))
    assert whole["kl"] == pytest.approx(np.average([0.2, 0.1, 0.4], weights=[100, 300, 50]))
    rows = table(folds, 3)
    assert list(rows["fold"]) == ["1", "2", "3", "1-3 pooled", "2-3 pooled"]
    assert rows.iloc[-1]["top1"] == pytest.approx(np.average([90, 60], weights=[300, 50]))


def test_full_plan_learns_on_400_photos_of_each_fold_and_passes_the_cli_checks(tmp_path):
    from analysis.cross_validated import FULL, RECIPES, fold_argv
    from inference.inference_sim import build_parser
    from inference.validation import validate

    assert list(RECIPES) == ["W4A8, reconstruct block", "W4A4, reconstruct block", "W4A4, reconstruct block + QDrop 0.5"]
    for flags in RECIPES.values():
        argv = fold_argv(FULL, flags, 3, tmp_path)
        text = " ".join(argv)
        assert "--calib-fold 3/5" in text and text.endswith("-cs 400 --recon-iters 200 --compare-fp32")
        spec, config = validate(build_parser().parse_args(argv))
        assert config is not None
