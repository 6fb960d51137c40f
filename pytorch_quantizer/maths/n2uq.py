"""N2UQ (Liu et al., CVPR 2022): non-uniform input thresholds, uniform output levels, and the
generalized straight-through estimator (G-STE). Pure functions plus one autograd function.

Parameters of a b-bit quantizer (K = 2^b output levels): knots T_0 < T_1 < ... < T_{K-1} written
as a start T_0 and positive interval lengths a_i = T_i - T_{i-1} (i = 1 .. K-1), and a uniform
output grid y_k = offset + step * k.

Forward: k(x) = #{i : x >= m_i}, m_i = (T_{i-1} + T_i) / 2 the non-uniform input thresholds;
y = offset + step * k(x). Every output is one of the K uniform levels.

Backward (G-STE): the gradient of the ramp surrogate
    g(x) = offset + step * sum_i clip((x - T_{i-1}) / a_i, 0, 1),
the expectation of rounding stochastically inside each interval, whose steps the forward takes at
the interval midpoints. Hence, for x in [T_{i-1}, T_i): dy/dx = step / a_i (0 outside
[T_0, T_{K-1})); dy/da_i = -step (x - T_{i-1}) / a_i^2 for x in interval i and -step / a_j for x in
a later interval j (moving a_i shifts every later knot); dy/dT_0 = -step / a_j in interval j;
dy/d offset = 1; dy/d step = g's sum.

Post-training calibration: Lloyd-Max on calibration values constrained to uniform outputs. With
the outputs fixed, Lloyd's condition puts each threshold at the midpoint of its two output levels;
with the cells fixed, the best uniform grid is the least-squares fit of the cell means (weighted by
their counts). Alternating from the unconstrained Lloyd-Max (1-D k-means) centroids converges to
the mean-squared-error optimal uniform grid, so the calibrated knots are the output levels and the
thresholds start uniform: they become non-uniform in QAT (G-STE). The unconstrained centroids with
uniform outputs instead map every cell to a level far from its mean (on ReLU outputs, 14.5 % top-1
for W4A4 on 200 Fashion-MNIST images against 93.5 % for the constrained fit). The offset is fixed at
0 for non-negative values, so zero stays exact after a ReLU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIN_INTERVAL = 1e-8


@dataclass(frozen=True)
class N2UQParams:
    """start T_0, interval lengths a (K - 1,), and the output grid (offset, step)."""

    start: torch.Tensor
    intervals: torch.Tensor
    offset: torch.Tensor
    step: torch.Tensor

    @property
    def knots(self) -> torch.Tensor:
        return torch.cat([self.start.reshape(1), self.start + torch.cumsum(self.intervals, 0)])

    @property
    def thresholds(self) -> torch.Tensor:
        """m_i = (T_{i-1} + T_i) / 2, the input thresholds of the forward."""
        knots = self.knots
        return (knots[:-1] + knots[1:]) / 2


def forward_levels(x: torch.Tensor, params: N2UQParams) -> torch.Tensor:
    """offset + step * #{i : x >= m_i} (no gradient)."""
    thresholds = params.thresholds.detach().to(x.dtype).contiguous()
    count = torch.searchsorted(thresholds, x.detach().contiguous(), right=True)
    return params.offset.detach() + params.step.detach() * count.to(x.dtype)


def ramp_surrogate(x: torch.Tensor, params: N2UQParams) -> torch.Tensor:
    """g(x) = offset + step * sum_i clip((x - T_{i-1}) / a_i, 0, 1) (the G-STE surrogate)."""
    intervals = params.intervals.clamp_min(MIN_INTERVAL)
    lower = params.knots[:-1]
    shape = (-1, *([1] * x.dim()))
    ramps = ((x.unsqueeze(0) - lower.reshape(shape)) / intervals.reshape(shape)).clamp(0, 1)
    return params.offset + params.step * ramps.sum(dim=0)


def n2uq_quantize(x: torch.Tensor, params: N2UQParams) -> torch.Tensor:
    """Forward values of ``forward_levels`` with the gradients of ``ramp_surrogate`` (G-STE)."""
    surrogate = ramp_surrogate(x, params)
    return surrogate + (forward_levels(x, params) - surrogate).detach()


def lloyd_max_centroids(values: torch.Tensor, levels: int, seed: int = 0, max_samples: int = 200_000) -> np.ndarray:
    """Sorted 1-D k-means (Lloyd-Max on the empirical distribution) centroids of ``values``;
    with at most ``levels`` distinct values, the knots are those values, interpolated linearly to
    ``levels`` knots where there are fewer (a constant gives knots 1 apart)."""
    from sklearn.cluster import KMeans

    flat = values.detach().flatten().double().cpu().numpy()
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        raise ValueError("no finite calibration values to place the N2UQ thresholds")
    if flat.size > max_samples:
        flat = np.random.default_rng(seed).choice(flat, max_samples, replace=False)
    distinct = np.unique(flat)
    if distinct.size == 1:
        return distinct[0] + np.arange(levels, dtype=np.float64)
    if distinct.size <= levels:
        return np.interp(np.linspace(0, distinct.size - 1, levels), np.arange(distinct.size), distinct)
    fitted = KMeans(n_clusters=levels, n_init=1, random_state=seed).fit(flat.reshape(-1, 1))
    return np.sort(fitted.cluster_centers_.ravel())


def fit_grid(codes: np.ndarray, targets: np.ndarray, weights: np.ndarray, non_negative: bool) -> tuple[float, float]:
    """(offset, step) minimising sum_k w_k (targets_k - offset - step k)^2 (offset 0 when non-negative)."""
    if non_negative:
        return 0.0, float((weights * codes) @ targets / max((weights * codes) @ codes, MIN_INTERVAL))
    step, offset = np.polyfit(codes, targets, 1, w=np.sqrt(weights))
    return float(offset), float(step)


def calibrate(values: torch.Tensor, bits: int, seed: int = 0, iterations: int = 50) -> N2UQParams:
    """Lloyd-Max constrained to uniform outputs (see the module docstring): start from the k-means
    centroids and their least-squares grid, then alternate cells = the thresholds between output
    levels and (offset, step) = the least-squares grid of the cell means weighted by their counts,
    until the cells stop changing. The knots are the output levels, so the thresholds are their
    midpoints (Lloyd's condition); QAT then moves them off the uniform grid."""
    if bits < 1:
        raise ValueError(f"N2UQ needs at least 1 bit, got {bits}")
    levels = 2 ** bits
    centroids = lloyd_max_centroids(values, levels, seed)
    samples = values.detach().flatten().double().cpu().numpy()
    samples = samples[np.isfinite(samples)]
    codes = np.arange(levels, dtype=np.float64)
    non_negative = bool(centroids[0] >= 0)
    offset, step = fit_grid(codes, centroids, np.ones(levels), non_negative)
    cells = None
    for _ in range(iterations):
        step = max(step, MIN_INTERVAL)
        thresholds = offset + step * (codes[1:] - 0.5)
        new_cells = np.searchsorted(thresholds, samples, side="right")
        if cells is not None and np.array_equal(new_cells, cells):
            break
        cells = new_cells
        counts = np.bincount(cells, minlength=levels).astype(np.float64)
        sums = np.bincount(cells, weights=samples, minlength=levels)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), offset + step * codes)
        offset, step = fit_grid(codes, means, counts + 1e-12, non_negative)
    step = max(step, MIN_INTERVAL)
    as_tensor = lambda value: torch.tensor(value, dtype=torch.float32)  # noqa: E731
    return N2UQParams(start=as_tensor(offset), intervals=as_tensor(np.full(levels - 1, step)), offset=as_tensor(offset),
                      step=as_tensor(step))
