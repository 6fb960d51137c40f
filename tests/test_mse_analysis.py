"""analysis/mse_analysis.py: the solved ACIQ constants, analysis against simulation, PNGs and flags."""
import contextlib
import io

import numpy as np
import pytest

from analysis import mse_analysis
from pytorch_quantizer.maths.aciq import mse_formula, optimal_ratio

# DESIGN.md section 3, "ACIQ clipping": alpha* / b and alpha* / sigma for M = 1..8 (numerical minimum)
# and the seed's truncated constants.
LAPLACE = [1.8628, 2.8307, 3.8972, 5.0286, 6.2048, 7.4131, 8.6456, 9.8968]
GAUSSIAN = [1.2399, 1.7106, 2.1516, 2.5591, 2.9362, 3.2869, 3.6151, 3.9240]
SEED_LAPLACE = [1.86, 2.83, 3.89, 5.03, 6.2, 7.41, 8.64, 9.89]
SEED_GAUSSIAN = [1.24, 1.71, 2.15, 2.55, 2.93, 3.28, 3.61, 3.92]
QUICK_BITS = (2, 3, 4)  # the default --bits
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """main() in quick mode, once for the module: (exit code, stdout, output folder)."""
    out = tmp_path_factory.mktemp("mse_analysis")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = mse_analysis.main(["--quick", "--out", str(out)])
    return code, printed.getvalue(), out


@pytest.fixture(scope="module")
def quick_results():
    """The numbers main() prints in quick mode (same draws: seed 0, priors in order)."""
    return mse_analysis.run_analysis(mse_analysis.PRIORS, QUICK_BITS, mse_analysis.QUICK_SAMPLES,
                                     mse_analysis.QUICK_POINTS, seed=0)


def test_solved_ratios_match_the_design_constants():
    table = mse_analysis.aciq_table()
    assert list(table["bits"]) == list(range(1, 9))
    assert np.allclose(table["laplace_solved"], LAPLACE, atol=1e-3, rtol=0)
    assert np.allclose(table["gaus_solved"], GAUSSIAN, atol=1e-3, rtol=0)
    assert list(table["laplace_seed"]) == SEED_LAPLACE
    assert list(table["gaus_seed"]) == SEED_GAUSSIAN
    assert np.allclose(table["laplace_diff"], table["laplace_solved"] - table["laplace_seed"])
    # the solved constant is the minimum, so the seed's truncation can only cost MSE, and very little
    for prior in mse_analysis.PRIORS:
        assert ((table[f"{prior}_seed_excess"] >= 0) & (table[f"{prior}_seed_excess"] < 1e-3)).all()


def test_simulation_matches_the_analysis_at_the_optimum(quick_results):
    for result in quick_results.values():
        optimum = result.optimum
        assert list(optimum["bits"]) == list(QUICK_BITS)
        assert (optimum["relative_difference"].abs() < 0.10).all(), optimum
        curves = result.curves
        assert len(curves) == len(QUICK_BITS) * mse_analysis.QUICK_POINTS
        # the analytical optimum is the analytical curve's minimum over the plotted grid
        for m in QUICK_BITS:
            curve = curves[curves["bits"] == m]
            assert curve["analytical"].min() >= optimum.loc[optimum["bits"] == m, "analytical"].iloc[0] - 1e-12


def test_grids_of_exactly_2m_levels_exceed_the_formula_at_low_bits():
    """The formula models the mid-tread grid; the 2^M-level grids cost more, clearly so at 2 bits."""
    x = mse_analysis.draw_samples("laplace", 50_000, np.random.default_rng(1))
    alpha = optimal_ratio("laplace", 2.0)
    analytical = float(mse_formula("laplace", alpha, 1.0, 2))
    for grid in ("midrise", "gemmlowp"):
        levels = np.unique(mse_analysis.quantize(x, alpha, 2, grid))
        assert len(levels) == 4
        assert mse_analysis.empirical_mse(x, alpha, 2, grid) > 1.2 * analytical
    assert len(np.unique(mse_analysis.quantize(x, alpha, 2, "midtread"))) == 5


def test_main_prints_the_table_and_the_comparison(quick_run, quick_results):
    code, printed, _ = quick_run
    assert code == 0
    assert "laplace_solved" in printed and "gaus_seed" in printed
    row = quick_results["laplace"].optimum.iloc[0]
    line = next(line for line in printed.splitlines() if line.startswith("laplace M=2:"))
    assert line == (f"laplace M=2: alpha* = 2.8307 b, analytical MSE {row['analytical']:.6g}, "
                    f"simulated MSE {row['simulated']:.6g}, "
                    f"relative difference {100 * row['relative_difference']:+.2f} %")


def test_main_writes_one_png_per_prior(quick_run):
    _, printed, out = quick_run
    for prior in mse_analysis.PRIORS:
        path = out / f"mse_{prior}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert f"wrote {path}" in printed


@pytest.mark.parametrize("argv", [["--prior", "cauchy"], ["--bits", "0"], ["--bits", "9"], ["--samples", "10"],
                                  ["--points", "x"], ["--seed", "-1"], ["--grid", "log"]])
def test_bad_flags_exit_2_with_one_error_line(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        mse_analysis.main(argv)
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
