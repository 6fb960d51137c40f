"""Learned weight rounding over a whole ``transform.QuantizedModel``: AdaRound layer by layer, in
the order the layers run, each layer's inputs taken from the quantized model as it stands (earlier
layers already rounded, activations quantized as the run's recipe does) and its targets from the
float model on the same images.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pytorch_quantizer import adaround


class _Captured(Exception):
    """Stops a forward pass once the wanted layer's input is taken."""


@dataclass(frozen=True)
class RoundingOptions:
    iterations: int
    batch: int
    seed: int = 0


def execution_order(model: nn.Module, images: torch.Tensor, names: list[str]) -> list[str]:
    """``names`` in the order their modules run on ``images``."""
    order: list[str] = []
    handles = [model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: order.append(name) if name not in order else None) for name in names]
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    return order


@contextmanager
def _stopping_at(module: nn.Module, store: list[torch.Tensor]):
    """While open, a forward through ``module`` appends what the module reads (after any input
    quantization of its pre-hooks) and stops the pass."""
    def hook(_module, args, _output):
        store.append(args[0].detach())
        raise _Captured

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def layer_inputs(model: nn.Module, name: str, images: torch.Tensor, batch: int) -> torch.Tensor:
    """What layer ``name`` reads on every image (batches of ``batch``), stopping each pass there."""
    store: list[torch.Tensor] = []
    with _stopping_at(model.get_submodule(name), store), torch.no_grad():
        for start in range(0, len(images), batch):
            try:
                model(images[start:start + batch])
            except _Captured:
                pass
    return torch.cat(store)


def learn_model_rounding(quantized, images: torch.Tensor, options: RoundingOptions, bar=None
                         ) -> dict[str, adaround.RoundingResult]:
    """AdaRound every layer with integer-grid weights, in execution order; each learned rounding is
    put in place (``quantized.use_weight_rounding``) before the next layer's inputs are taken.
    ``bar(layer_names)`` wraps the layer loop (a progress bar) and may take ``set_postfix``."""
    names = [name for name in quantized.plans if quantized.weight_grid(name) is not None]
    names = execution_order(quantized.model, images, names)
    results = {}
    layers = bar(names) if bar is not None else names
    for name in layers:
        module = quantized.model.get_submodule(name)
        with quantized.float_model() as model:
            float_inputs = layer_inputs(model, name, images, options.batch)
            float_weight = quantized.float_params[name][0]
            with torch.no_grad():
                targets = torch.cat([adaround.layer_output(module, float_weight, float_inputs[start:start + options.batch])
                                     for start in range(0, len(float_inputs), options.batch)])
        del float_inputs
        with quantized.measures_paused():
            inputs = layer_inputs(quantized.model, name, images, options.batch)
        with quantized.bypassed():  # the layer's own hooks stay out of the learning passes
            result = adaround.learn_rounding(module, float_weight, quantized.weight_grid(name), inputs, targets,
                                             options.iterations, options.batch, options.seed)
        quantized.use_weight_rounding(name, result.up)
        results[name] = result
        if hasattr(layers, "set_postfix"):
            layers.set_postfix(layer=name, nearest=f"{result.nearest_error:.3g}", learned=f"{result.learned_error:.3g}")
    return results
