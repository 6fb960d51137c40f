"""Fake (meta) kernels of the ``ptq_kernels`` ops: output shape, dtype and strides without data,
for FakeTensor tracing (torch.compile) and ``torch.library.opcheck``.

``register()`` is called by ``kernels.build`` once the library is loaded (the ops must exist); the
C++ library names this module with ``m.set_python_module("kernels.fake")``.
"""
from __future__ import annotations

import functools

import torch

QUANTIZE_OPS = ("fake_quant", "quant_codes", "fake_quant_mid_tread", "mid_tread_codes")


def _channels(x: torch.Tensor, axis: int) -> int:
    return 1 if axis < 0 else x.shape[axis]


def _check(x: torch.Tensor, axis: int) -> None:
    torch._check(x.dtype == torch.float32, lambda: f"ptq_kernels: x must be float32, got {x.dtype}")
    torch._check(-1 <= axis < x.dim(), lambda: f"ptq_kernels: axis {axis} is out of range for a {x.dim()}-d tensor")


def quantized_like(x, p0, p1, p2, axis, seed, stochastic):
    """Same shape and strides as x (a dense layout such as channels_last is kept)."""
    _check(x, axis)
    return torch.empty_like(x)


def threshold_quant(x, scale, thresholds, values, axis):
    """Same shape and strides as x; the tables are 1-D with K - 1 thresholds and K values."""
    _check(x, axis)
    torch._check(thresholds.dim() == 1 and values.dim() == 1,
                 lambda: "threshold_quant: thresholds and values must be 1-d")
    torch._check(values.shape[0] == thresholds.shape[0] + 1,
                 lambda: f"threshold_quant: values has {values.shape[0]} elements and thresholds "
                         f"{thresholds.shape[0]}; K levels need K - 1 thresholds")
    return torch.empty_like(x)


def channel_stats(x, axis):
    """(min, max) float32 and (sum, sum of squares) float64, one entry per channel."""
    _check(x, axis)
    channels = _channels(x, axis)
    return (x.new_empty(channels), x.new_empty(channels),
            x.new_empty(channels, dtype=torch.float64), x.new_empty(channels, dtype=torch.float64))


def channel_mean_abs_dev(x, mean, axis):
    _check(x, axis)
    return x.new_empty(_channels(x, axis), dtype=torch.float64)


def code_histogram(codes, low, num_bins, axis):
    _check(codes, axis)
    shape = (num_bins,) if axis < 0 else (codes.shape[axis], num_bins)
    return codes.new_empty(shape, dtype=torch.int64)


def qdrop_select(x, q, p, seed):
    """Same shape and strides as x; q has x's shape."""
    torch._check(x.dtype == torch.float32 and q.dtype == torch.float32,
                 lambda: f"qdrop_select: x and q must be float32, got {x.dtype} and {q.dtype}")
    torch._check(x.shape == q.shape, lambda: f"qdrop_select: q has shape {tuple(q.shape)} but x has {tuple(x.shape)}")
    return torch.empty_like(x)


def soft_round(w, v, scale, zero_point, qmax, axis, beta):
    """The soft-rounded weight (w's shape and strides, as empty_like keeps them for a dense w) and a float32 0-d penalty."""
    _check(w, axis)
    torch._check(v.shape == w.shape, lambda: f"soft_round: v has shape {tuple(v.shape)} but w has {tuple(w.shape)}")
    return torch.empty_like(w), w.new_empty(())


def soft_round_backward(grad_y, grad_penalty, w, v, scale, zero_point, qmax, axis, beta):
    _check(w, axis)
    return torch.empty_like(w)


def depthwise_weight_grad(grad, x, kernel_size, stride, padding, dilation):
    """The weight gradient of a depthwise conv: [channels, 1, KH, KW], contiguous float32."""
    torch._check(x.dim() == 4 and grad.dim() == 4, lambda: "depthwise_weight_grad: x and grad must be 4-d")
    return x.new_empty((x.shape[1], 1, *kernel_size))


@functools.cache
def register() -> None:
    """Register the fake kernels (once per process)."""
    for name in QUANTIZE_OPS:
        torch.library.register_fake(f"ptq_kernels::{name}")(quantized_like)
    torch.library.register_fake("ptq_kernels::threshold_quant")(threshold_quant)
    torch.library.register_fake("ptq_kernels::channel_stats")(channel_stats)
    torch.library.register_fake("ptq_kernels::channel_mean_abs_dev")(channel_mean_abs_dev)
    torch.library.register_fake("ptq_kernels::code_histogram")(code_histogram)
    torch.library.register_fake("ptq_kernels::qdrop_select")(qdrop_select)
    torch.library.register_fake("ptq_kernels::soft_round")(soft_round)
    torch.library.register_fake("ptq_kernels::soft_round_backward")(soft_round_backward)
    torch.library.register_fake("ptq_kernels::depthwise_weight_grad")(depthwise_weight_grad)
