"""analysis/report.py in quick mode: one mlflow run per row, resumable, Markdown tables with the
seed-ordering sentence, and the ImageNet development rows replaced by the foolbox photos (with a
note) when ../shared is absent."""
import sqlite3

import pandas as pd
import pytest




def finished_runs(uri: str, experiment: str) -> int:
    with sqlite3.connect(uri[len("sqlite:///"):]) as connection:
        return connection.execute("SELECT COUNT(*) FROM runs JOIN experiments USING (experiment_id) "
                                  "WHERE experiments.name = ? AND status = 'FINISHED'", (experiment,)).fetchone()[0]


def test_quick_report_on_fashion_mnist_is_one_run_per_row_and_resumable(tmp_path, capsys, monkeypatch):
    from analysis import report

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--quick", "--models", "fmnist_resnet20", "--no-figures", "--out", str(tmp_path / "report"),
            "--mlflow-uri", uri, "--experiment", "quick-report"]
    assert report.main(argv) == 0
    table = pd.read_csv(tmp_path / "report" / "report.csv")
    assert list(table["recipe"]) == list(report.QUICK_ROWS)
    top1 = dict(zip(table["recipe"], table["top1"]))
    assert top1["FP32"] >= 90 and abs(top1["W8A8"] - top1["FP32"]) <= 1.0
    assert (table["images"] == 500).all()
    w8a8 = table[table["recipe"] == "W8A8"].iloc[0]
    assert w8a8["agreement"] >= 98 and w8a8["act_bits"] == w8a8["weight_bits"] == 8
    assert finished_runs(uri, "quick-report") == len(report.QUICK_ROWS) + 1  # the rows and the statistics collection
    markdown = (tmp_path / "report" / "fmnist_resnet20.md").read_text()
    assert "python analysis/report.py --quick" in markdown and "Seed's ordering: naive" in markdown
    assert "| W4A4 naive" in markdown

    def must_not_run(*_):
        pytest.fail("a finished row ran again")

    monkeypatch.setattr(report, "run_row", must_not_run)
    assert report.main(argv) == 0
    assert pd.read_csv(tmp_path / "report" / "report.csv").equals(table)


def test_without_the_development_photos_the_report_says_so_and_uses_the_foolbox_photos(tmp_path, capsys, monkeypatch):
    from analysis import report

    monkeypatch.setattr(report, "DEVELOPMENT_PHOTOS", tmp_path / "absent")
    models, notes = report.plan_models(list(report.IMAGENET_MODELS), development_photos=False)
    assert models == ["efficientnet_lite0"]
    assert len(notes) == 1 and "ImageNet development rows skipped" in notes[0] and str(tmp_path / "absent") in notes[0]
    assert report.plan_models(["fmnist_resnet20"], development_photos=False) == (["fmnist_resnet20"], [])
    assert report.data_flags("efficientnet_lite0", False, quick=True) == ["--calib-holdout", "5", "-b", "15"]
    assert "--calib-holdout" in report.data_flags("efficientnet_lite0", True, quick=False)


def test_the_ordering_sentence_reads_the_rows():
    from analysis import report

    table = pd.DataFrame({"recipe": ["W4A4 naive", report.SEED_FULL, "4-bit activations, 2-std clipping",
                                     "W4A4 + bias corr (W) only", "the same with offline statistics"],
                          "top1": [60.0, 73.0, 15.0, 62.0, 74.0]})
    sentence = report.ordering_sentence(table)
    assert sentence == ("Seed's ordering: 2-std clipping is far below naive (15.00 vs 60.00); 1 of 1 methods alone "
                        "lie in (naive 60.00, full 73.00]; offline statistics are within 2 points of the full "
                        "recipe (74.00).")


def test_skipped_rows_are_not_run_and_the_table_lists_them_as_not_run(tmp_path, monkeypatch):
    from analysis import report

    ran = []

    def fake_row(argv, results, experiment, mlflow_uri):
        ran.append(argv)
        return {**report.EMPTY_RESULT, "top1": 90.0, "top5": 99.0, "images": 10, "eval_seconds": 1.0}

    monkeypatch.setattr(report, "run_row", fake_row)
    out = tmp_path / "report"
    assert report.main(["--models", "fmnist_resnet20", "--no-figures", "--out", str(out),
                        "--skip-rows", "*mse clipping", "*kld*"]) == 0
    table = pd.read_csv(out / "report.csv")
    assert list(table["recipe"]) == [label for label in report.ROWS if "mse" not in label and "kld" not in label]
    assert len([argv for argv in ran if "collect" not in argv]) == len(report.ROWS) - 2
    assert "Not run yet: W4A4 + mse clipping; W4A4 + kld clipping." in (out / "fmnist_resnet20.md").read_text()


def test_a_skip_pattern_matching_no_row_is_refused(capsys):
    from analysis import report

    with pytest.raises(SystemExit) as exit_info:
        report.main(["--skip-rows", "*kdl*", "--no-figures"])
    assert exit_info.value.code == 2
    assert "--skip-rows '*kdl*' matches no row" in capsys.readouterr().err


def test_quick_report_without_the_development_photos_runs_the_foolbox_photos_and_says_why(tmp_path, capsys,
                                                                                          monkeypatch):
    from analysis import report

    monkeypatch.setattr(report, "DEVELOPMENT_PHOTOS", tmp_path / "absent")
    out = tmp_path / "report"
    assert report.main(["--quick", "--models", "efficientnet_lite0", "efficientnet_lite2", "--no-figures",
                        "--out", str(out), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 0
    printed = capsys.readouterr().out
    assert f"ImageNet development rows skipped: {tmp_path / 'absent'} does not exist" in printed
    table = pd.read_csv(out / "report.csv")
    assert set(table["model"]) == {"efficientnet_lite0"} and (table["images"] == 15).all()
    assert list(table["recipe"]) == list(report.QUICK_ROWS)
    assert "the 20 ImageNet photos shipped in foolbox" in (out / "efficientnet_lite0.md").read_text()


def test_update_docs_replaces_only_the_marked_block(tmp_path):
    from analysis import report

    page = tmp_path / "results.md"
    page.write_text(f"intro\n{report.REPORT_BEGIN}\nold table\n{report.REPORT_END}\noutro\n")
    report.update_docs(page, ["### fmnist_resnet20\n\n| a |\n", "### efficientnet_lite0\n\n| b |\n"])
    text = page.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{report.REPORT_END}\noutro\n") and "old table" not in text
    assert "#### fmnist_resnet20" in text and "#### efficientnet_lite0" in text
    page.write_text("no markers\n")
    with pytest.raises(ValueError, match="needs one <!-- report tables: begin -->"):
        report.update_docs(page, ["x"])
