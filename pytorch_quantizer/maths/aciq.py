"""ACIQ analytical clipping (Banner et al.): the clipping value alpha that minimises the expected
mean-square error of M-bit uniform quantization of a Laplace or Gaussian tensor.

Laplace(mu, b):   E[(x - Q(x))^2] ~= 2 b^2 exp(-alpha / b) + alpha^2 / (3 * 4^M)
Gaussian(mu, s):  E[(x - Q(x))^2] ~= (alpha^2 + s^2) (1 - erf(alpha / (sqrt(2) s)))
                                     - sqrt(2 / pi) alpha s exp(-alpha^2 / (2 s^2)) + alpha^2 / (3 * 4^M)

Both scale with b (or s), so alpha* = r(M) * b. r(M) is found numerically (scipy): the root of
d MSE / d alpha on a bracket, i.e. r = 3 * 4^M * exp(-r) for Laplace and
r * (erfc(r / sqrt(2)) + 1 / (3 * 4^M)) = sqrt(2 / pi) * exp(-r^2 / 2) for Gaussian.
Real-valued M (bin allocation) is served from a table on a 1/64-bit grid, interpolated linearly;
the table includes every integer M exactly. Everything is solved on first use and cached.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

PRIORS = ("laplace", "gaus")
GRID_STEP = 1.0 / 64
GRID_MAX_BITS = 17.0


def laplace_mse(alpha: float | np.ndarray, b: float, bits: float) -> float | np.ndarray:
    return 2 * b**2 * np.exp(-alpha / b) + alpha**2 / (3 * 4.0**bits)


def laplace_mse_gemmlowp(alpha: float | np.ndarray, b: float, bits: float) -> float | np.ndarray:
    """The Laplace MSE for the grid GEMMLOWP really uses: 2^M - 1 steps of 2 alpha / (2^M - 1), so the
    rounding term is (2 alpha / (2^M - 1))^2 / 12 instead of the paper's alpha^2 / (3 * 4^M)."""
    step = 2 * alpha / (2.0**bits - 1)
    return 2 * b**2 * np.exp(-alpha / b) + step**2 / 12


def gaussian_mse(alpha: float | np.ndarray, sigma: float, bits: float) -> float | np.ndarray:
    from scipy.special import erf

    clip = (alpha**2 + sigma**2) * (1 - erf(alpha / (math.sqrt(2) * sigma)))
    clip -= math.sqrt(2 / math.pi) * alpha * sigma * np.exp(-alpha**2 / (2 * sigma**2))
    return clip + alpha**2 / (3 * 4.0**bits)


def mse_formula(prior: str, alpha, scale: float, bits: float):
    """The analytical MSE of the prior with scale parameter b (Laplace) or sigma (Gaussian)."""
    return laplace_mse(alpha, scale, bits) if prior == "laplace" else gaussian_mse(alpha, scale, bits)


def mse_derivative(prior: str, ratio: float, bits: float) -> float:
    """d MSE / d alpha at alpha = ratio (unit scale), halved."""
    from scipy.special import erfc

    quantization = ratio / (3 * 4.0**bits)
    if prior == "laplace":
        return -math.exp(-ratio) + quantization
    return ratio * erfc(ratio / math.sqrt(2)) - math.sqrt(2 / math.pi) * math.exp(-ratio**2 / 2) + quantization


@lru_cache(maxsize=None)
def optimal_ratio(prior: str, bits: float) -> float:
    """alpha* / b (Laplace) or alpha* / sigma (Gaussian) for ``bits`` (may be fractional)."""
    from scipy.optimize import brentq

    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; use one of {PRIORS}")
    return float(brentq(lambda ratio: mse_derivative(prior, ratio, bits), 1e-6, 60.0, xtol=1e-12))


@lru_cache(maxsize=None)
def ratio_table(prior: str) -> tuple[np.ndarray, np.ndarray]:
    grid = np.arange(0.0, GRID_MAX_BITS + GRID_STEP / 2, GRID_STEP)
    return grid, np.array([optimal_ratio(prior, float(bits)) for bits in grid])


# The seed's constants (its int_quantizer), by bit width: the optima above truncated to two
# decimals; the "positive" tables (non-negative tensors) hold the constant of M + 1 bits.
SEED_RATIOS = {
    ("laplace", False): {0: 1.05, 1: 1.86, 2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89},
    ("laplace", True): {0: 1.86, 1: 2.83, 2: 3.89, 3: 5.02, 4: 6.2, 5: 7.41, 6: 8.64, 7: 9.89, 8: 11.16},
    ("gaus", False): {1: 1.24, 2: 1.71, 3: 2.15, 4: 2.55, 5: 2.93, 6: 3.28, 7: 3.61, 8: 3.92},
    ("gaus", True): {1: 1.71, 2: 2.15, 3: 2.55, 4: 2.93, 5: 3.28, 6: 3.61, 7: 3.92, 8: 4.2},
}


@lru_cache(maxsize=None)
def seed_ratio_lookup(prior: str, non_negative: bool) -> torch.Tensor:
    """The seed's ratio of 0..17 bits, the solved one where its table has none."""
    table = SEED_RATIOS[(prior, non_negative)]
    shift = 1 if non_negative else 0
    return torch.tensor([table.get(bits, optimal_ratio(prior, float(min(bits + shift, GRID_MAX_BITS))))
                         for bits in range(int(GRID_MAX_BITS) + 1)], dtype=torch.float32)


def seed_ratios(prior: str, bits: torch.Tensor, non_negative: bool) -> torch.Tensor:
    """The seed's ratio of each (integer) bit width; widths its table lacks (fractional ones of bin
    allocation, above 8, Gaussian at 0) take the solved optimum of M (M + 1 when non-negative)."""
    bits = bits.float()
    lookup = seed_ratio_lookup(prior, non_negative).to(bits.device)
    whole = torch.round(bits)
    tabled = lookup[whole.clamp(0, GRID_MAX_BITS).long()]
    solved = optimal_ratios(prior, bits + 1.0 if non_negative else bits)
    return torch.where(whole == bits, tabled, solved)


def optimal_ratios(prior: str, bits: torch.Tensor) -> torch.Tensor:
    """alpha* / scale for a tensor of (possibly fractional) bit widths, within [0, 17] bits."""
    grid, ratios = ratio_table(prior)
    values = np.interp(bits.detach().cpu().double().numpy(), grid, ratios)
    return torch.as_tensor(values, dtype=torch.float32, device=bits.device)
