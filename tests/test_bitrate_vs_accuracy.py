"""analysis/bitrate_vs_accuracy.py: the quick sweep writes its CSV and figure; flags are checked."""
import importlib.util

import pandas as pd
import pytest
from conftest import REPO_ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("bitrate_vs_accuracy", REPO_ROOT / "analysis" / "bitrate_vs_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_5_3_target_reproduces_the_seed_row(script):
    seed_row = next(flags for kind, _, _, flags in script.recipes([5.3], [4]) if kind == script.BIN_ALLOCATION)
    assert " ".join(seed_row) == script.EXPERIMENTS[script.SEED_ROW]
    uniform = next(flags for _, _, _, flags in script.recipes([], [6]))
    assert " ".join(uniform).count("int6") == 2 and "-me" in uniform and "-mtq" not in uniform
    assert "-bata" not in uniform and "-sm" not in uniform  # per-batch statistics, as the seed row


def test_quick_sweep_writes_table_and_figure(script, tmp_path, capsys):
    assert script.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "bitrate_vs_accuracy.csv")
    assert list(table.columns) == script.COLUMNS
    bins = table[table["kind"] == script.BIN_ALLOCATION]
    assert sorted(bins["target_bits"]) == list(script.QUICK_TARGETS)
    assert list(table.loc[table["kind"] == script.UNIFORM, "recipe"]) == ["W4A4"]
    assert (table["model"] == "fmnist_resnet20").all() and (table["images"] == 200).all()
    assert table["top1"].between(0, 100).all()
    for kind in ("act", "weight"):
        entropy, huffman = table[f"entropy_{kind}"], table[f"huffman_{kind}"]
        assert (entropy > 0).all()
        # an optimal prefix code: H <= L < H + 1 per layer, hence for element-weighted averages
        assert (entropy <= huffman + 1e-9).all() and (huffman < entropy + 1).all()
    # measured on these runs (not a theorem for pooled, averaged codes with 8-bit layers; see the docstring)
    assert (bins["entropy_act"] <= bins["target_bits"] + 1e-6).all()
    # more bins, more information per code
    ordered = bins.sort_values("target_bits")
    assert ordered["entropy_act"].is_monotonic_increasing
    figure = tmp_path / "fmnist_resnet20.png"
    assert figure.read_bytes()[:8] == PNG_MAGIC
    assert "| bin alloc 5.3" in out and "entropy_act <= target: holds" in out


@pytest.mark.parametrize("argv", [["--bogus"], ["--targets", "9"], ["--targets", "0"], ["--models", "resnet50"],
                                  ["--images", "0"], ["--uniform", "1"]])
def test_bad_flags_exit_2(script, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        script.main(argv)
    assert stop.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_out_naming_a_file_exits_2(script, tmp_path):
    target = tmp_path / "file.csv"
    target.write_text("")
    with pytest.raises(SystemExit) as stop:
        script.main(["--quick", "--out", str(target)])
    assert stop.value.code == 2
