"""Clipping methods: each turns statistics (and, for some, the tensor) into a range [lo, hi].

Registry: ``@register_clipping(name)``; ``list_clipping()``; ``get_clipping(name)`` also resolves
``Kstd`` names (``2std``, ``2.5std``: alpha = K * sigma).

ACIQ (``laplace``, ``gaus``): alpha = r(M') * b (Laplace, b = E|x - mu|) or r(M') * sigma
(Gaussian), M' = M for signed tensors and M + 1 for non-negative ones (the M-bit grid then covers
one tail only). r is the seed's truncated table (``aciq.seed_ratio``) or, with the departure
``exact_aciq``, the numerical optimum. Ranges (``range_around_mean``), the seed's:

    signed:        lo = max(min, mu - alpha), hi = lo + 2 alpha
    non-negative:  lo = 0,                    hi = max(mu, 0) + alpha

With ``range_within_data`` the signed range is [max(min, mu - alpha), min(max, mu + alpha)] and hi
never exceeds max. With ``rectified_aciq`` a non-negative tensor is modelled as ReLU(prior) with the
scale of its positive part (``TensorStats.rectified_b`` / ``rectified_std``) and clipped to
[0, alpha]: for ReLU(Laplace(0, b)) the positive part is exponential with mean b, and the M + 1
constant is exactly the optimum of 2 b^2 exp(-alpha / b) + alpha^2 / (12 * 4^M) on [0, alpha].

Methods that need the values themselves (``kld``, ``mix``, ``pct``, ``mse``) implement ``measure``,
which the statistics observer can run per batch so that offline statistics carry their result.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch

from pytorch_quantizer.maths import aciq
from pytorch_quantizer.maths.departures import Departures
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.maths.primitives import fake_quantize_range
from pytorch_quantizer.maths.stats import TensorStats

RangeFn = Callable[[TensorStats, torch.Tensor, bool, Departures], tuple[torch.Tensor, torch.Tensor]]
MeasureFn = Callable[[torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ClippingMethod:
    """``clip_range(stats, bits, non_negative, departures) -> (lo, hi)``; ``measure(rows, bits,
    non_negative)`` (rows: the (C, N) view of the tensor) for methods that need the values."""

    name: str
    clip_range: RangeFn
    measure: MeasureFn | None = None
    description: str = ""

    @property
    def needs_values(self) -> bool:
        return self.measure is not None


_CLIPPING: dict[str, ClippingMethod] = {}
KSTD_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)std$")


def register_clipping(name: str, description: str, measure: MeasureFn | None = None):
    def decorator(function: RangeFn) -> RangeFn:
        if name in _CLIPPING:
            raise ValueError(f"clipping method {name} registered twice")
        _CLIPPING[name] = ClippingMethod(name, function, measure, description)
        return function
    return decorator


def list_clipping() -> list[str]:
    return sorted(_CLIPPING) + ["Kstd"]


def get_clipping(name: str) -> ClippingMethod:
    """The registered method, or a K-sigma method for names like ``2std`` / ``3.5std``."""
    if name in _CLIPPING:
        return _CLIPPING[name]
    match = KSTD_PATTERN.match(name)
    if match and float(match.group(1)) > 0:
        factor = float(match.group(1))
        return ClippingMethod(name, lambda stats, bits, non_negative, departures=MEASURED:
                              range_around_mean(stats, factor * stats.std, non_negative, departures),
                              description=f"alpha = {factor:g} sigma")
    raise QuantizationError(f"unknown clipping method {name!r}; use one of {', '.join(list_clipping())} (e.g. 2std)")


MEASURED = Departures.all()  # the value-measuring methods are this project's: ranges within the data


def range_around_mean(stats: TensorStats, alpha: torch.Tensor, non_negative: bool,
                      departures: Departures = Departures()) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's range of clipping value alpha (module docstring), or within [min, max] with
    ``departures.range_within_data``."""
    if departures.range_within_data:
        return range_within_data(stats.min, stats.max, stats.mean, alpha, non_negative)
    if non_negative:
        return torch.zeros_like(stats.min), torch.clamp(stats.mean, min=0.0) + alpha
    lo = torch.maximum(stats.min, stats.mean - alpha)
    return lo, lo + 2 * alpha


def range_within_data(minimum: torch.Tensor, maximum: torch.Tensor, mean: torch.Tensor, alpha: torch.Tensor,
                      non_negative: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[max(min, mu - alpha), min(max, mu + alpha)], or [0, min(max, max(mu, 0) + alpha)] for a
    non-negative tensor."""
    if non_negative:
        return torch.zeros_like(minimum), torch.minimum(maximum, torch.clamp(mean, min=0.0) + alpha)
    return torch.maximum(minimum, mean - alpha), torch.minimum(maximum, mean + alpha)


def effective_bits(bits: torch.Tensor, non_negative: bool) -> torch.Tensor:
    return bits.float() + 1.0 if non_negative else bits.float()


def aciq_scale(prior: str, stats: TensorStats, rectified: bool) -> torch.Tensor:
    """b (Laplace) or sigma (Gaussian) of the tensor, or of its positive part when ``rectified``."""
    if rectified:
        return stats.rectified_b if prior == "laplace" else stats.rectified_std
    return stats.b if prior == "laplace" else stats.std


def aciq_alpha(prior: str, stats: TensorStats, bits: torch.Tensor, non_negative: bool,
               departures: Departures = Departures()) -> torch.Tensor:
    """alpha = r(M') * scale: the seed's ratio table, or the solved optimum with ``exact_aciq``."""
    scale = aciq_scale(prior, stats, non_negative and departures.rectified_aciq)
    bits = torch.as_tensor(bits, dtype=torch.float32, device=scale.device).expand_as(scale)
    if departures.exact_aciq:
        ratios = aciq.optimal_ratios(prior, effective_bits(bits, non_negative))
    else:
        ratios = aciq.seed_ratios(prior, bits, non_negative)
    return ratios * scale


@register_clipping("no", "min/max range, no clipping")
def no_clipping(stats: TensorStats, bits: torch.Tensor, non_negative: bool, departures: Departures = Departures()):
    lo = torch.zeros_like(stats.min) if non_negative else stats.min
    return lo, stats.max


def aciq_range(prior: str, stats: TensorStats, bits: torch.Tensor, non_negative: bool, departures: Departures):
    alpha = aciq_alpha(prior, stats, bits, non_negative, departures)
    if non_negative and departures.rectified_aciq:
        return torch.zeros_like(stats.min), torch.minimum(stats.max, alpha) if departures.range_within_data else alpha
    return range_around_mean(stats, alpha, non_negative, departures)


@register_clipping("laplace", "ACIQ, Laplace prior: alpha = r_L(M) * b")
def laplace_clipping(stats: TensorStats, bits: torch.Tensor, non_negative: bool, departures: Departures = Departures()):
    return aciq_range("laplace", stats, bits, non_negative, departures)


@register_clipping("gaus", "ACIQ, Gaussian prior: alpha = r_G(M) * sigma")
def gaussian_clipping(stats: TensorStats, bits: torch.Tensor, non_negative: bool, departures: Departures = Departures()):
    return aciq_range("gaus", stats, bits, non_negative, departures)


def measured_range(name: str):
    """Range read from statistics that ``measure`` produced (stored as extra lo/hi entries)."""
    def clip_range(stats: TensorStats, bits: torch.Tensor, non_negative: bool, departures: Departures = Departures()):
        try:
            return stats.extra[f"{name}.lo"], stats.extra[f"{name}.hi"]
        except KeyError:
            raise QuantizationError(f"clipping {name!r} needs statistics measured with it; collect them with clipping "
                                    f"{name}", code="statistics_lack_clipping", detail=name) from None
    return clip_range


def rows_stats(rows: torch.Tensor) -> TensorStats:
    from pytorch_quantizer.maths.stats import compute_stats

    return compute_stats(rows, axis=0)


def quantization_mse(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per-row MSE of GEMMLOWP fake quantization over [lo, hi]."""
    bits = torch.as_tensor(bits, dtype=torch.float32).expand(rows.shape[0])
    quantized = fake_quantize_range(rows, lo, hi, bits, axis=0)
    return (quantized - rows).square().mean(dim=1)


def measure_mix(rows: torch.Tensor, bits: torch.Tensor, non_negative: bool):
    """For the whole tensor, the ranges of laplace, gaus or no clipping, whichever has the smallest measured MSE."""
    stats = rows_stats(rows)
    candidates = [method(stats, bits, non_negative, MEASURED)
                  for method in (laplace_clipping, gaussian_clipping, no_clipping)]
    errors = torch.stack([quantization_mse(rows, lo, hi, bits).sum() for lo, hi in candidates])
    return candidates[int(errors.argmin())]


MSE_SEARCH_FRACTIONS = 100
HISTOGRAM_CELLS = 1 << 22


def histogram_bins(bits: torch.Tensor, channels: int) -> int:
    """2^(M + 8) bins per row (256 per level of the widest grid: the binned MSE then stays within
    0.1 % of the exact one at 2-8 bits), at least 4,096 and at most 65,536, fewer where that many
    rows would hold more than 2^22 bins in all."""
    wanted = min(1 << 16, max(1 << 12, 1 << (int(torch.as_tensor(bits).max()) + 8)))
    return max(1 << 12, min(wanted, HISTOGRAM_CELLS // max(channels, 1)))


def binned_values(rows: torch.Tensor, bins: int, chunk_elements: int = 1 << 22,
                  bounds: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's values summarised in ``bins`` equal bins over its [min, max]: the count n, sum S1
    and sum of squares S2 of the values in each bin, float64, (C, bins). Rows of at most ``bins``
    values are returned as they are (each value a bin of its own). Built in chunks of columns, so
    memory stays at ``chunk_elements`` values whatever the tensor's size. ``bounds``: each row's
    (min, max), (C,) each, where the caller has them already (else measured here)."""
    channels, count = rows.shape
    if count <= bins:
        values = rows.double()
        return torch.ones_like(values), values, values.square()
    low, high = bounds if bounds is not None else (rows.amin(dim=1), rows.amax(dim=1))
    low, high = low.unsqueeze(1), high.unsqueeze(1)
    width = ((high - low) / bins).clamp(min=torch.finfo(torch.float32).tiny)
    offsets = torch.arange(channels, device=rows.device).unsqueeze(1) * bins
    size = channels * bins
    counts, sums, squares = (torch.zeros(size, dtype=torch.float64, device=rows.device) for _ in range(3))
    step = max(1, chunk_elements // channels)
    for start in range(0, count, step):
        part = rows[:, start:start + step]
        index = ((part - low) / width).floor_().clamp_(0, bins - 1).long().add_(offsets).reshape(-1)
        values = part.double().reshape(-1)
        counts += torch.bincount(index, minlength=size)
        sums += torch.bincount(index, weights=values, minlength=size)
        squares += torch.bincount(index, weights=values.square(), minlength=size)
    return counts.view(channels, bins), sums.view(channels, bins), squares.view(channels, bins)


def binned_quantization_mse(binned: tuple[torch.Tensor, torch.Tensor, torch.Tensor], lo: torch.Tensor,
                            hi: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per-row MSE of GEMMLOWP fake quantization over [lo, hi] from ``binned_values``: each bin's
    values are taken to the level q of their mean, sum (x - q)^2 = S2 - 2 q S1 + n q^2. Exact for
    every bin whose values all take one level, which is all but the few bins a decision threshold
    or the range's end cuts."""
    counts, sums, squares = binned
    level = fake_quantize_range((sums / counts.clamp(min=1)).float(), lo, hi, bits, axis=0).double()
    return ((squares - 2 * level * sums + counts * level.square()).sum(dim=1) / counts.sum(dim=1)).float()


def measure_mse(rows: torch.Tensor, bits: torch.Tensor, non_negative: bool, chunk_elements: int = 1 << 24):
    """Direct MSE search: alpha = f * max|x - mu| (f * max for a non-negative tensor) for f in
    (0.01, 0.02, ..., 1.0), the range of each within the data (``range_within_data``), its MSE
    measured on the binned values (``binned_quantization_mse``), the candidates of a chunk in one
    batched pass."""
    minimum, maximum = rows.amin(dim=1), rows.amax(dim=1)
    binned = binned_values(rows, histogram_bins(bits, rows.shape[0]), bounds=(minimum, maximum))
    mean = (rows.sum(dim=1, dtype=torch.float64) / rows.shape[1]).float()
    spread = maximum if non_negative else torch.maximum(maximum - mean, mean - minimum)
    fractions = (torch.arange(1, MSE_SEARCH_FRACTIONS + 1, dtype=torch.float32, device=rows.device)
                 / MSE_SEARCH_FRACTIONS)
    channels, columns = binned[0].shape
    per_chunk = max(1, chunk_elements // max(channels * columns, 1))
    bits = torch.as_tensor(bits, dtype=torch.float32, device=rows.device).expand(channels)
    errors = []
    for start in range(0, len(fractions), per_chunk):
        part = fractions[start:start + per_chunk]
        count = len(part)
        lo, hi = range_within_data(minimum.repeat(count), maximum.repeat(count), mean.repeat(count),
                                   (part.unsqueeze(1) * spread).reshape(-1), non_negative)
        stacked = tuple(summary.repeat(count, 1) for summary in binned)
        errors.append(binned_quantization_mse(stacked, lo, hi, bits.repeat(count)).reshape(count, channels))
    best = torch.cat(errors).argmin(dim=0)
    return range_within_data(minimum, maximum, mean, fractions[best] * spread, non_negative)


PERCENTILE = 99.99


def measure_percentile(rows: torch.Tensor, bits: torch.Tensor, non_negative: bool):
    """The 0.01 % and 99.99 % quantiles per row (lower one 0 for non-negative tensors)."""
    count = rows.shape[1]
    upper_rank = max(1, min(count, math.ceil(PERCENTILE / 100 * count)))
    lower_rank = max(1, min(count, math.floor((100 - PERCENTILE) / 100 * count) + 1))
    hi = rows.kthvalue(upper_rank, dim=1).values
    lo = torch.zeros_like(hi) if non_negative else rows.kthvalue(lower_rank, dim=1).values
    return lo, hi


KLD_BINS = 2048


def kl_threshold(magnitudes: torch.Tensor, levels: int = 128) -> torch.Tensor:
    """TensorRT-style threshold: the histogram cut (of |x| in 2048 bins) whose requantization to
    ``levels`` levels has the smallest KL divergence from the clipped reference distribution
    (TensorRT's 128 are the levels of one sign at 8 bits; M bits give 2^(M-1), or 2^M when x >= 0)."""
    top = float(magnitudes.max())
    if top <= 0:
        return torch.tensor(0.0)
    histogram = torch.histc(magnitudes.float(), bins=KLD_BINS, min=0.0, max=top).double()
    width = top / KLD_BINS
    best_divergence, best_cut = math.inf, KLD_BINS
    for cut in range(levels, KLD_BINS + 1, 16):
        reference = histogram[:cut].clone()
        reference[cut - 1] += histogram[cut:].sum()
        groups = torch.tensor_split(histogram[:cut], levels)
        candidate = torch.cat([
            torch.where(group > 0, group.sum() / (group > 0).sum().clamp(min=1), torch.zeros_like(group)) for group in groups
        ])
        p = reference / reference.sum()
        q = candidate / candidate.sum().clamp(min=1e-12)
        support = p > 0
        divergence = float((p[support] * torch.log(p[support] / q[support].clamp(min=1e-12))).sum())
        if divergence < best_divergence:
            best_divergence, best_cut = divergence, cut
    return torch.tensor((best_cut + 0.5) * width)


def measure_kld(rows: torch.Tensor, bits: torch.Tensor, non_negative: bool):
    """One KL threshold T for the whole tensor: [-T, T] (or [0, T]) within each row's [min, max].
    Zeros are left out of the distributions compared: every grid represents them exactly, and the
    zeros a fused ReLU makes (often half the values) would otherwise pull T towards 0."""
    stats = rows_stats(rows)
    top_bits = int(torch.as_tensor(bits).max())
    levels = max(2, min(KLD_BINS // 2, 2 ** (top_bits if non_negative else top_bits - 1)))
    magnitudes = rows.abs().reshape(-1)
    magnitudes = magnitudes[magnitudes > 0]
    threshold = (kl_threshold(magnitudes, levels) if magnitudes.numel() else torch.tensor(0.0)).to(rows.device)
    lo = torch.zeros_like(stats.min) if non_negative else torch.maximum(stats.min, -threshold.expand_as(stats.min))
    return lo, torch.minimum(stats.max, threshold.expand_as(stats.max))


for _name, _measure, _description in (
    ("mix", measure_mix, "per tensor the best of laplace / gaus / no by measured MSE"),
    ("mse", measure_mse, "direct search of alpha minimising the measured MSE (100 candidates, one batched pass)"),
    ("pct", measure_percentile, f"{PERCENTILE} % percentile range"),
    ("kld", measure_kld, "KL-divergence threshold of the |x| histogram (TensorRT style)"),
):
    register_clipping(_name, _description, _measure)(measured_range(_name))
