"""Synthetic two-channel bit allocation (Banner et al., NeurIPS 2019, per-channel bit allocation).

    python analysis/bit_allocation_synthetic.py                  # Laplace prior, M = 4, into results/
    python analysis/bit_allocation_synthetic.py --prior gaus --bits 3 --out /tmp/alloc
    python analysis/bit_allocation_synthetic.py --quick          # fewer samples (the test's setting)

Two channels i and j share a quota of B = 2 * 2^M bins. Channel i gets the fraction f of it
(bins_i = f B, bins_j = (1 - f) B, real-valued as in the seed's experiment, so M_i = log2(bins_i)).
Minimising the quantization noise

    sum_c alpha_c^2 / (3 * 4^{M_c})   subject to   sum_c 2^{M_c} = B

gives 2^{M_i} = B * alpha_i^{2/3} / sum_c alpha_c^{2/3}, i.e. the optimal fraction
f* = alpha_i^{2/3} / (alpha_i^{2/3} + alpha_j^{2/3}) (the library's ``allocation.bin_shares``).

Choices of this experiment:

- Data: zero-mean Laplace(0, b) (``--prior laplace``) or Gaussian(0, sigma) (``--prior gaus``)
  samples; the channel scale s_c is b or sigma. The scales are s_c = w_c^{3/2}, so that
  s_i^{2/3} : s_j^{2/3} = w_i : w_j for the ratios 2:1, 1:2 and 1:1.
- Clipping (``--clip fixed``, the default): each channel is clipped at its ACIQ value for the mean
  bit width M, alpha_c = r(M) * s_c with r = ``aciq.optimal_ratio(prior, M)``, whatever its share.
  alpha_c is then proportional to s_c, so bin_shares(alpha) == bin_shares(s) and the prediction
  is the same whether alpha means the clipping value or the scale (the library passes the scale).
  The clipping error is then constant in f and only the noise term above moves: this is the
  model eq. 11 optimises.
- ``--clip own-bits``: each channel is clipped at the ACIQ value of its own real M_i,
  alpha_c = r(M_c) * s_c (what the simulator does with bit allocation). The clipping value then
  grows with the share, the optimal per-channel MSE falls slower than 4^{-M} and the optimum moves
  away from f* towards the wider channel (2:1 at M = 4: about 0.71 for Laplace, 0.70 for Gaussian,
  instead of 2/3); shown for comparison, it is not the model the paper optimises.
- Quantizer: mid-tread rounding with step Delta_c = 2 alpha_c / bins_c (real-valued, like the
  seed's experiment), then clipping: x_hat = clip(round(x / Delta_c) * Delta_c, -alpha_c, alpha_c).
  Inside the range the rounding noise is Delta_c^2 / 12 = alpha_c^2 / (3 * 4^{M_c}) for fine grids;
  beyond it the error is exactly (|x| - alpha_c)^2, the ACIQ clipping term. (Clipping first and
  rounding after would send the clipped mass to the level round(alpha_c / Delta_c) Delta_c, whose
  offset from alpha_c jumps with the real bins_c and puts steps into the curves. The library's
  ``primitives.fake_quantize_mid_tread`` uses K = floor((B - 1) / 2) whole levels, which makes the
  MSE a staircase in B; it is meant for deployment, not for this continuous experiment.)
- Simulated MSE: the mean over ``--samples`` draws per channel (a numpy Generator seeded by
  ``--seed``) of (x - x_hat)^2, summed over the two channels; the same draws serve every f.
- Analytical MSE: ``aciq.mse_formula(prior, alpha_c, s_c, M_c)`` summed over the two channels.

The empirical optimum is the grid point of smallest MSE on ``--points`` fractions spread evenly
over [0.15, 0.85] (the seed's range).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from analysis.runs import output_folder, write_csv

REPO_ROOT = Path(__file__).resolve().parent.parent

PRIORS = ("laplace", "gaus")
CLIPPINGS = ("fixed", "own-bits")
CHANNEL_WEIGHTS = ((2.0, 1.0), (1.0, 2.0), (1.0, 1.0))  # alpha_i^{2/3} : alpha_j^{2/3}
FRACTION_RANGE = (0.15, 0.85)
DEFAULT_SAMPLES = 1_000_000
DEFAULT_POINTS = 141
QUICK_SAMPLES = 200_000
QUICK_POINTS = 71


def ratio_label(weights: tuple[float, float]) -> str:
    """'2:1' for the weights (2, 1) of alpha_i^{2/3} : alpha_j^{2/3}."""
    return ":".join(f"{weight:g}" for weight in weights)


def channel_scales(weights: tuple[float, float]) -> np.ndarray:
    """Scales s_c = w_c^{3/2}, so that s_c^{2/3} = w_c."""
    return np.asarray(weights, dtype=np.float64) ** 1.5


def draw_samples(prior: str, scale: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` draws of Laplace(0, b = scale) or Gaussian(0, sigma = scale)."""
    if prior == "laplace":
        return rng.laplace(0.0, scale, count)
    if prior == "gaus":
        return rng.normal(0.0, scale, count)
    raise ValueError(f"unknown prior {prior!r}; use one of {PRIORS}")


def fraction_grid(points: int) -> np.ndarray:
    """``points`` fractions f of the quota for channel i, evenly over FRACTION_RANGE."""
    return np.linspace(*FRACTION_RANGE, points)


def predicted_fraction(scales: np.ndarray) -> float:
    """f* = s_i^{2/3} / (s_i^{2/3} + s_j^{2/3}) from the library's ``bin_shares``."""
    import torch

    from pytorch_quantizer.maths.allocation import bin_shares

    return float(bin_shares(torch.as_tensor(scales))[0])


def predicted_bits(scales: np.ndarray, bits: float) -> np.ndarray:
    """M_c = log2(2 * 2^M * share_c) (the library's ``ideal_bits``, eq. 11 before rounding)."""
    import torch

    from pytorch_quantizer.maths.allocation import ideal_bits

    return ideal_bits(torch.as_tensor(scales), bits).numpy()


def clipping_values(prior: str, scales: np.ndarray, channel_bits: np.ndarray, mean_bits: float,
                    clip: str) -> np.ndarray:
    """alpha_c = r(M) * s_c (``fixed``) or r(M_c) * s_c (``own-bits``), r = ACIQ's optimal ratio."""
    from pytorch_quantizer.maths.aciq import optimal_ratio

    if clip == "fixed":
        return optimal_ratio(prior, float(mean_bits)) * scales
    if clip == "own-bits":
        return np.array([optimal_ratio(prior, float(m)) for m in channel_bits]) * scales
    raise ValueError(f"unknown clipping {clip!r}; use one of {CLIPPINGS}")


def clip_quantize(x: np.ndarray, alpha: float, bins: float) -> np.ndarray:
    """x_hat = clip(round(x / Delta) * Delta, -alpha, alpha) with Delta = 2 alpha / bins: the levels
    k Delta inside (-alpha, alpha) plus the clipping values +-alpha themselves."""
    step = 2.0 * alpha / bins
    return np.clip(np.round(x / step) * step, -alpha, alpha)


def simulated_mse(x: np.ndarray, alpha: float, bins: float) -> float:
    """Monte-Carlo mean of (x - x_hat)^2."""
    return float(np.mean((x - clip_quantize(x, alpha, bins)) ** 2))


def analytical_mse(prior: str, alpha: np.ndarray, scales: np.ndarray, channel_bits: np.ndarray) -> float:
    """sum_c of the ACIQ formula: Laplace 2 b^2 exp(-alpha/b) + alpha^2 / (3 * 4^M), or the
    Gaussian one (``aciq.mse_formula``)."""
    from pytorch_quantizer.maths.aciq import mse_formula

    return float(sum(mse_formula(prior, float(a), float(s), float(m))
                     for a, s, m in zip(alpha, scales, channel_bits)))


def sweep_ratio(prior: str, weights: tuple[float, float], bits: float, samples: int, fractions: np.ndarray,
                rng: np.random.Generator, clip: str = "fixed"):
    """One row per fraction f: bins, bits, clipping values, simulated and analytical total MSE."""
    import pandas as pd

    scales = channel_scales(weights)
    data = [draw_samples(prior, float(scale), samples, rng) for scale in scales]
    quota = 2 * 2.0**bits
    rows = []
    for fraction in fractions:
        bins = np.array([fraction * quota, (1.0 - fraction) * quota])
        channel_bits = np.log2(bins)
        alpha = clipping_values(prior, scales, channel_bits, bits, clip)
        rows.append({
            "ratio": ratio_label(weights), "fraction": float(fraction),
            "bins_i": bins[0], "bins_j": bins[1], "bits_i": channel_bits[0], "bits_j": channel_bits[1],
            "alpha_i": alpha[0], "alpha_j": alpha[1],
            "simulated_mse": sum(simulated_mse(x, a, n) for x, a, n in zip(data, alpha, bins)),
            "analytical_mse": analytical_mse(prior, alpha, scales, channel_bits),
        })
    return pd.DataFrame(rows)


def sweep(prior: str, bits: float, samples: int, points: int, seed: int, clip: str = "fixed"):
    """The curves of the three ratios (CHANNEL_WEIGHTS), one Generator(seed) drawing in turn."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    fractions = fraction_grid(points)
    return pd.concat([sweep_ratio(prior, weights, bits, samples, fractions, rng, clip) for weights in CHANNEL_WEIGHTS],
                     ignore_index=True)


def optima(curves, bits: float):
    """Per ratio: the predicted f* (bin_shares) and M_i, M_j (ideal_bits) beside the fractions of
    smallest simulated and analytical MSE, and |simulated optimum - f*|."""
    import pandas as pd

    rows = []
    for weights in CHANNEL_WEIGHTS:
        curve = curves[curves["ratio"] == ratio_label(weights)]
        scales = channel_scales(weights)
        prediction = predicted_fraction(scales)
        bits_i, bits_j = predicted_bits(scales, bits)
        simulated = float(curve["fraction"].iloc[int(np.argmin(curve["simulated_mse"].to_numpy()))])
        analytical = float(curve["fraction"].iloc[int(np.argmin(curve["analytical_mse"].to_numpy()))])
        rows.append({"ratio": ratio_label(weights), "scale_i": scales[0], "scale_j": scales[1],
                     "predicted_fraction": prediction, "predicted_bits_i": float(bits_i),
                     "predicted_bits_j": float(bits_j), "simulated_optimum": simulated,
                     "analytical_optimum": analytical, "simulated_error": abs(simulated - prediction)})
    return pd.DataFrame(rows)


def plot(curves, best, path: Path, title: str) -> Path:
    """MSE against f for each ratio (simulated solid, analytical dashed, log scale), the prediction
    f* as a dotted vertical line and the simulated minimum as a dot; written as a PNG (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = ("tab:blue", "tab:red", "tab:green")
    for colour, (_, row) in zip(colours, best.iterrows()):
        curve = curves[curves["ratio"] == row["ratio"]]
        label = rf"$\alpha_i^{{2/3}}:\alpha_j^{{2/3}}$ = {row['ratio']}"
        axes.plot(curve["fraction"], curve["simulated_mse"], color=colour, linewidth=2, label=f"{label} simulated")
        axes.plot(curve["fraction"], curve["analytical_mse"], color=colour, linestyle="--", linewidth=1,
                  label=f"{label} analytical")
        axes.axvline(row["predicted_fraction"], color=colour, linestyle=":", linewidth=1)
        minimum = curve["simulated_mse"].min()
        axes.plot([row["simulated_optimum"]], [minimum], "o", color=colour)
    axes.set_yscale("log")
    axes.set_xlabel("fraction of the bins allocated to channel i")
    axes.set_ylabel("total mean square error")
    axes.set_title(title)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", choices=PRIORS, default="laplace", help="data distribution (default laplace)")
    parser.add_argument("--bits", type=float, default=4.0, help="mean bits M; the quota is 2 * 2^M bins (default 4)")
    parser.add_argument("--samples", type=int, default=None,
                        help=f"draws per channel (default {DEFAULT_SAMPLES}, --quick {QUICK_SAMPLES})")
    parser.add_argument("--points", type=int, default=None,
                        help=f"fractions in {list(FRACTION_RANGE)} (default {DEFAULT_POINTS}, --quick {QUICK_POINTS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the numpy Generator (default 0)")
    parser.add_argument("--clip", choices=CLIPPINGS, default="fixed",
                        help="clip at the ACIQ value of the mean bits (fixed, default) or of each channel's own bits")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: results/bit_allocation_synthetic; with --quick "
                             "results/quick/bit_allocation_synthetic)")
    parser.add_argument("--quick", action="store_true", help="fewer samples and fractions (for tests)")
    args = parser.parse_args(argv)
    args.out, problem = output_folder(args.out, "bit_allocation_synthetic", args.quick)
    if problem is not None:
        parser.error(problem)
    if args.samples is None:
        args.samples = QUICK_SAMPLES if args.quick else DEFAULT_SAMPLES
    if args.points is None:
        args.points = QUICK_POINTS if args.quick else DEFAULT_POINTS
    if not 1 <= args.bits <= 8:
        parser.error(f"--bits must be within [1, 8], got {args.bits}")
    if args.samples < 1:
        parser.error(f"--samples must be positive, got {args.samples}")
    if args.points < 3:
        parser.error(f"--points must be at least 3, got {args.points}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    curves = sweep(args.prior, args.bits, args.samples, args.points, args.seed, args.clip)
    best = optima(curves, args.bits)
    stem = f"bit_allocation_{args.prior}_{args.bits:g}bit_{args.clip}"
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(curves, args.out / f"{stem}_curves.csv")
    write_csv(best, args.out / f"{stem}_optima.csv")
    title = f"{args.prior}, B = 2 x 2^{args.bits:g} bins, clip {args.clip}, {args.samples} samples"
    image = plot(curves, best, args.out / f"{stem}.png", title)
    print(f"prior {args.prior}, M = {args.bits:g} (quota {2 * 2**args.bits:g} bins), clip {args.clip}, "
          f"{args.samples} samples per channel, {args.points} fractions, seed {args.seed}")
    print(best.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    print(f"wrote {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
