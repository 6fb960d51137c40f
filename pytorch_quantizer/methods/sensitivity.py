"""Per-layer sensitivity: where a quantized model loses its accuracy, and what each bit width of
each layer costs. On calibration images, for every layer with an integer grid and every candidate
bit width b:

- ``weights``: only that layer's weights quantized at b (the recipe's clipping, allocation and
  corrections), everything else float;
- ``activations``: only that layer's activation quantized at b, at the recipe's point, with the
  calibration statistics;
- ``all_but``: every other layer quantized at b (weights and activations; layers kept at 8 bits
  stay there), that layer float.

Each against the FP32 model on the same images: KL(p_FP32 || p) averaged over images (nats), the
top-1 agreement (%), and for the first two the layer's own output SQNR (dB). The float model runs
once per batch with every value kept (``partial_runs``): a perturbation at a layer recomputes only
the network after it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from pytorch_quantizer.model.observers import observe
from pytorch_quantizer.model.partial_runs import CachedRun, traced
from pytorch_quantizer.model.plans import ACTIVATION_AXIS, at_layer_bits, observed_layer
from pytorch_quantizer.model.quantized_model import QuantizedModel
from pytorch_quantizer.model.report import layer_sizes
from pytorch_quantizer.model.weights import weight_values
from pytorch_quantizer.quantizers.config import TensorQuantSpec, WeightKind
from pytorch_quantizer.quantizers.quantizer import apply_plan, plan_quantization

KINDS = ("weights", "activations", "all_but")


@dataclass(frozen=True)
class SensitivityRow:
    """One measurement. ``order``: the layer's place in execution; ``params``: its weight count;
    ``elements`` / ``macs``: its quantized activation's elements and its multiply-accumulates per image."""

    layer: str
    order: int
    layer_type: str
    kept_8bit: bool
    kind: str
    bits: int
    kl: float
    agreement: float
    sqnr_db: float
    params: int
    elements: int
    macs: int


class Sums:
    """Running sums of one measurement over batches."""

    def __init__(self):
        self.kl = self.agreeing = self.images = self.signal = self.noise = 0.0

    def add_output(self, logits: torch.Tensor, reference: torch.Tensor) -> None:
        log_p, log_reference = F.log_softmax(logits.double(), 1), F.log_softmax(reference.double(), 1)
        self.kl += float(F.kl_div(log_p, log_reference, reduction="sum", log_target=True))
        self.agreeing += float((logits.argmax(1) == reference.argmax(1)).sum())
        self.images += logits.shape[0]

    def add_error(self, reference: torch.Tensor, values: torch.Tensor) -> None:
        self.signal += float(reference.double().square().sum())
        self.noise += float((reference.double() - values.double()).square().sum())

    def figures(self) -> tuple[float, float, float]:
        sqnr = 10 * torch.log10(torch.tensor(self.signal / self.noise)).item() if self.noise > 0 else float("inf")
        return self.kl / self.images, 100.0 * self.agreeing / self.images, sqnr if self.signal else float("nan")


def integer_layers(quantized: QuantizedModel) -> dict[str, tuple[bool, bool]]:
    """{layer: (weights on an integer grid, activation on one)} of the layers with either."""
    found = {}
    for name, plan in quantized.plans.items():
        weights = plan.weight is not None and plan.weight.kind == WeightKind.INT
        activations = plan.activation is not None and plan.activation.kind == WeightKind.INT
        if weights or activations:
            found[name] = (weights, activations)
    return found


def weight_replacement(quantized: QuantizedModel, name: str, bits: int, sums: Sums):
    module = quantized.model.get_submodule(name)
    weight = quantized.float_params[name][0]
    values = weight_values(weight, at_layer_bits(quantized.plans[name].weight, bits), quantized.config)[0]

    def replaced(layer: nn.Module, *args):
        reference = layer(*args)
        output = torch.func.functional_call(module, {"weight": values}, args)
        sums.add_error(reference, output)
        return output
    return replaced


def activation_replacement(quantized: QuantizedModel, name: str, bits: int, sums: Sums):
    spec: TensorQuantSpec = at_layer_bits(quantized.plans[name].activation, bits)
    fused, config = quantized.fused, quantized.config
    stats = quantized.activation_stats.get(name) if quantized.activation_stats is not None else None

    def quantize(x: torch.Tensor) -> torch.Tensor:
        observed = stats if stats is not None else observe(
            x, observed_layer(spec, ACTIVATION_AXIS, fused_range=fused.fused_range(name)))
        plan = plan_quantization(observed, spec, config, fused.starts_at_zero(name, observed), ceiling=fused.ceiling(name))
        return apply_plan(x, plan, ACTIVATION_AXIS).values

    def replaced(layer: nn.Module, *args):
        if not quantized.at_output:
            values = quantize(args[0])
            sums.add_error(args[0], values)
            return layer(values, *args[1:])
        output = layer(*args)
        values = quantize(fused.observed(name, output))
        sums.add_error(fused.apply(name, output), values)
        return values
    return replaced


def float_replacement(other: QuantizedModel, name: str):
    module = other.model.get_submodule(name)
    weight, bias = other.float_params[name]
    parameters = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}

    def replaced(layer: nn.Module, *args):
        with other.bypassed():
            return torch.func.functional_call(module, parameters, args)
    return replaced


def all_at_bits(quantized: QuantizedModel, bits: int) -> QuantizedModel:
    """A second quantized copy with every integer-grid tensor at ``bits`` (layers kept at 8 bits stay
    there), the same statistics, entered (exit it when done)."""
    config = quantized.config
    at_bits = replace(config, layer_bits=(),
                      weights=at_layer_bits(config.weights, bits) if config.weights is not None
                      and config.weights.kind == WeightKind.INT else config.weights,
                      activations=at_layer_bits(config.activations, bits) if config.activations is not None
                      and config.activations.kind == WeightKind.INT else config.activations)
    with quantized.float_model() as model:
        source = copy.deepcopy(model)
    for module in source.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    other = QuantizedModel(source, at_bits, quantized.example_input, inplace=True).__enter__()
    other.use_statistics(quantized.activation_stats)
    return other


def measure_sensitivity(quantized: QuantizedModel, images: torch.Tensor, bits: tuple[int, ...],
                        kinds: tuple[str, ...] = KINDS, batch: int = 32, progress=None) -> list[SensitivityRow]:
    """The rows of every (integer-grid layer, kind, bit width) on ``images`` (module docstring);
    ``progress(iterable, description)`` wraps the loops over layers."""
    from pytorch_quantizer.methods.reconstruction import execution_order

    layers = integer_layers(quantized)
    sums = {(name, kind, b): Sums() for name in layers for kind in kinds for b in bits}
    chunks = [images[start:start + batch] for start in range(0, len(images), batch)]
    references = []
    with quantized.float_model() as model:
        order = execution_order(model, images, list(layers))
        sizes = layer_sizes(model, images, quantized.at_output)
        graph = traced(model)
        for chunk in chunks:
            run = CachedRun(model, graph, chunk)
            references.append(run.output)
            for name in progress(order, "sensitivity") if progress else order:
                for b in bits:
                    for kind, applies, make in (("weights", layers[name][0], weight_replacement),
                                                ("activations", layers[name][1], activation_replacement)):
                        if kind in kinds and applies:
                            key = (name, kind, b)
                            sums[key].add_output(run.replaced(name, make(quantized, name, b, sums[key])), run.output)
    if "all_but" in kinds:
        for b in bits:
            other = all_at_bits(quantized, b)
            try:
                graph = traced(other.model)
                for chunk, reference in zip(chunks, references):
                    run = CachedRun(other.model, graph, chunk)
                    for name in progress(order, f"all but one at {b} bits") if progress else order:
                        sums[(name, "all_but", b)].add_output(run.replaced(name, float_replacement(other, name)),
                                                              reference)
            finally:
                other.__exit__(None, None, None)
    rows = []
    for (name, kind, b), measured in sums.items():
        if not measured.images:
            continue
        kl, agreement, sqnr = measured.figures()
        plan = quantized.plans[name]
        rows.append(SensitivityRow(name, order.index(name), plan.layer_type, plan.kept_8bit, kind, b, kl, agreement,
                                   sqnr if kind != "all_but" else float("nan"), *sizes[name]))
    return rows
