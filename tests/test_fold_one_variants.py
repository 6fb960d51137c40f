"""analysis/fold_one_variants.py: every variant one run on part 1 only, compared with the first row,
resumable; the full plan evaluates the photos the other tables hold out and passes the CLI's checks."""
import pandas as pd
import pytest


def test_quick_variants_run_on_part_one_against_the_baseline_and_resume(tmp_path, monkeypatch):
    from analysis import fold_one_variants, report

    out = tmp_path / "variants"
    argv = ["--quick", "--out", str(out), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert fold_one_variants.main(argv) == 0
    table = pd.read_csv(out / "fold_one_variants.csv", dtype={"fold": str})
    assert list(table["recipe"]) == list(fold_one_variants.QUICK_VARIANTS)
    assert (table["fold"] == "1").all() and (table["images"] == 100).all()
    assert table.iloc[0]["kl_change"] == 0 and table.iloc[0]["agreement_change"] == 0
    assert table.iloc[1]["kl_change"] == pytest.approx(table.iloc[1]["kl"] - table.iloc[0]["kl"])
    assert (table["learn_seconds"] > 0).all() and (table["agreement"] >= 90).all()
    assert "| + folded activation bias correction" in (out / "fmnist_mobilenet.md").read_text()

    def must_not_run(*_):
        pytest.fail("a finished variant ran again")

    monkeypatch.setattr(report, "run_row", must_not_run)
    assert fold_one_variants.main(argv) == 0


def test_finished_only_without_the_baseline_is_refused(tmp_path, capsys):
    from analysis import fold_one_variants

    argv = ["--quick", "--finished-only", "--out", str(tmp_path / "none")]
    assert fold_one_variants.main(argv) == 2
    assert "the baseline has not run yet: run without --finished-only" in capsys.readouterr().err


def test_full_plan_evaluates_part_one_learned_on_100_photos_and_passes_the_cli_checks(tmp_path):
    from analysis.cross_validated import fold_argv
    from analysis.fold_one_variants import FULL, VARIANTS
    from inference.inference_sim import build_parser
    from inference.validation import validate

    assert next(iter(VARIANTS.values())) == "--qtype int4 -c laplace -qw int4 -pcq_w -bcw --reconstruct block"
    for flags in VARIANTS.values():
        argv = fold_argv(FULL, flags, 1, tmp_path)
        text = " ".join(argv)
        assert "-b 50 --calib-fold 1/5" in text
        assert text.endswith("-cs 100 --recon-iters 200 --compare-fp32" if "--reconstruct" in flags else
                             "-cs 100 --compare-fp32" if "-sm collect" in flags else "-bcw --compare-fp32")
        spec, config = validate(build_parser().parse_args(argv))
        assert config is not None


@pytest.mark.parametrize("script", ["cross_validated", "fold_one_variants"])
def test_full_plans_without_the_development_photos_are_refused_before_writing(script, tmp_path, monkeypatch, capsys):
    import importlib

    module = importlib.import_module(f"analysis.{script}")
    missing = tmp_path / "imagenet-sample"
    monkeypatch.setitem(module.FULL, "photos", missing)
    out = tmp_path / "out"
    assert module.main(["--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"{script}.py: error: {missing} does not exist (it lies beside the repository as ../shared); these rows "
        "need the development photos, or run --quick")
    assert not out.exists()
