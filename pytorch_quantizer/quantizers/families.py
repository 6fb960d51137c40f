"""Post-training quantization with the other seeds' quantizer kinds (``kinds``): weights once,
activations per tensor at each GEMM input from calibration samples.

Level kinds (uniform / pot / apot, b bits): a tensor is quantized to ``alpha * level`` of the
nearest level of its set (``level_sets``). Weights: APoT's normalisation w_n = (w - mean) / std per
layer, signed levels (b - 1 magnitude bits), alpha per layer (per output channel with -pcq_w)
minimising the MSE ||w_n - alpha Q(w_n / alpha)||^2 over alpha = max|w_n| j / 100, j = 1 .. 100;
the layer keeps its scale: w_hat = mean + std * alpha Q(w_n / alpha). Activations: unsigned b-bit
levels where the calibration samples are all >= 0, else signed levels; alpha by the same MSE
search on the samples.

XNOR (binary): weights alpha_c sign(W); activations sign(x) with the output of the GEMM scaled by
K (``level_sets.xnor_activation_scale``): y = conv(sign(x), W) * K + bias.
TWN (ternary, weights): alpha sign(W) where |W| > delta.
DoReFa (k bits): weights ``level_sets.dorefa_weights`` times the least-squares scale of the layer
(post-training there is no retraining to absorb the [-1, 1] range); activations quantize_k(clip(x, 0, 1)).
N2UQ (b bits): Lloyd-Max thresholds with uniform outputs (``n2uq.calibrate``), weights from the
weight values themselves (data-free), activations from the calibration samples.

Every set-valued quantizer runs as ``backend.threshold_quantize`` (the ``ptq_kernels`` level-set op).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pytorch_quantizer.quantizers import backend
from pytorch_quantizer.maths import level_sets, n2uq, primitives
from pytorch_quantizer.quantizers.config import WeightKind
from pytorch_quantizer.maths.level_sets import LevelFamily

ALPHA_CANDIDATES = 100
LEVEL_KINDS = {WeightKind.UNIFORM: LevelFamily.UNIFORM, WeightKind.POT: LevelFamily.POT,
               WeightKind.APOT: LevelFamily.APOT}


@dataclass(frozen=True)
class LevelPlan:
    """x_hat = scale_c * values[k], k = #{j : x / scale_c >= thresholds_j} (per tensor, or per
    channel of ``axis`` when ``scale`` has one entry per channel)."""

    scale: torch.Tensor
    thresholds: torch.Tensor
    values: torch.Tensor

    def apply(self, x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
        return backend.threshold_quantize(x, self.scale, self.thresholds, self.values, axis)

    def codes(self, x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
        """k of every element (for the entropy figures)."""
        shape = primitives.broadcast_shape(x, axis if self.scale.numel() > 1 else None)
        scaled = (x.float() / self.scale.to(x.device).reshape(shape)).contiguous()
        return torch.searchsorted(self.thresholds.to(x.device), scaled, right=True).float()


def levels_plan(levels: torch.Tensor, alpha: torch.Tensor) -> LevelPlan:
    """Nearest-level quantization to alpha * levels (thresholds at the midpoints)."""
    return LevelPlan(alpha.float(), primitives.midpoint_thresholds(levels), levels.float())


def n2uq_plan(params: n2uq.N2UQParams) -> LevelPlan:
    """N2UQ's forward as a level plan: scale = step, thresholds m_i / step, values offset / step + k."""
    step = params.step.detach().float()
    values = params.offset.detach().float() / step + torch.arange(params.intervals.numel() + 1, dtype=torch.float32)
    return LevelPlan(step, params.thresholds.detach().float() / step, values)


def mse_alpha(rows: torch.Tensor, levels: torch.Tensor, candidates: int = ALPHA_CANDIDATES) -> torch.Tensor:
    """Per row: alpha in {max|x| j / G : j = 1 .. G} minimising mean (x - alpha Q(x / alpha))^2,
    Q the nearest level of ``levels`` (a constant-zero row gets alpha 1)."""
    rows = rows.float()
    top = rows.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    thresholds = primitives.midpoint_thresholds(levels).to(rows.device)
    levels = levels.float().to(rows.device)
    best_error = torch.full_like(top, float("inf"))
    best_alpha = top.clone()
    for step in range(1, candidates + 1):
        alpha = top * (step / candidates)
        index = torch.searchsorted(thresholds, (rows / alpha[:, None]).contiguous(), right=True)
        error = (levels[index] * alpha[:, None] - rows).square().mean(dim=1)
        better = error < best_error
        best_error, best_alpha = torch.where(better, error, best_error), torch.where(better, alpha, best_alpha)
    return torch.where(rows.abs().amax(dim=1) > 0, best_alpha, torch.ones_like(best_alpha))


@torch.no_grad()
def quantize_weight(weight: torch.Tensor, kind: WeightKind, bits: int, per_channel: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(quantized weight, integer codes) of one layer's weight (see the module docstring)."""
    if kind in LEVEL_KINDS:
        normalized, mean, std = level_sets.normalize_weights(weight.float())
        levels = level_sets.weight_levels(LEVEL_KINDS[kind], bits)
        axis = 0 if per_channel else None
        plan = levels_plan(levels, mse_alpha(primitives.channels_first(normalized, axis), levels))
        values = mean + std * plan.apply(normalized, axis)
        return values.to(weight.dtype), plan.codes(normalized, axis)
    if kind == WeightKind.BINARY:
        return level_sets.binarize_weights(weight), (weight >= 0).float()
    if kind == WeightKind.TERNARY:
        values = level_sets.ternarize_weights(weight)
        return values, torch.sign(values) + 1
    if kind == WeightKind.DOREFA:
        mapped = level_sets.dorefa_weights(weight.float(), bits)
        scale = level_sets.least_squares_scale(weight.float(), mapped)
        codes = (mapped > 0).float() if bits == 1 else torch.round((mapped + 1) / 2 * (2 ** bits - 1))
        return (scale * mapped).to(weight.dtype), codes
    if kind == WeightKind.N2UQ:
        plan = n2uq_plan(n2uq.calibrate(weight, bits))
        return plan.apply(weight.float()).to(weight.dtype), plan.codes(weight.float())
    raise ValueError(f"{kind.value} is not one of the other seeds' weight kinds")


def fixed_activation_plan(kind: WeightKind, bits: int) -> LevelPlan | None:
    """Activation plans that need no calibration: DoReFa's quantize_k(clip(x, 0, 1))."""
    if kind == WeightKind.DOREFA:
        return levels_plan(level_sets.uniform_levels(bits), torch.tensor(1.0))
    return None


def fit_activation(kind: WeightKind, bits: int, samples: torch.Tensor, minimum: float, seed: int = 0) -> LevelPlan:
    """The calibrated plan of one layer's input from its samples and its smallest value seen."""
    if kind in LEVEL_KINDS:
        levels = level_sets.activation_levels(LEVEL_KINDS[kind], bits, signed=minimum < 0)
        return levels_plan(levels, mse_alpha(samples.reshape(1, -1), levels).reshape(()))
    if kind == WeightKind.N2UQ:
        return n2uq_plan(n2uq.calibrate(samples, bits, seed))
    raise ValueError(f"{kind.value} activations take no calibration")


def xnor_input(x: torch.Tensor, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign(x), K): K per output position of a Conv2d (``level_sets.xnor_activation_scale``), per
    sample for a Linear (mean |x| over its features)."""
    if isinstance(module, nn.Conv2d):
        return level_sets.binary_sign(x), level_sets.xnor_activation_scale(x, module)
    return level_sets.binary_sign(x), x.abs().mean(dim=-1, keepdim=True)


def xnor_output(output: torch.Tensor, scale: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """y = (GEMM of the signs) * K + bias."""
    if module.bias is None:
        return output * scale
    shape = (1, -1, 1, 1) if isinstance(module, nn.Conv2d) else (1, -1)
    bias = module.bias.reshape(shape)
    return (output - bias) * scale + bias
