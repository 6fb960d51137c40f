"""AdaRound's soft rounding of a weight on its GEMMLOWP grid (Nagel et al., ICML 2020), in pure
PyTorch: the reference of the ``ptq_kernels::soft_round`` kernels (``kernels/csrc/soft_rounding.h``
repeats its float32 operation order). With a learned logit V per weight:

    h(V)    = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1),      zeta = 1.1, gamma = -0.1
    W~      = (min(max(floor(W / s) + h(V) + z, 0), qmax) - z) s   (``weight_grid.rounded_weight``)
    penalty = sum_i (1 - |2 h(V_i) - 1|^beta)

The penalty is zero exactly when every h is 0 or 1.
"""
from __future__ import annotations

import torch

from pytorch_quantizer.maths.weight_grid import Grid, rounded_weight

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(logits) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def rounding_regulariser(soft: torch.Tensor, beta: float) -> torch.Tensor:
    """sum (1 - |2h - 1|^beta): zero exactly when every h is 0 or 1."""
    return (1 - (2 * soft - 1).abs().pow(beta)).sum()


def soft_round(weight: torch.Tensor, logits: torch.Tensor, grid: Grid, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W~, penalty) of the module docstring, differentiable in ``logits``; the penalty is 0 (a 0-d
    tensor) for beta <= 0."""
    soft = rectified_sigmoid(logits)
    penalty = rounding_regulariser(soft, beta) if beta > 0 else soft.new_zeros(())
    return rounded_weight(weight, grid, soft), penalty
