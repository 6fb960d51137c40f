"""A weight's GEMMLOWP grid and rounding on it, given per weight whether it rounds down or up
(``up`` in [0, 1]; 0 / 1 after AdaRound has decided, soft while it learns):

    codes = clamp(floor(W / s) + up + z, 0, qmax),   W~ = (codes - z) s

Round-to-nearest is the rounding up = 1{frac(W / s) >= 1/2}.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Grid:
    """A GEMMLOWP grid, per tensor (0-d tensors) or per output channel (axis 0)."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmax: torch.Tensor

    def shaped(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = (-1,) + (1,) * (weight.dim() - 1) if self.scale.dim() else ()
        return (self.scale.float().reshape(shape), self.zero_point.float().reshape(shape),
                self.qmax.float().reshape(shape))


def rounded_codes(weight: torch.Tensor, grid: Grid, up: torch.Tensor) -> torch.Tensor:
    """clamp(floor(W / s) + up + z, 0, qmax) for a rounding ``up`` in [0, 1] per weight."""
    scale, zero_point, qmax = grid.shaped(weight)
    codes = torch.floor(weight.float() * (1.0 / scale)) + up + zero_point
    return torch.minimum(torch.clamp(codes, min=0.0), qmax)


def rounded_weight(weight: torch.Tensor, grid: Grid, up: torch.Tensor) -> torch.Tensor:
    """W~ for a rounding ``up`` in [0, 1] per weight (soft while learning, 0 / 1 after)."""
    scale, zero_point, _ = grid.shaped(weight)
    return ((rounded_codes(weight, grid, up) - zero_point) * scale).to(weight.dtype)


def nearest_rounding(weight: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The rounding that round-to-nearest takes: 1 where the fractional part of W / s is >= 1/2."""
    scale, _, _ = grid.shaped(weight)
    scaled = weight.float() * (1.0 / scale)
    return (scaled - torch.floor(scaled) >= 0.5).float()
