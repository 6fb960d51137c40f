"""Activation bias correction measured once on calibration images and folded into the layer biases
(this project's ``-bca``, the departure ``bca_folded``; the seed's online correction is
``bias_correction.correct_positive_outputs``).

Per output channel c of every quantized Conv/Linear layer, over the calibration batches:

    correction_c = mean over (images, positions) of  y_float,c - y_quantized,c

where y_float is the float layer (float weights and bias) applied to the layer's unquantized input
and y_quantized the layer's output in the quantized model (quantized weights and, when activations
are quantized at GEMM inputs, the quantized input), before its output is quantized. The correction
is added to the bias.
"""
from __future__ import annotations

import torch
from torch import nn

from pytorch_quantizer.model.calibration import batch_images


@torch.no_grad()
def fold_activation_bias(quantized, batches, device: torch.device, sum_over_processes=None) -> dict[str, torch.Tensor]:
    """Measure the corrections of a ``QuantizedModel`` on ``batches`` and add them to its biases;
    returns {layer: correction}. ``sum_over_processes`` adds the sums and counts of processes that
    saw other batches."""
    raw_inputs: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []

    def keep_input(name):
        def hook(module, args):
            if not quantized.bypassing:
                raw_inputs[name] = args[0]
        return hook

    def measure(name):
        def hook(module, args, output):
            if quantized.bypassing:
                return
            weight, bias = quantized.float_params[name]
            with quantized.bypassed():
                reference = torch.func.functional_call(module, {"weight": weight, "bias": bias}, (raw_inputs[name],))
            difference = (reference - output).transpose(0, 1).reshape(output.shape[1], -1)
            sums[name] = sums.get(name, 0) + difference.double().sum(dim=1)
            counts[name] = counts.get(name, 0) + difference.shape[1]
        return hook

    for name, plan in quantized.plans.items():
        if plan.weight is None and plan.activation is None:
            continue
        module = quantized.model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(keep_input(name), prepend=True))
        handles.append(module.register_forward_hook(measure(name), prepend=True))
    try:
        for item in batches:
            quantized.model(batch_images(item).to(device))
    finally:
        for handle in handles:
            handle.remove()
    corrections = {}
    for name in sorted(sums):
        total, count = sums[name], torch.tensor(counts[name], dtype=torch.float64)
        if sum_over_processes is not None:
            total, count = sum_over_processes(total), sum_over_processes(count)
        corrections[name] = (total / count).to(quantized.model.get_submodule(name).weight.dtype)
    add_corrections(quantized, corrections)
    return corrections


@torch.no_grad()
def add_corrections(quantized, corrections: dict[str, torch.Tensor]) -> None:
    """Add each layer's correction to its bias (a zero bias first where it has none)."""
    for name, correction in corrections.items():
        module = quantized.model.get_submodule(name)
        correction = correction.to(module.weight.device, module.weight.dtype)
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros_like(correction))
        module.bias.add_(correction)
