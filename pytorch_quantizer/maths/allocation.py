"""Per-channel bit allocation (eq. 11) and bin allocation (eq. 10) of Banner et al.

C channels with scale alpha_i (sigma for a Gaussian prior, b for a Laplace prior) share a quota of
B = C * 2^M bins. Minimising sum_i alpha_i^2 / (3 * 4^{M_i}) subject to sum_i 2^{M_i} = B gives

    2^{M_i} = B * alpha_i^{2/3} / sum_j alpha_j^{2/3}.

Bin allocation keeps these real bin counts B_i (for mid-tread grids). Bit allocation rounds
log2(B_i) (round or ceil) and clamps to [0, 8]; the mean then misses M, so the target is adjusted:

- the seed's loop (``seed_allocate_bits``): target <- target + (M - mean) / 2, at most ten times or
  until |M - mean| <= 0.01, returning the last allocation (whose mean may still miss M);
- budget-exact (``allocate_bits``, the departure ``exact_bit_budget``): a bisection on the target,
  then the remaining integer difference goes to the channels whose real log2 value is nearest to
  the next level (this keeps larger alpha -> never fewer bits).
"""
from __future__ import annotations

import torch

MAX_ALLOCATED_BITS = 8


def bin_shares(alpha: torch.Tensor) -> torch.Tensor:
    """alpha_i^{2/3} / sum_j alpha_j^{2/3} (equal shares when all alpha are 0)."""
    weights = torch.clamp(alpha.double(), min=0.0) ** (2.0 / 3.0)
    total = weights.sum()
    return weights / total if total > 0 else torch.full_like(weights, 1.0 / len(weights))


def allocate_bins(alpha: torch.Tensor, target_bits: float) -> torch.Tensor:
    """Real bin counts B_i = C * 2^M * share_i (eq. 10)."""
    return (len(alpha) * 2.0**target_bits * bin_shares(alpha)).float()


def ideal_bits(alpha: torch.Tensor, target_bits: float) -> torch.Tensor:
    return torch.log2(torch.clamp(len(alpha) * 2.0**target_bits * bin_shares(alpha), min=1e-30))


def rounded_bits(values: torch.Tensor, rounding: str) -> torch.Tensor:
    rounded = torch.ceil(values) if rounding == "ceil" else torch.round(values)
    return torch.clamp(rounded, 0, MAX_ALLOCATED_BITS)


SEED_ADJUSTMENTS = 10
SEED_TOLERANCE = 0.01


def seed_allocate_bits(alpha: torch.Tensor, target_bits: float, rounding: str = "round") -> torch.Tensor:
    """The seed's allocation (float32, as its code): bits = clamp(round(log2(B_i)), 0, 8) at an
    adjusted target, last of at most ten adjustments (module docstring)."""
    target = float(target_bits)
    for _ in range(SEED_ADJUSTMENTS):
        bits = rounded_bits(ideal_bits(alpha.float(), target).float(), rounding)
        step = (target_bits - float(bits.mean())) / 2
        target += step
        if abs(2 * step) <= SEED_TOLERANCE:
            break
    return bits.float()


def allocate_bits(alpha: torch.Tensor, target_bits: float, rounding: str = "round") -> torch.Tensor:
    """Integer bits per channel (eq. 11) whose mean is the target to within 1 / (2C)."""
    if rounding not in ("round", "ceil"):
        raise ValueError(f"rounding must be 'round' or 'ceil', got {rounding!r}")
    if not 0 <= target_bits <= MAX_ALLOCATED_BITS:
        raise ValueError(f"bit allocation target must be within [0, {MAX_ALLOCATED_BITS}], got {target_bits}")
    channels = len(alpha)
    wanted_total = round(target_bits * channels)
    low, high = target_bits - MAX_ALLOCATED_BITS - 1, target_bits + MAX_ALLOCATED_BITS + 1
    for _ in range(60):
        middle = (low + high) / 2
        if rounded_bits(ideal_bits(alpha, middle), rounding).sum() > wanted_total:
            high = middle
        else:
            low = middle
    values = ideal_bits(alpha, low)
    bits = rounded_bits(values, rounding)
    missing = int(wanted_total - bits.sum())
    residual = values - bits
    if missing > 0:
        order = torch.argsort(torch.where(bits < MAX_ALLOCATED_BITS, residual, torch.full_like(residual, -1e30)), descending=True)
        bits[order[:missing]] += 1
    elif missing < 0:
        order = torch.argsort(torch.where(bits > 0, residual, torch.full_like(residual, 1e30)))
        bits[order[:-missing]] -= 1
    return bits.float()
