"""The weights and biases of a ``QuantizedModel``: each layer's weight quantized once from its float
(BN-folded) weight, by its plan, with a learned rounding where one is given, weight bias / variance
correction, and (``int32_bias``) biases on their accumulator grids."""
from __future__ import annotations

import torch

from pytorch_quantizer.maths import primitives
from pytorch_quantizer.maths.bias_correction import correct_weights
from pytorch_quantizer.maths.int32_bias import accumulator_bias
from pytorch_quantizer.maths.kmeans import kmeans_quantize
from pytorch_quantizer.maths.weight_grid import Grid, rounded_codes, rounded_weight
from pytorch_quantizer.model.graph import ChannelClamp
from pytorch_quantizer.model.layer_measures import LayerMeasures, value_codes
from pytorch_quantizer.model.observers import observe
from pytorch_quantizer.model.plans import observed_layer
from pytorch_quantizer.quantizers import families
from pytorch_quantizer.quantizers.config import TensorQuantSpec, WeightKind
from pytorch_quantizer.quantizers.quantizer import apply_plan, plan_quantization

WEIGHT_AXIS = 0


@torch.no_grad()
def weight_values(weight: torch.Tensor, spec: TensorQuantSpec, config, up: torch.Tensor | None = None,
                  seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor, LayerMeasures]:
    """(quantized and corrected values, integer codes, measures) of a float ``weight`` per ``spec``:
    k-means, the other seeds' kinds, or the GEMMLOWP grid, rounded to nearest (stochastically with
    ``seed``) or by a learned rounding ``up``."""
    measures = LayerMeasures(elements=weight.numel())
    if spec.kind == WeightKind.KMEANS:
        values, codes = kmeans_quantize(weight, spec.bits, spec.per_channel, config.seed)
        measures.mean_bits = float(spec.bits)
    elif not spec.kind.grid:
        values, codes = families.quantize_weight(weight, spec.kind, spec.bits, spec.per_channel)
        measures.mean_bits = float(spec.bits)
    else:
        plan = plan_quantization(observe(weight, observed_layer(spec, WEIGHT_AXIS)), spec, config, False, weights=True)
        if up is None:
            outcome = apply_plan(weight, plan, WEIGHT_AXIS, seed=seed, want_codes=True)
            values, codes = outcome.values, outcome.codes
        else:
            grid = Grid(plan.scale, plan.zero_point, plan.qmax)
            codes = rounded_codes(weight, grid, up.to(weight.device))
            values = rounded_weight(weight, grid, up.to(weight.device))
        measures.mean_bits = float(plan.bits.float().mean())
        measures.clip_mean = float(((plan.hi - plan.lo) / 2).mean())
    correction = weight_correction(config)
    return (values if correction is None else correction(weight, values)), codes, measures


def weight_correction(config):
    """What the model does to every quantized weight (``-bcw`` / ``-vcw``: ``correct_weights``), as
    f(float weight, quantized weight), differentiable; None without a correction. The learners of the
    rounding apply it too, so that they fit the weights the model will evaluate."""
    if not (config.bias_correct_weights or config.variance_correct_weights):
        return None
    return lambda weight, values: correct_weights(weight, values, config.bias_correct_weights,
                                                  config.variance_correct_weights)


@torch.no_grad()
def quantize_weight(quantized, name: str) -> None:
    """The layer's weight quantized from its float weight per its plan (with its learned rounding,
    if any), corrected, with its measures (codes, error) recorded."""
    module = quantized.model.get_submodule(name)
    weight = quantized.float_params[name][0].to(module.weight.device)
    values, codes, measures = weight_values(weight, quantized.plans[name].weight, quantized.config,
                                            quantized.weight_roundings.get(name), quantized.rounding_seed())
    measures.add_codes(codes)
    measures.add_error(weight, values)
    quantized.weight_measures[name] = measures
    module.weight.data.copy_(values)


def weight_grid(quantized, name: str) -> Grid | None:
    """The GEMMLOWP grid of the layer's weight (from its float weight, with ``int32_bias``'s raised
    scales), None where its weight is float, of another kind, or on mid-tread bins."""
    spec = quantized.plans[name].weight
    if spec is None or spec.kind != WeightKind.INT:
        return None
    if name in quantized.grid_overrides:
        return quantized.grid_overrides[name]
    weight = quantized.float_params[name][0]
    plan = plan_quantization(observe(weight, observed_layer(spec, WEIGHT_AXIS)), spec, quantized.config, False,
                             weights=True)
    return None if plan.mid_tread else Grid(plan.scale, plan.zero_point, plan.qmax)


def integer_grid_layers(quantized) -> list[str]:
    """The layers whose weights lie on a GEMMLOWP grid (those learned rounding applies to)."""
    return [name for name in quantized.plans if weight_grid(quantized, name) is not None]


@torch.no_grad()
def use_weight_rounding(quantized, name: str, up: torch.Tensor) -> None:
    """Quantize the layer's weight again with a learned rounding (``adaround``: 1 rounds up)."""
    quantized.weight_roundings[name] = up.detach().float()
    quantize_weight(quantized, name)
    if quantized.config.int32_bias and quantized.activation_stats is not None:
        round_biases(quantized)


@torch.no_grad()
def record_trained_weight(quantized, name: str, float_weight: torch.Tensor, quantized_weight: torch.Tensor) -> None:
    """A weight set by training (``qat``): the float one becomes the layer's float parameter."""
    module = quantized.model.get_submodule(name)
    bias = module.bias.detach().clone() if module.bias is not None else None
    quantized.float_params[name] = (float_weight, bias)
    spec = quantized.plans[name].weight
    if spec is None:
        return
    measures = LayerMeasures(elements=float_weight.numel(), mean_bits=float(spec.bits))
    measures.add_codes(value_codes(quantized_weight, spec.per_channel))
    measures.add_error(float_weight, quantized_weight)
    quantized.weight_measures[name] = measures


@torch.no_grad()
def requantize_weight(quantized, name: str) -> None:
    """The layer's current (trained) float weight becomes its float parameter and is quantized per its plan."""
    module = quantized.model.get_submodule(name)
    bias = module.bias.detach().clone() if module.bias is not None else None
    quantized.float_params[name] = (module.weight.detach().clone(), bias)
    if quantized.plans[name].weight is not None:
        quantize_weight(quantized, name)


def input_grid_scale(quantized, name: str) -> torch.Tensor | None:
    """The scale of the per-tensor grid that the layer's input lies on exactly, if any: its own
    input quantization (GEMM inputs), or the output quantization of the layer it reads (outputs),
    which a following ReLU / ReLU6 leaves on the grid where the grid starts at 0 (zero point 0)
    and an equalized per-channel clamp does not."""
    source = name if not quantized.at_output else quantized.input_producers.get(name)
    plan = quantized.plans.get(source) if source is not None else None
    if plan is None or plan.activation is None or not plan.activation.kind.grid or plan.activation.per_channel:
        return None
    grid = quantized.activation_plan(source)
    if grid.mid_tread:
        return None
    fused = plan.fused_activation if quantized.at_output else None
    if fused is ChannelClamp or (fused is not None and float(grid.zero_point) != 0):
        return None
    return grid.scale.float().reshape(())


@torch.no_grad()
def round_biases(quantized) -> None:
    """Each bias on its accumulator grid (``int32_bias.accumulator_bias``) where the layer's input
    lies on a grid; a raised weight scale re-quantizes its channels and serves ``weight_grid``."""
    quantized.bias_scales, quantized.grid_overrides = {}, {}
    for name in quantized.plans:
        module = quantized.model.get_submodule(name)
        grid, float_bias = weight_grid(quantized, name), quantized.float_params[name][1]
        input_scale = input_grid_scale(quantized, name) if grid is not None and float_bias is not None else None
        placed = accumulator_bias(float_bias, input_scale, grid) if input_scale is not None else None
        if placed is None:
            continue
        module.bias.data.copy_(placed.values)
        quantized.bias_scales[name] = placed.scale
        if bool(placed.raised.any()):
            quantized.grid_overrides[name] = placed.grid
            channels = placed.raised
            module.weight.data[channels] = primitives.fake_quantize(
                quantized.float_params[name][0][channels], placed.grid.scale[channels],
                placed.grid.zero_point[channels], placed.grid.qmax.expand(channels.shape[0])[channels], 0)
