"""What a ``QuantizedModel`` measured while it ran: per-layer bits, clipping, errors and the entropy
of the integer codes, and their element-weighted averages (the seed's "average bit rate")."""
from __future__ import annotations

from pytorch_quantizer.maths.entropy import weighted_average


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
