"""What a ``QuantizedModel`` measured while it ran: per-layer bits, clipping, errors and the entropy
of the integer codes, and their element-weighted averages (the seed's "average bit rate")."""
from __future__ import annotations

import torch
from torch import nn

from pytorch_quantizer.maths.entropy import weighted_average
from pytorch_quantizer.model.graph import GEMM_LAYERS

FLOAT_BITS = 32   # a float tensor in a bit-operation count


def merge_activation_measures(quantized, sum_over_processes) -> None:
    """Combine the activation figures of processes that evaluated other batches (weights are the
    same in every process and are not summed)."""
    for name in sorted(quantized.activation_measures):
        quantized.activation_measures[name].merge(sum_over_processes)


def entropy_summary(quantized) -> dict[str, float]:
    """Per-layer entropy / Huffman bits and their element-weighted averages."""
    summary = {}
    for kind, measures in (("act", quantized.activation_measures), ("weight", quantized.weight_measures)):
        measured = {name: m for name, m in measures.items() if m.histogram is not None and m.elements}
        if not measured:
            continue
        entropies = {name: m.entropy for name, m in measured.items()}
        huffman = {name: m.huffman for name, m in measured.items()}
        elements = {name: m.elements for name, m in measured.items()}
        summary[f"avg.entropy.{kind}"] = weighted_average(entropies, elements)
        summary[f"avg.huffman.{kind}"] = weighted_average(huffman, elements)
        for name in measured:
            summary[f"entropy.{kind}.{name}"] = entropies[name]
    return summary


def layer_report(quantized) -> list[dict]:
    """One row per quantized tensor: layer, type, tensor, bits, clipping, clip value, MSE, SQNR,
    entropy, Huffman bits, elements."""
    rows = []
    for name, plan in quantized.plans.items():
        for kind, spec, measures in (("weight", plan.weight, quantized.weight_measures.get(name)),
                                     ("activation", plan.activation, quantized.activation_measures.get(name))):
            if spec is None or measures is None:
                continue
            rows.append({"layer": name, "type": plan.layer_type, "tensor": kind, "bits": measures.mean_bits,
                         "clipping": spec.clipping, "clip_value": measures.clip_mean, "mse": measures.mse,
                         "sqnr_db": measures.sqnr_db, "entropy": measures.entropy, "huffman": measures.huffman,
                         "elements": measures.elements})
    return rows


@torch.no_grad()
def layer_sizes(model: nn.Module, image: torch.Tensor, at_output: bool) -> dict[str, tuple[int, int, int]]:
    """{layer: (weights, activation elements at the quantization point, multiply-accumulates)} per image."""
    sizes, handles = {}, []

    def record(name):
        def hook(module, args, output):
            source = output if at_output else args[0]
            per_output = module.weight[0].numel() if isinstance(module, nn.Conv2d) else module.in_features
            sizes[name] = (module.weight.numel(), source[0].numel(), output[0].numel() * per_output)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, GEMM_LAYERS):
            handles.append(module.register_forward_hook(record(name)))
    try:
        model(image[:1])
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def bit_costs(quantized, image: torch.Tensor) -> dict[str, float]:
    """What the quantized model spends, every quantized layer counted (layers kept at 8 bits
    included): mean weight bits by weight count (allocated bits as measured), mean activation bits
    by activation elements, and giga bit-operations per image (MACs x weight bits x activation bits,
    a float tensor counted at 32 bits)."""
    with quantized.float_model() as model:
        sizes = layer_sizes(model, image, quantized.at_output)
    weight_bits = weights = activation_bits = elements = operations = 0.0
    for name, plan in quantized.plans.items():
        params, activation_elements, macs = sizes.get(name, (0, 0, 0))
        measured = quantized.weight_measures.get(name)
        w = measured.mean_bits if plan.weight is not None and measured is not None else None
        a = plan.activation.bits if plan.activation is not None else None
        if w is not None:
            weight_bits, weights = weight_bits + w * params, weights + params
        if a is not None:
            activation_bits, elements = activation_bits + a * activation_elements, elements + activation_elements
        operations += macs * (w if w is not None else FLOAT_BITS) * (a if a is not None else FLOAT_BITS)
    return {"mean_weight_bits": weight_bits / weights if weights else float("nan"),
            "mean_activation_bits": activation_bits / elements if elements else float("nan"),
            "gbops": operations / 1e9}
