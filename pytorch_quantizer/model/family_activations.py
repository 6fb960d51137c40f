"""Activations of the other seeds' kinds inside a ``QuantizedModel``: the per-layer level
plans (fixed, like DoReFa's, or calibrated, like APoT's alpha and N2UQ's thresholds) and XNOR's
sign input, whose per-position scale K multiplies the layer's GEMM output:

    y = (W (*) sign(x)) * K + b
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pytorch_quantizer.quantizers import families
from pytorch_quantizer.quantizers.config import TensorQuantSpec, WeightKind
from pytorch_quantizer.errors import QuantizationError


@dataclass
class FamilyActivations:
    """``plans``: the level plan of each layer's input, by layer name; XNOR's K waits in
    ``xnor_scales`` between a layer's input hook and its output hook."""

    plans: dict[str, families.LevelPlan] = field(default_factory=dict)
    xnor_scales: dict[str, torch.Tensor] = field(default_factory=dict)

    def add_layer(self, name: str, spec: TensorQuantSpec) -> bool:
        """Note a layer whose input is of ``spec``'s kind; True when its output needs XNOR's hook."""
        if spec.kind == WeightKind.BINARY:
            return True
        fixed = families.fixed_activation_plan(spec.kind, spec.bits)
        if fixed is not None:
            self.plans[name] = fixed
        return False

    def use(self, plans: dict[str, families.LevelPlan]) -> None:
        """Calibrated or trained plans (``family_calibration.calibrate_activations``, ``qat``)."""
        self.plans.update(plans)

    def quantize(self, name: str, spec: TensorQuantSpec, x: torch.Tensor, module: nn.Module,
                 want_codes: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(quantized input, its integer codes when ``want_codes``)."""
        if spec.kind == WeightKind.BINARY:
            values, self.xnor_scales[name] = families.xnor_input(x, module)
            return values, (values > 0).float() if want_codes else None
        plan = self.plans.get(name)
        if plan is None:
            raise QuantizationError(f"layer {name} runs but its {spec.kind.value} activations were never calibrated "
                             "(calibration never reached it)")
        return plan.apply(x), plan.codes(x) if want_codes else None

    def xnor_output(self, name: str, output: torch.Tensor, module: nn.Module) -> torch.Tensor:
        return families.xnor_output(output, self.xnor_scales.pop(name), module)
