"""Pure quantization functions (no state, no modules).

GEMMLOWP asymmetric quantization of x to M bits over a range [lo, hi]:

    lo <- min(lo, 0), hi <- max(hi, 0)                       (zero must lie in the range)
    qmin = 0, qmax = 2^M - 1, s = (hi - lo) / qmax           (s = 1 where hi == lo or qmax == 0)
    s <- 2^ceil(log2 s)                                      (power-of-two scales, optional)
    z = clamp(round(-lo / s), 0, qmax)                       (zero is exactly representable)
    q = clamp(round(x * (1/s)) + z, 0, qmax)
    x_hat = (q - z) * s

``x * (1/s)`` with 1/s rounded to float32 (not ``x / s``) is PyTorch's own convention, so the
result equals ``torch.fake_quantize_per_{tensor,channel}_affine`` bit for bit. Rounding is to
nearest, ties to even; stochastic rounding replaces round(v) by floor(v + u), u ~ U[0, 1), which is
unbiased: E[floor(v + u)] = v.

Mid-tread quantization with a real number of bins B around a centre c with clipping value alpha:

    K = floor((B - 1) / 2), step = alpha / K
    q = clamp(round((x - c) / step), -K, K), x_hat = c + q * step   (x_hat = c where K = 0)

Level-set (non-uniform) quantization with a scale s per channel, K levels v_0..v_{K-1} and K - 1
sorted thresholds t_0 <= ... <= t_{K-2} shared by all channels:

    u = x / s, k = #{j : t_j <= u}, x_hat = s * v_k

Per-channel parameters are 1-D tensors broadcast along ``axis``.
"""
from __future__ import annotations

import torch


def broadcast_shape(x: torch.Tensor, axis: int | None) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector along ``axis`` of ``x`` (scalar shape when None)."""
    if axis is None:
        return ()
    shape = [1] * x.dim()
    shape[axis] = x.shape[axis]
    return tuple(shape)


def channels_first(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """View of ``x`` as (C, N): one row per channel of ``axis`` (a single row when axis is None)."""
    if axis is None:
        return x.reshape(1, -1)
    return x.transpose(0, axis).reshape(x.shape[axis], -1)


def qmax_for_bits(bits: torch.Tensor | int) -> torch.Tensor:
    """2^M - 1 as float32 (M may be a per-channel tensor)."""
    bits = torch.as_tensor(bits, dtype=torch.float32)
    return torch.exp2(bits) - 1


def gemmlowp_params(lo: torch.Tensor, hi: torch.Tensor, bits: torch.Tensor | int,
                    power_of_two: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale s, zero point z (float, integer-valued) and qmax for the range [lo, hi] at M bits."""
    lo = torch.clamp(torch.as_tensor(lo, dtype=torch.float32), max=0.0)
    hi = torch.clamp(torch.as_tensor(hi, dtype=torch.float32), min=0.0)
    lo, hi, qmax = torch.broadcast_tensors(lo, hi, qmax_for_bits(bits).to(lo.device))
    width = hi - lo
    valid = (width > 0) & (qmax > 0)
    scale = torch.where(valid, width / torch.where(qmax > 0, qmax, torch.ones_like(qmax)), torch.ones_like(width))
    if power_of_two:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    zero_point = torch.clamp(torch.round(-lo / scale), torch.zeros_like(qmax), qmax)
    return scale, zero_point, qmax


SEED_MIN_SCALE = 1e-8


def seed_gemmlowp_params(lo: torch.Tensor, hi: torch.Tensor, bits: torch.Tensor | int,
                         power_of_two: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The seed's GEMMLOWP parameters for the range [lo, hi] at M bits (its int_quantizer):

        qmax = 2^M - 1, s = max((hi - lo) / qmax, 1e-8)   (s = 1e-8 where qmax = 0)
        z = round(-lo / s)                                 (not clamped: the grid {(k - z) s, k = 0..qmax}
                                                            is [lo, hi] shifted by up to s / 2 so that 0
                                                            is a level, even when 0 is outside [lo, hi])

    A channel with 0 bits has qmax = 0, so every value becomes -z s ~= lo, its lower range end.
    """
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    lo, hi, qmax = torch.broadcast_tensors(lo, hi, qmax_for_bits(bits).to(lo.device))
    scale = torch.where(qmax > 0, (hi - lo) / torch.where(qmax > 0, qmax, torch.ones_like(qmax)), torch.zeros_like(hi))
    scale = torch.clamp(scale, min=SEED_MIN_SCALE)
    if power_of_two:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    return scale, torch.round(-lo / scale), qmax


def round_values(v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round to nearest (ties to even), or stochastically with ``generator`` (floor(v + u), u ~ U[0, 1))."""
    if generator is None:
        return torch.round(v)
    noise = torch.rand(v.shape, generator=generator, device=v.device, dtype=v.dtype)
    return torch.floor(v + noise)


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: torch.Tensor,
                   axis: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer codes q = clamp(round(x * (1/s)) + z, 0, qmax) as float32."""
    shape = broadcast_shape(x, axis)
    inv_scale = (1.0 / scale.float()).reshape(shape)
    z = zero_point.reshape(shape)
    upper = qmax.reshape(shape)
    q = round_values(x.float() * inv_scale, generator) + z
    return torch.minimum(torch.clamp(q, min=0.0), upper)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                     axis: int | None = None) -> torch.Tensor:
    shape = broadcast_shape(q, axis)
    return (q - zero_point.reshape(shape)) * scale.float().reshape(shape)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: torch.Tensor,
                  axis: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Quantize then dequantize with given GEMMLOWP parameters (per tensor, or per channel of ``axis``)."""
    codes = quantize_codes(x, scale, zero_point, qmax, axis, generator)
    return dequantize_codes(codes, scale, zero_point, axis).to(x.dtype)


def fake_quantize_range(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: torch.Tensor | int,
                        axis: int | None = None, power_of_two: bool = False,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """GEMMLOWP fake quantization of ``x`` over the (clipping) range [lo, hi] at ``bits``."""
    scale, zero_point, qmax = gemmlowp_params(lo, hi, bits, power_of_two)
    return fake_quantize(x, scale, zero_point, qmax, axis, generator)


def mid_tread_half_levels(bins: torch.Tensor) -> torch.Tensor:
    """K = floor((B - 1) / 2) >= 0: the grid has 2K + 1 levels, the most that fit in B bins symmetrically."""
    return torch.clamp(torch.floor((torch.as_tensor(bins, dtype=torch.float32) - 1) / 2), min=0.0)


def mid_tread_codes(x: torch.Tensor, center: torch.Tensor, alpha: torch.Tensor, bins: torch.Tensor,
                    axis: int | None = None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed codes q in [-K, K] of the mid-tread grid and its step (alpha / K; 1 where K = 0)."""
    shape = broadcast_shape(x, axis)
    half_levels = mid_tread_half_levels(bins).to(x.device)
    step = torch.where((half_levels > 0) & (alpha > 0), alpha / torch.clamp(half_levels, min=1.0), torch.ones_like(alpha))
    limit = half_levels.reshape(shape)
    q = round_values((x.float() - center.reshape(shape)) / step.reshape(shape), generator)
    return torch.maximum(torch.minimum(q, limit), -limit), step


def fake_quantize_mid_tread(x: torch.Tensor, center: torch.Tensor, alpha: torch.Tensor, bins: torch.Tensor,
                            axis: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mid-tread fake quantization with a (possibly fractional) number of bins per channel."""
    shape = broadcast_shape(x, axis)
    q, step = mid_tread_codes(x, center, alpha, bins, axis, generator)
    return (center.reshape(shape) + q * step.reshape(shape)).to(x.dtype)


def _check_level_set(thresholds: torch.Tensor, values: torch.Tensor) -> None:
    if thresholds.dim() != 1 or values.dim() != 1:
        raise ValueError(f"thresholds and values must be 1-d, got {thresholds.dim()} and {values.dim()} dims")
    if values.numel() != thresholds.numel() + 1:
        raise ValueError(f"values has {values.numel()} elements and thresholds {thresholds.numel()}; "
                         "K levels need K - 1 thresholds")
    if thresholds.isnan().any() or (thresholds[1:] < thresholds[:-1]).any():
        raise ValueError("thresholds must be sorted ascending, with no NaN")


def threshold_quantize(x: torch.Tensor, scale: torch.Tensor, thresholds: torch.Tensor, values: torch.Tensor,
                       axis: int | None = None) -> torch.Tensor:
    """Level-set quantization: per tensor, or with one scale s per channel of ``axis``,

        u = x / s                      (a true division, not x * (1/s))
        k = #{j : t_j <= u}            (torch.searchsorted(t, u, right=True): a tie goes up)
        x_hat = s * values[k]

    thresholds t (K - 1, sorted ascending) and values (K) are 1-D float32 and shared by all channels.
    A NaN u (NaN x or s) gives u; s = 0 gives 0 (a NaN x stays NaN) instead of 0 / 0.
    """
    thresholds = torch.as_tensor(thresholds, dtype=torch.float32, device=x.device)
    values = torch.as_tensor(values, dtype=torch.float32, device=x.device)
    _check_level_set(thresholds, values)
    xf = x.float()
    s = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    s = s.reshape(()) if s.numel() == 1 else s.reshape(broadcast_shape(x, axis))
    u = (xf / s).contiguous()
    y = torch.where(torch.isnan(u), u, s * values[torch.searchsorted(thresholds, u, right=True)])
    y = torch.where(s == 0, torch.where(torch.isnan(xf), xf, 0.0), y)
    return y.to(x.dtype)


def midpoint_thresholds(levels: torch.Tensor) -> torch.Tensor:
    """The K - 1 midpoints (l_i + l_{i+1}) / 2 of sorted levels l_0 <= ... <= l_{K-1}, rounded once to
    float32 (summed in float64: no overflow). With them ``threshold_quantize(x, s, t, levels)`` sends
    u = x / s to its nearest level, a tie (u exactly on a midpoint) to the upper one."""
    levels = torch.as_tensor(levels, dtype=torch.float32).reshape(-1)
    return ((levels[:-1].double() + levels[1:].double()) / 2).float()
