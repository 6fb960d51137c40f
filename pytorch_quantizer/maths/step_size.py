"""Learned step size quantization (LSQ, Esser et al., ICLR 2020), the form BRECQ and QDrop learn
activation grids with: on a GEMMLOWP grid of step s, zero point z and top code qmax,

    x_hat = (clamp(round_ste(x / s_g) + z, 0, qmax) - z) s_g,    round_ste(u) = u + (round(u) - u).detach()

where s_g has the value of s and the gradient of s times g = 1 / sqrt(n qmax) (n: the elements per
step of the grid). The gradient of x_hat with respect to s is then LSQ's: round(x / s) - x / s inside
the grid's range, qmax - z above it and -z below, times g; with respect to x it is 1 inside and 0
outside (the straight-through estimator).
"""
from __future__ import annotations

import math

import torch


def scaled_gradient(value: torch.Tensor, factor: float) -> torch.Tensor:
    """``value`` forward, its gradient times ``factor`` backward."""
    return (value - value * factor).detach() + value * factor


def lsq_fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: torch.Tensor,
                      shape: tuple[int, ...] = ()) -> torch.Tensor:
    """x_hat of the module docstring; ``scale`` / ``zero_point`` / ``qmax`` per tensor, or per channel
    reshaped to ``shape`` (``primitives.broadcast_shape``)."""
    elements = x.numel() / max(scale.numel(), 1)
    step = scaled_gradient(scale.reshape(shape), 1.0 / math.sqrt(elements * float(qmax.max())))
    zero, top = zero_point.reshape(shape).to(x.dtype), qmax.reshape(shape).to(x.dtype)
    scaled = x / step
    rounded = scaled + (torch.round(scaled) - scaled).detach()
    return (torch.minimum(torch.clamp(rounded + zero, min=0.0), top) - zero) * step
