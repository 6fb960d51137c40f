"""Biases on the accumulator grid of an integer GEMM (``--int32-bias``), as integer runtimes hold them.

An integer Conv / Linear computes acc = sum (q_x - z_x)(q_w - z_w) in int32 and adds its bias as
int32 codes on the same grid, whose step is s_x s_w (per output channel with per-channel weights):

    b -> round(b / (s_x s_w)) s_x s_w,   |round(b / (s_x s_w))| <= 2^24 - 1,

the bound keeping every code exact in float32, the simulator's arithmetic (int32 holds 2^31 - 1;
float32 spaces numbers near 2^31 by 128). A channel whose weight scale is so small that its bias
does not fit (the seed's grid gives an all-zero channel s_w = 1e-8) gets the smallest weight scale
that fits, s_w' = |b| / (s_x (2^24 - 2)), its zero point moved with it (z' = round(z s_w / s_w')),
so that an integer runtime holds both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pytorch_quantizer.maths.weight_grid import Grid

CODE_LIMIT = 2**24 - 1


@dataclass(frozen=True)
class AccumulatorBias:
    values: torch.Tensor      # the bias on its grid
    scale: torch.Tensor       # s_x s_w per output channel
    grid: Grid                # the weight grid, with raised scales where ``raised``
    raised: torch.Tensor      # bool per output channel


def accumulator_bias(bias: torch.Tensor, input_scale: torch.Tensor, grid: Grid) -> AccumulatorBias | None:
    """The bias of a layer with input scale s_x and weight grid ``grid`` on its accumulator grid
    (see the module docstring); None for a per-tensor weight grid that would need a raised scale."""
    bias = bias.float()
    fitting = bias.abs() / (input_scale.float() * (CODE_LIMIT - 1))
    raised = grid.scale.float() < fitting
    if bool(raised.any()):
        if grid.scale.dim() == 0:
            return None
        scale = torch.where(raised, fitting, grid.scale.float())
        moved = torch.clamp(torch.round(grid.zero_point.float() * grid.scale.float() / scale), min=0.0)
        zero_point = torch.where(raised, torch.minimum(moved, grid.qmax.float()), grid.zero_point.float())
        grid = Grid(scale, zero_point, grid.qmax)
    step = (input_scale.float() * grid.scale.float()).expand(bias.shape[0]).clone()
    codes = torch.clamp(torch.round(bias / step), -CODE_LIMIT, CODE_LIMIT)
    return AccumulatorBias(codes * step, step, grid, raised.expand(bias.shape[0]))
