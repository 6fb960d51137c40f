"""The activation fused into a layer's output quantization (``act_quant_point=output``, the seed's
convention): a ReLU / ReLU6 after the layer, or equalization's per-channel clamp, is fused as a
range starting at 0 (and ending at 6 for ReLU6); at GEMM inputs nothing is fused."""
from __future__ import annotations

import math

import torch
from torch import nn

from pytorch_quantizer.maths.stats import TensorStats
from pytorch_quantizer.model.graph import ChannelClamp
from pytorch_quantizer.model.plans import LayerPlan

RELU6_CEILING = 6.0


class FusedActivations:
    """Per layer, what follows its output and how that shapes the quantized range.

    ``rectified``: the departure ``rectified_aciq`` (observe and quantize the fused activation's
    output instead of the pre-activation output)."""

    def __init__(self, plans: dict[str, LayerPlan], clamps: dict[str, ChannelClamp], at_output: bool,
                 rectified: bool):
        self.plans, self.clamps, self.at_output, self.rectified = plans, clamps, at_output, rectified

    def kind(self, name: str) -> type | None:
        """nn.ReLU, nn.ReLU6, ChannelClamp or None."""
        return self.plans[name].fused_activation

    def apply(self, name: str, output: torch.Tensor) -> torch.Tensor:
        fused = self.kind(name)
        if fused is nn.ReLU:
            return torch.relu(output)
        if fused is nn.ReLU6:
            return torch.clamp(output, 0.0, RELU6_CEILING)
        if fused is ChannelClamp:
            return self.clamps[name](output)
        return output

    def observed(self, name: str, output: torch.Tensor) -> torch.Tensor:
        """What is observed and quantized at a layer output: the pre-activation output (the seed's),
        or with ``rectified`` the output of the fused ReLU / ReLU6."""
        return self.apply(name, output) if self.rectified else output

    def starts_at_zero(self, name: str, stats: TensorStats) -> bool:
        """At outputs, where a ReLU / ReLU6 is fused (the seed's half range); at inputs, where the
        statistics show no negative value."""
        return self.kind(name) is not None if self.at_output else stats.non_negative

    def ceiling(self, name: str) -> float | None:
        """A fused ReLU6 is fused whole: the range ends at 6 (the seed's models have only ReLU, whose
        fusion is the range starting at 0); equalization's per-channel ReLU6 at its highest ceiling."""
        fused = self.kind(name)
        if fused is ChannelClamp:
            highest = float(self.clamps[name].upper.max())
            return highest if math.isfinite(highest) else None
        return RELU6_CEILING if fused is nn.ReLU6 else None

    def fused_range(self, name: str) -> tuple[float, float] | None:
        """[0, ceiling] that an activation fused into the output's range lets through (None at
        inputs, without one, or with ``rectified``, where the observed values already passed it)."""
        if not self.at_output or self.rectified or self.kind(name) is None:
            return None
        ceiling = self.ceiling(name)
        return 0.0, math.inf if ceiling is None else ceiling

    def module(self, name: str) -> nn.Module | None:
        """The fused activation as a module (None without one)."""
        fused = self.kind(name)
        return self.clamps[name] if fused is ChannelClamp else (fused() if fused is not None else None)
