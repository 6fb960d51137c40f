"""The forward hooks that quantize a ``QuantizedModel``'s activations, keyed by module name: forward
hooks on Conv/Linear outputs (``act_quant_point=output``, the seed's), or forward pre-hooks on the
input of every GEMM (``input``); XNOR's output scaling. Each takes its grid from the fixed
(offline) statistics, or from the batch itself when there are none."""
from __future__ import annotations

import torch
from torch import nn

from pytorch_quantizer.maths.bias_correction import correct_positive_outputs
from pytorch_quantizer.maths.primitives import broadcast_shape
from pytorch_quantizer.maths.step_size import lsq_fake_quantize
from pytorch_quantizer.model.observers import observe
from pytorch_quantizer.model.plans import ACTIVATION_AXIS, observed_layer
from pytorch_quantizer.quantizers.quantizer import apply_plan, plan_quantization


def attach(quantized) -> list:
    """Register the hooks of every layer with quantized activations; returns their handles."""
    handles = []
    for name, plan in quantized.activation_plans().items():
        module = quantized.model.get_submodule(name)
        if quantized.at_output:
            handles.append(module.register_forward_hook(output_hook(quantized, name)))
        else:
            handles.append(module.register_forward_pre_hook(input_hook(quantized, name)))
        if not plan.activation.kind.grid and quantized.family_activations.add_layer(name, plan.activation):
            handles.append(module.register_forward_hook(xnor_output_hook(quantized, name)))
    return handles


def image_averaged_online(quantized, name: str) -> bool:
    """The seed's per-batch range of a per-tensor activation without clipping: each image's
    min / max averaged over the batch (not at the 8-bit classifier; the departure ``batch_range``
    takes the batch's)."""
    plan = quantized.plans[name]
    spec = plan.activation
    return not (quantized.config.departures.batch_range or spec.per_channel or spec.clipping != "no"
                or plan.kept_8bit)


@torch.no_grad()
def quantize_activation(quantized, name: str, x: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """A GEMMLOWP activation: the fixed plan, or one planned from this batch's statistics. Its error
    is measured against ``reference``, the float tensor at the same point of the network (default
    ``x``; at an output with a fused ReLU, the ReLU's output, since the grid starting at 0 applies it)."""
    spec = quantized.plans[name].activation
    fused = quantized.fused
    if quantized.activation_stats is not None:
        plan = quantized.activation_plan(name)
    else:
        stats = observe(x, observed_layer(spec, ACTIVATION_AXIS, image_averaged_online(quantized, name),
                                          fused.fused_range(name)))
        plan = plan_quantization(stats, spec, quantized.config, fused.starts_at_zero(name, stats),
                                 ceiling=fused.ceiling(name))
    outcome = apply_plan(x, plan, ACTIVATION_AXIS, seed=quantized.rounding_seed(),
                         want_codes=quantized.config.measure_entropy)
    measures = quantized.activation_measures[name]
    measures.elements += x.numel()
    if quantized.measure_error or outcome.codes is not None:
        measures.mean_bits = float(outcome.bits.float().mean())
        measures.clip_mean = float(((outcome.hi - outcome.lo) / 2).mean())
    if outcome.codes is not None:
        measures.add_codes(outcome.codes)
    if quantized.measure_error:
        measures.add_error(x if reference is None else reference, outcome.values)
    return outcome.values


@torch.no_grad()
def quantize_family_activation(quantized, name: str, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The other seeds' kinds (``family_activations``): XNOR's sign or a level plan."""
    spec = quantized.plans[name].activation
    values, codes = quantized.family_activations.quantize(name, spec, x, module, quantized.config.measure_entropy)
    measures = quantized.activation_measures[name]
    measures.elements += x.numel()
    measures.mean_bits = float(spec.bits)
    if codes is not None:
        measures.add_codes(codes)
    if quantized.measure_error:
        measures.add_error(x, values)
    return values.to(x.dtype)


def learned_activation(quantized, name: str, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` on the layer's fixed grid with a step size being learned (LSQ): differentiable in both."""
    plan = quantized.activation_plan(name)
    shape = broadcast_shape(x, ACTIVATION_AXIS) if plan.scale.dim() else ()
    return lsq_fake_quantize(x, scale, plan.zero_point.to(x.device), plan.qmax.to(x.device), shape)


def input_hook(quantized, name: str):
    def hook(module, args):
        if quantized.bypassing or name in quantized.floating:
            return None
        scale = quantized.learning.learnable_scale(name)
        if scale is not None:
            return (quantized.learning.learned(args[0], learned_activation(quantized, name, args[0], scale)),
                    *args[1:])
        if not quantized.plans[name].activation.kind.grid:
            values = quantize_family_activation(quantized, name, args[0], module)
        else:
            values = quantize_activation(quantized, name, args[0])
        return (quantized.learning.passed_on(args[0], values),) + tuple(args[1:])
    return hook


def corrects_outputs_online(quantized) -> bool:
    """The seed's -bca: with offline statistics, each Conv output corrected per batch."""
    config = quantized.config
    return (config.bias_correct_activations and not config.departures.bca_folded
            and quantized.activation_stats is not None)


def output_hook(quantized, name: str):
    def hook(module, args, output):
        if quantized.bypassing or name in quantized.floating:
            return None
        fused = quantized.fused
        scale = quantized.learning.learnable_scale(name)
        if scale is not None:
            return quantized.learning.learned(output, learned_activation(quantized, name, fused.observed(name, output),
                                                                         scale))
        reference = fused.apply(name, output) if quantized.measure_error else None
        values = quantize_activation(quantized, name, fused.observed(name, output), reference)
        if corrects_outputs_online(quantized) and isinstance(module, nn.Conv2d):
            values = correct_positive_outputs(fused.apply(name, output), values)
        return quantized.learning.passed_on(output, values)
    return hook


def xnor_output_hook(quantized, name: str):
    def hook(module, args, output):
        if quantized.bypassing:
            return None
        return quantized.family_activations.xnor_output(name, output, module)
    return hook
