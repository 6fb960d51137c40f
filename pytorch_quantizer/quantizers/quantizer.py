"""Quantization of one tensor from its statistics: clipping, optional bit or bin allocation,
GEMMLOWP or mid-tread fake quantization, integer codes for entropy figures.

Bit allocation applies to specs of at most 4 bits (layers kept at 8 bits are not allocated).
With bin allocation the grid is mid-tread, centred on the channel mean (on 0 with
``preserve_zero``), with B_i bins and the ACIQ clipping value of log2(B_i) bits.
``config.departures`` selects, step by step, the seed's arithmetic or this project's variant.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pytorch_quantizer.maths import allocation, primitives
from pytorch_quantizer.quantizers import backend
from pytorch_quantizer.maths.clipping import aciq_alpha, aciq_scale, get_clipping
from pytorch_quantizer.quantizers.config import BIT_ALLOCATION_MAX_BITS, QuantConfig, TensorQuantSpec
from pytorch_quantizer.maths.stats import TensorStats


@dataclass(frozen=True)
class QuantOutcome:
    """Fake-quantized values, integer codes (when asked), bits per channel and the clipping range."""

    values: torch.Tensor
    codes: torch.Tensor | None
    bits: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor


def allocation_scale(stats: TensorStats, config: QuantConfig, weights: bool, non_negative: bool) -> torch.Tensor:
    """alpha_i of eq. 10-11: sigma_i for weights (the seed ignores -bap there); for activations
    b_i under a Laplace prior, sigma_i under a Gaussian one; of the positive part of a non-negative
    tensor with the departure ``rectified_aciq`` (the scale its clipping uses)."""
    prior = "gaus" if weights else config.prior.value
    return aciq_scale(prior, stats, non_negative and config.departures.rectified_aciq)


def zero_bit_channels(scale: torch.Tensor, zero_point: torch.Tensor, qmax: torch.Tensor, lo: torch.Tensor,
                      to_zero: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Channels of 0 bits (qmax = 0) output the constant -z s: their lower range end lo, as in the
    seed, or 0 with the departure ``zero_bit_zero`` (s = 1, z = -value)."""
    empty = qmax == 0
    if not bool(empty.any()):
        return scale, zero_point
    value = torch.zeros_like(lo) if to_zero else lo
    return torch.where(empty, torch.ones_like(scale), scale), torch.where(empty, -value, zero_point)




@dataclass(frozen=True)
class QuantPlan:
    """Everything fake quantization needs once statistics are known: GEMMLOWP (scale, zero point,
    qmax) or mid-tread (center, alpha, bins) parameters, bits per channel and the clipping range.
    Computed once per layer when statistics are fixed (offline), per batch otherwise."""

    mid_tread: bool
    per_channel: bool
    bits: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    qmax: torch.Tensor | None = None
    center: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    bins: torch.Tensor | None = None


def plan_quantization(stats: TensorStats, spec: TensorQuantSpec, config: QuantConfig, non_negative: bool,
                      weights: bool = False, ceiling: float | None = None) -> QuantPlan:
    """Clipping, bit or bin allocation and grid parameters from statistics (per channel or per tensor).

    ``non_negative``: the range starts at 0 (a fused ReLU, the seed's half range, or a tensor known
    to be >= 0); ``weights``: the tensor is a weight (allocation by sigma whatever the prior);
    ``ceiling``: the range ends there at the latest (6 for a fused ReLU6: levels above it would
    never be used)."""
    departures = config.departures
    allocate = spec.bits <= BIT_ALLOCATION_MAX_BITS and (spec.bit_allocation or spec.bin_allocation)
    if allocate and spec.bin_allocation:
        scale = allocation_scale(stats, config, weights, non_negative)
        bins = allocation.allocate_bins(scale, spec.target_bits).to(stats.mean.device)
        bits = torch.log2(bins.clamp(min=1.0))  # one level or fewer carries no information: 0 bits
        center = torch.zeros_like(stats.mean) if config.preserve_zero else stats.mean
        if spec.clipping == "no":  # the grid reaches both ends of the data
            alpha = torch.maximum(stats.max - center, center - stats.min)
        else:
            alpha = aciq_alpha(spec.clipping, stats, bits, False, departures)
        return QuantPlan(True, spec.per_channel, bits, center - alpha, center + alpha,
                         center=center, alpha=alpha, bins=bins)
    if allocate:
        allocator = allocation.allocate_bits if departures.exact_bit_budget else allocation.seed_allocate_bits
        bits = allocator(allocation_scale(stats, config, weights, non_negative), spec.target_bits, config.rounding.value)
    else:
        bits = torch.full_like(stats.min, float(spec.bits))
    # the seed clips with the Gaussian constant of the layer's bits even where bits are allocated per channel
    seed_gaussian = spec.clipping == "gaus" and not departures.exact_aciq
    clip_bits = torch.full_like(bits, float(spec.bits)) if seed_gaussian else bits
    lo, hi = get_clipping(spec.clipping).clip_range(stats, clip_bits, non_negative, departures)
    if ceiling is not None:
        hi = torch.clamp(hi, max=ceiling)
    grid = primitives.gemmlowp_params if departures.range_within_data else primitives.seed_gemmlowp_params
    scale, zero_point, qmax = grid(lo, hi, bits, config.power_of_two_scale)
    scale, zero_point = zero_bit_channels(scale, zero_point, qmax, lo, departures.zero_bit_zero)
    if not spec.per_channel:
        scale, zero_point, qmax = scale.reshape(()), zero_point.reshape(()), qmax.reshape(())
    return QuantPlan(False, spec.per_channel, bits, lo, hi, scale, zero_point, qmax)


def apply_plan(x: torch.Tensor, plan: QuantPlan, axis: int | None, seed: int | None = None,
               want_codes: bool = False) -> QuantOutcome:
    """Fake-quantize ``x`` with a plan; ``seed`` selects stochastic rounding (None: to nearest).
    The arithmetic runs on the active backend (fused kernels or the pure-PyTorch reference)."""
    axis = axis if plan.per_channel else None
    codes = None
    if plan.mid_tread:
        if want_codes:
            codes, step = backend.mid_tread_codes(x, plan.center, plan.alpha, plan.bins, axis, seed)
            shape = primitives.broadcast_shape(x, axis)
            values = (plan.center.reshape(shape) + codes * step.reshape(shape)).to(x.dtype)
        else:
            values = backend.fake_quantize_mid_tread(x, plan.center, plan.alpha, plan.bins, axis, seed)
    elif want_codes:
        codes = backend.quantize_codes(x, plan.scale, plan.zero_point, plan.qmax, axis, seed)
        values = primitives.dequantize_codes(codes, plan.scale, plan.zero_point, axis).to(x.dtype)
    else:
        values = backend.fake_quantize(x, plan.scale, plan.zero_point, plan.qmax, axis, seed)
    return QuantOutcome(values, codes, plan.bits, plan.lo, plan.hi)


def quantize_tensor(x: torch.Tensor, stats: TensorStats, spec: TensorQuantSpec, config: QuantConfig,
                    axis: int | None, seed: int | None = None, want_codes: bool = False, non_negative: bool = False,
                    weights: bool = False) -> QuantOutcome:
    """Fake-quantize ``x`` per ``spec`` with statistics ``stats`` (per channel of ``axis``, or per tensor)."""
    return apply_plan(x, plan_quantization(stats, spec, config, non_negative, weights), axis, seed, want_codes)
