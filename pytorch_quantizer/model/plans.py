"""The per-layer plan of a quantized model: which Conv2d / Linear layers quantize their weights and
activations, with which spec, where a ReLU is fused, and which layers are kept at 8 bits or in float
(name patterns of ``QuantConfig.keep_8bit`` / ``keep_fp``, data rather than shape checks)."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace

from torch import nn

from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.model.graph import GEMM_LAYERS, ModelGraph, has_spatial_extent
from pytorch_quantizer.model.observers import ObservedLayer
from pytorch_quantizer.quantizers.config import ActQuantPoint, QuantConfig, TensorQuantSpec

ACTIVATION_AXIS = 1
RELU6_CEILING = 6.0


@dataclass(frozen=True)
class LayerPlan:
    name: str
    layer_type: str
    activation: TensorQuantSpec | None
    weight: TensorQuantSpec | None
    fused_activation: type | None = None
    kept_8bit: bool = False
    per_tensor_only: bool = False   # kept at 8 bits, or an activation without spatial extent


def observed_layer(spec: TensorQuantSpec, axis: int, image_averaged_range: bool = False,
                   fused_range: tuple[float, float] | None = None) -> ObservedLayer:
    """What to observe for a tensor quantized per ``spec`` (channel ``axis`` when per channel;
    ``fused_range``: ``FusedActivations.fused_range``)."""
    return ObservedLayer(axis if spec.per_channel else None, spec.clipping, spec.bits, image_averaged_range,
                         fused_range)


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def kept_at(spec: TensorQuantSpec | None, bits: int, min_max_per_tensor: bool = False) -> TensorQuantSpec | None:
    """``spec`` at ``bits`` without allocation (unchanged when already that wide); with
    ``min_max_per_tensor`` over the tensor's min / max, as the seed quantizes its classifier output."""
    if spec is None:
        return None
    if spec.bits < bits or spec.bit_allocation or spec.bin_allocation or not spec.kind.grid:
        spec = spec.at_bits(max(bits, spec.bits))
    return replace(spec, per_channel=False, clipping="no") if min_max_per_tensor else spec


def per_tensor(spec: TensorQuantSpec | None) -> TensorQuantSpec | None:
    """``spec`` per tensor (allocation, which is per channel, dropped)."""
    if spec is None or not spec.per_channel:
        return spec
    return replace(spec, per_channel=False, bit_allocation=False, bin_allocation=False, allocation_target=None)


def plan_layers(model: nn.Module, config: QuantConfig, graph: ModelGraph) -> dict[str, LayerPlan]:
    """One plan per Conv2d/Linear: float where ``keep_fp`` matches, 8 bits where ``keep_8bit`` does.
    Activations without spatial extent (Linear, 1x1 feature maps) are quantized per tensor even when
    activations are per channel, as the seed does."""
    at_output = config.act_quant_point == ActQuantPoint.OUTPUT
    shapes = graph.output_shapes if at_output else graph.input_shapes
    plans = {}
    for name, module in model.named_modules():
        if not isinstance(module, GEMM_LAYERS):
            continue
        activation, weight = config.activations, config.weights
        kept = not matches(name, config.keep_fp) and matches(name, config.keep_8bit)
        if matches(name, config.keep_fp):
            activation = weight = None
        elif kept:
            activation, weight = kept_at(activation, 8, min_max_per_tensor=True), kept_at(weight, 8)
        weight_bits, activation_bits = config.bits_of(name)
        weight, activation = at_layer_bits(weight, weight_bits), at_layer_bits(activation, activation_bits)
        flat = not has_spatial_extent(shapes.get(name, ()))
        if flat:
            activation = per_tensor(activation)
        fused_activation = graph.activation_after.get(name) if at_output else None
        plans[name] = LayerPlan(name, type(module).__name__, activation, weight, fused_activation, kept, kept or flat)
    check_patterns_match(list(plans), config)
    unknown = [name for name, _, _ in config.layer_bits if name not in plans]
    if unknown:
        raise QuantizationError(f"layer_bits names {unknown[0]}, which is not a Conv2d / Linear layer of the model",
                                code="layer_bits_unknown_layer", field="layer_bits", detail=unknown[0])
    return plans


def at_layer_bits(spec: TensorQuantSpec | None, bits: int | None) -> TensorQuantSpec | None:
    """``spec`` at a layer's own ``bits`` (a mixed-precision plan); an allocation then targets them."""
    if spec is None or bits is None:
        return spec
    return replace(spec, bits=bits, allocation_target=float(bits) if spec.bin_allocation else None)


def check_patterns_match(layer_names: list[str], config: QuantConfig) -> None:
    """A keep-8bit / keep-fp pattern that matches no layer is a typo: the run would not be the one asked for."""
    for field, patterns in (("keep_8bit", config.keep_8bit), ("keep_fp", config.keep_fp)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in layer_names):
                examples = ", ".join(layer_names[:2] + ["...", layer_names[-1]]) if layer_names else "none"
                raise QuantizationError(
                    f"{field} pattern {pattern} matches no Conv2d / Linear layer of the model (its layers: {examples}); "
                    "pass a layer name or an fnmatch pattern such as 'layer1.*'",
                    code="pattern_matches_no_layer", field=field,
                    detail=f"{pattern} matches no Conv2d / Linear layer of the model (its layers: {examples})")
    if layer_names and all(matches(name, config.keep_fp) for name in layer_names):
        raise QuantizationError(f"keep_fp {' '.join(config.keep_fp)} leaves every Conv2d / Linear layer in float, so "
                                "nothing is quantized; narrow the patterns", code="everything_float", field="keep_fp",
                                detail=" ".join(config.keep_fp))
