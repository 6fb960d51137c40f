"""Quantization of one tensor from its statistics: clipping, optional bit or bin allocation,
GEMMLOWP or mid-tread fake quantization, integer codes for entropy figures.

Bit allocation applies to specs of at most 4 bits (layers kept at 8 bits are not allocated).
With bin allocation the grid is mid-tread, centred on the channel mean (on 0 with
``preserve_zero``), with B_i bins and the ACIQ clipping value of log2(B_i) bits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pytorch_quantizer import allocation, backend, primitives
from pytorch_quantizer.clipping import aciq_alpha, get_clipping
from pytorch_quantizer.config import BIT_ALLOCATION_MAX_BITS, QuantConfig, TensorQuantSpec
from pytorch_quantizer.stats import TensorStats


@dataclass(frozen=True)
class QuantOutcome:
    """Fake-quantized values, integer codes (when asked), bits per channel and the clipping range."""

    values: torch.Tensor
    codes: torch.Tensor | None
    bits: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor


def allocation_scale(stats: TensorStats, config: QuantConfig) -> torch.Tensor:
    """alpha_i of eq. 10-11: b under a Laplace prior, sigma under a Gaussian one."""
    return stats.b if config.prior.value == "laplace" else stats.std




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


def plan_quantization(stats: TensorStats, spec: TensorQuantSpec, config: QuantConfig) -> QuantPlan:
    """Clipping, bit or bin allocation and grid parameters from statistics (per channel or per tensor)."""
    allocate = spec.bits <= BIT_ALLOCATION_MAX_BITS and (spec.bit_allocation or spec.bin_allocation)
    if allocate and spec.bin_allocation:
        bins = allocation.allocate_bins(allocation_scale(stats, config), spec.target_bits).to(stats.mean.device)
        bits = torch.log2(bins.clamp(min=1.0))  # one level or fewer carries no information: 0 bits
        center = torch.zeros_like(stats.mean) if config.preserve_zero else stats.mean
        alpha = aciq_alpha(spec.clipping, stats, bits, non_negative=False)  # laplace or gaus (config checks it)
        return QuantPlan(True, spec.per_channel, bits, center - alpha, center + alpha,
                         center=center, alpha=alpha, bins=bins)
    if allocate:
        bits = allocation.allocate_bits(allocation_scale(stats, config), spec.target_bits, config.rounding.value)
    else:
        bits = torch.full_like(stats.min, float(spec.bits))
    lo, hi = get_clipping(spec.clipping).clip_range(stats, bits, stats.non_negative)
    scale, zero_point, qmax = primitives.gemmlowp_params(lo, hi, bits, config.power_of_two_scale)
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
                    axis: int | None, seed: int | None = None, want_codes: bool = False) -> QuantOutcome:
    """Fake-quantize ``x`` per ``spec`` with statistics ``stats`` (per channel of ``axis``, or per tensor)."""
    return apply_plan(x, plan_quantization(stats, spec, config), axis, seed, want_codes)
