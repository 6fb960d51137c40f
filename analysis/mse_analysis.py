"""ACIQ MSE analysis (Banner et al., NeurIPS 2019): the solved clipping constants against the
seed's, and the analytical MSE of clip + uniform quantization against a Monte-Carlo simulation.

    python analysis/mse_analysis.py --prior both --bits 2 3 4 --out results/mse_analysis

The analytical MSE of M-bit quantization of a tensor clipped to [-alpha, alpha] (``pytorch_quantizer.maths.aciq``):

    Laplace(0, b):      2 b^2 exp(-alpha / b)                                  + alpha^2 / (3 * 4^M)
    Gaussian(0, sigma): (alpha^2 + sigma^2) (1 - erf(alpha / (sqrt(2) sigma)))
                        - sqrt(2 / pi) alpha sigma exp(-alpha^2 / (2 sigma^2)) + alpha^2 / (3 * 4^M)

The first term is the clipping noise, integral over |x| > alpha of (|x| - alpha)^2 f(x): a clipped value is
represented exactly by +-alpha. The second is the rounding noise Delta^2 / 12 of a step Delta = 2 alpha / 2^M
(2^M bins over [-alpha, alpha]). The quantizer that has both properties, and the one simulated by default
(``--grid midtread``, the seed's own simulation), rounds the clipped value to the nearest multiple of Delta:

    Q(x) = Delta * round(clip(x, -alpha, alpha) / Delta),    Delta = 2 alpha / 2^M

whose grid -alpha, -alpha + Delta, ..., alpha holds 2^M bins (2^M + 1 points, both ends included).
Two grids of exactly 2^M levels are offered for comparison; the formula underestimates both at low M:
``midrise`` (the 2^M bin centres -alpha + (k + 1/2) Delta: clipped values land Delta / 2 inside alpha) and
``gemmlowp`` (2^M levels from -alpha to alpha, step 2 alpha / (2^M - 1): the simulator's integer grid).

Samples are drawn with unit scale (b = 1, sigma = 1); both MSEs scale with b^2 (sigma^2), so alpha is
reported in units of b (sigma). One draw per prior serves every alpha and M (common random numbers).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pytorch_quantizer.maths.aciq import PRIORS, SEED_RATIOS, mse_formula, optimal_ratio
from analysis.runs import output_folder

REPO_ROOT = Path(__file__).resolve().parent.parent

TABLE_BITS = tuple(range(1, 9))
GRIDS = ("midtread", "midrise", "gemmlowp")
DEFAULT_SAMPLES = 1_000_000
DEFAULT_POINTS = 61
QUICK_SAMPLES = 200_000
QUICK_POINTS = 21
ALPHA_SPAN = (0.3, 2.0)  # the plotted alpha range, as multiples of the optimum
PRIOR_NAMES = {"laplace": ("Laplace", "b"), "gaus": ("Gaussian", "sigma")}


def aciq_table(bits: tuple[int, ...] = TABLE_BITS) -> pd.DataFrame:
    """alpha* / b (Laplace) and alpha* / sigma (Gaussian) solved by the library, the seed's truncated
    constants, ``diff = solved - seed`` and ``seed_excess = MSE(seed) / MSE(solved) - 1``, the relative
    MSE the truncation costs (unit scale, the formulas above)."""
    rows = []
    for m in bits:
        row: dict[str, float] = {"bits": m}
        for prior in PRIORS:
            solved = optimal_ratio(prior, float(m))
            seed = SEED_RATIOS[(prior, False)][m]
            best = float(mse_formula(prior, solved, 1.0, m))
            row |= {f"{prior}_solved": solved, f"{prior}_seed": seed, f"{prior}_diff": solved - seed,
                    f"{prior}_seed_excess": float(mse_formula(prior, seed, 1.0, m)) / best - 1}
        rows.append(row)
    return pd.DataFrame(rows).astype({"bits": int})


def draw_samples(prior: str, samples: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """``samples`` draws of Laplace(0, scale) (scale = b = E|x|) or Normal(0, scale) (scale = sigma)."""
    if prior == "laplace":
        return rng.laplace(0.0, scale, samples)
    if prior == "gaus":
        return rng.normal(0.0, scale, samples)
    raise ValueError(f"unknown prior {prior!r}; use one of {PRIORS}")


def quantize(x: np.ndarray, alpha: float, bits: int, grid: str = "midtread") -> np.ndarray:
    """Clip x to [-alpha, alpha] and round to the nearest level of the grid (module docstring):
    midtread Delta * round(c / Delta), Delta = 2 alpha / 2^M;
    midrise  -alpha + (k + 1/2) Delta, k = clamp(floor((c + alpha) / Delta), 0, 2^M - 1);
    gemmlowp -alpha + round((c + alpha) / D) D, D = 2 alpha / (2^M - 1)."""
    clipped = np.clip(x, -alpha, alpha)
    if grid == "midtread":
        step = 2 * alpha / 2**bits
        return np.round(clipped / step) * step
    if grid == "midrise":
        step = 2 * alpha / 2**bits
        return -alpha + (np.clip(np.floor((clipped + alpha) / step), 0, 2**bits - 1) + 0.5) * step
    if grid == "gemmlowp":
        step = 2 * alpha / (2**bits - 1)
        return -alpha + np.round((clipped + alpha) / step) * step
    raise ValueError(f"unknown grid {grid!r}; use one of {GRIDS}")


def empirical_mse(x: np.ndarray, alpha: float, bits: int, grid: str = "midtread") -> float:
    """mean((x - Q(x))^2) over the samples x."""
    return float(np.mean(np.square(x - quantize(x, alpha, bits, grid))))


def simulate_mse(prior: str, alpha: float, bits: int, samples: int, rng: np.random.Generator,
                 scale: float = 1.0, grid: str = "midtread") -> float:
    """Monte-Carlo estimate of E[(x - Q(x))^2] from ``samples`` fresh draws of the prior."""
    return empirical_mse(draw_samples(prior, samples, rng, scale), alpha, bits, grid)


def alpha_grid(prior: str, bits: int, points: int, scale: float = 1.0) -> np.ndarray:
    """``points`` alphas evenly spaced over ALPHA_SPAN times the analytical optimum alpha*."""
    best = optimal_ratio(prior, float(bits)) * scale
    return np.linspace(ALPHA_SPAN[0] * best, ALPHA_SPAN[1] * best, points)


def mse_curves(prior: str, bits: tuple[int, ...], x: np.ndarray, points: int, scale: float = 1.0,
               grid: str = "midtread") -> pd.DataFrame:
    """Analytical and simulated MSE (on the samples x) over the alpha grid of each M:
    columns prior, bits, alpha, analytical, simulated."""
    rows = [{"prior": prior, "bits": m, "alpha": float(alpha),
             "analytical": float(mse_formula(prior, alpha, scale, m)),
             "simulated": empirical_mse(x, float(alpha), m, grid)}
            for m in bits for alpha in alpha_grid(prior, m, points, scale)]
    return pd.DataFrame(rows)


def optimum_comparison(prior: str, bits: tuple[int, ...], x: np.ndarray, scale: float = 1.0,
                       grid: str = "midtread") -> pd.DataFrame:
    """At the analytical optimum alpha* = r(M) * scale: the analytical and simulated MSE and
    ``relative_difference = simulated / analytical - 1``."""
    rows = []
    for m in bits:
        alpha = optimal_ratio(prior, float(m)) * scale
        analytical = float(mse_formula(prior, alpha, scale, m))
        simulated = empirical_mse(x, alpha, m, grid)
        rows.append({"prior": prior, "bits": m, "alpha_opt": alpha, "analytical": analytical,
                     "simulated": simulated, "relative_difference": simulated / analytical - 1})
    return pd.DataFrame(rows)


def plot_curves(curves: pd.DataFrame, optimum: pd.DataFrame, path: Path, grid: str = "midtread") -> Path:
    """One panel per M (four per row): the analytical MSE curve, the simulated points, the analytical
    optimum alpha* and the grid's simulated minimum (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    prior = str(curves["prior"].iloc[0])
    name, unit = PRIOR_NAMES[prior]
    bits = list(dict.fromkeys(curves["bits"]))
    columns = min(len(bits), 4)
    rows = -(-len(bits) // columns)
    figure = Figure(figsize=(4.5 * columns, 4.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes in panels[len(bits):]:
        axes.set_visible(False)
    for axes, m in zip(panels, bits):
        curve = curves[curves["bits"] == m]
        best = optimum[optimum["bits"] == m].iloc[0]
        axes.plot(curve["alpha"], curve["analytical"], "-", color="tab:red", label="analysis")
        axes.plot(curve["alpha"], curve["simulated"], "o", color="tab:blue", markersize=3,
                  label=f"simulation ({grid})")
        axes.axvline(best["alpha_opt"], color="grey", linestyle=":", linewidth=1)
        axes.plot([best["alpha_opt"]], [best["analytical"]], "*", color="black", markersize=12,
                  label=f"optimum alpha* = {best['alpha_opt']:.4f} {unit}")
        lowest = curve.loc[curve["simulated"].idxmin()]
        axes.plot([lowest["alpha"]], [lowest["simulated"]], "D", color="tab:blue", markerfacecolor="none",
                  markersize=9, label=f"simulated minimum ({lowest['alpha']:.2f} {unit})")
        axes.set_yscale("log")
        axes.set_title(f"{name}, M = {m} bits")
        axes.set_xlabel(f"clipping value alpha (units of {unit})")
        axes.set_ylabel("mean square error")
        axes.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _bounded_int(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value} is not {bounds}")
        return value

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", choices=(*PRIORS, "both"), default="both")
    parser.add_argument("--bits", type=_bounded_int(1, 8), nargs="+", default=[2, 3, 4],
                        help="bit widths M of the simulation and the plots (1..8)")
    parser.add_argument("--samples", type=_bounded_int(1000), default=None,
                        help=f"Monte-Carlo samples per prior (default {DEFAULT_SAMPLES}, --quick {QUICK_SAMPLES})")
    parser.add_argument("--points", type=_bounded_int(3), default=None,
                        help=f"alphas per curve (default {DEFAULT_POINTS}, --quick {QUICK_POINTS})")
    parser.add_argument("--seed", type=_bounded_int(0), default=0)
    parser.add_argument("--grid", choices=GRIDS, default="midtread",
                        help="simulated quantizer grid; midtread is the one the formula models")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: results/mse_analysis; with --quick results/quick/mse_analysis)")
    parser.add_argument("--quick", action="store_true", help="small sample and grid sizes (tests, CI)")
    args = parser.parse_args(argv)
    args.out, problem = output_folder(args.out, "mse_analysis", args.quick)
    if problem is not None:
        parser.error(problem)
    if args.samples is None:
        args.samples = QUICK_SAMPLES if args.quick else DEFAULT_SAMPLES
    if args.points is None:
        args.points = QUICK_POINTS if args.quick else DEFAULT_POINTS
    args.bits = tuple(dict.fromkeys(args.bits))
    return args


@dataclass(frozen=True)
class PriorResult:
    """The simulation of one prior: ``optimum`` (optimum_comparison) and ``curves`` (mse_curves)."""

    optimum: pd.DataFrame
    curves: pd.DataFrame


def run_analysis(priors: tuple[str, ...], bits: tuple[int, ...], samples: int, points: int, seed: int,
                 grid: str = "midtread") -> dict[str, PriorResult]:
    """One unit-scale draw of ``samples`` per prior, in the order given, from numpy's default_rng(seed);
    the comparison at the optimum and the MSE curves of every M on it."""
    rng = np.random.default_rng(seed)
    results = {}
    for prior in priors:
        x = draw_samples(prior, samples, rng)
        results[prior] = PriorResult(optimum_comparison(prior, bits, x, grid=grid),
                                     mse_curves(prior, bits, x, points, grid=grid))
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    priors = PRIORS if args.prior == "both" else (args.prior,)
    table = aciq_table()
    excess = [column for column in table.columns if column.endswith("_seed_excess")]
    print("ACIQ optimal clipping alpha* / b (Laplace), alpha* / sigma (Gaussian): solved vs the seed's constants")
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.to_string(index=False, float_format="{:.4f}".format,
                              formatters={column: "{:.1e}".format for column in excess}))
    results = run_analysis(priors, args.bits, args.samples, args.points, args.seed, args.grid)
    print(f"\nMonte-Carlo ({args.samples} samples per prior, grid {args.grid}, seed {args.seed}) at alpha*:")
    for prior, result in results.items():
        unit = PRIOR_NAMES[prior][1]
        for row in result.optimum.itertuples():
            print(f"{prior} M={row.bits}: alpha* = {row.alpha_opt:.4f} {unit}, analytical MSE {row.analytical:.6g}, "
                  f"simulated MSE {row.simulated:.6g}, relative difference {100 * row.relative_difference:+.2f} %")
        print(f"wrote {plot_curves(result.curves, result.optimum, args.out / f'mse_{prior}.png', args.grid)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
