"""Calibration of the other seeds' activation quantizers inside a ``QuantizedModel``: samples of
every calibrated layer's input from the BN-folded float model on the calibration images (a seeded
reservoir of ``SAMPLES_PER_LAYER`` values), then each layer's level plan fitted to them
(``families.fit_activation``: APoT / PoT / uniform alpha by MSE search, N2UQ's thresholds)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pytorch_quantizer.model.calibration import batch_images
from pytorch_quantizer.quantizers.families import LevelPlan, fit_activation

SAMPLES_PER_LAYER = 1 << 16


@dataclass
class InputSamples:
    """A uniform random subsample of one layer's inputs (at most ``SAMPLES_PER_LAYER`` per batch and
    in all), and the smallest input value seen."""

    chunks: list
    minimum: float = float("inf")

    def add(self, x: torch.Tensor, generator: torch.Generator) -> None:
        flat = x.detach().flatten().float().cpu()
        self.minimum = min(self.minimum, float(flat.min()))
        if flat.numel() > SAMPLES_PER_LAYER:
            flat = flat[torch.randperm(flat.numel(), generator=generator)[:SAMPLES_PER_LAYER]]
        self.chunks.append(flat)

    def values(self, generator: torch.Generator) -> torch.Tensor:
        values = torch.cat(self.chunks)
        if values.numel() > SAMPLES_PER_LAYER:
            values = values[torch.randperm(values.numel(), generator=generator)[:SAMPLES_PER_LAYER]]
        return values


@contextmanager
def sampling_inputs(model: nn.Module, names: list[str], seed: int = 0):
    """Forward pre-hooks (removed on exit) that sample the input of each named layer."""
    generator = torch.Generator().manual_seed(seed)
    samples = {name: InputSamples([]) for name in names}
    handles = [model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: samples[name].add(args[0], generator)) for name in names]
    try:
        yield samples, generator
    finally:
        for handle in handles:
            handle.remove()


def calibrate_activations(quantized, batches, device: torch.device) -> dict[str, LevelPlan]:
    """Calibrated plans of every layer whose activation kind needs calibration, from the inputs the
    BN-folded float model gives them on ``batches`` (``quantized``: a ``QuantizedModel``)."""
    names = [name for name, plan in quantized.activation_plans().items()
             if plan.activation.kind.calibrated_activations]
    if not names:
        return {}
    with quantized.float_model() as model, sampling_inputs(model, names, quantized.config.seed) as (samples, generator):
        with torch.inference_mode():
            for item in batches:
                model(batch_images(item).to(device))
    plans = {}
    for name in names:
        spec = quantized.plans[name].activation
        if not samples[name].chunks:
            continue  # never reached (an eval-mode auxiliary head): quantize_activation says so if it runs
        plans[name] = fit_activation(spec.kind, spec.bits, samples[name].values(generator), samples[name].minimum,
                                     quantized.config.seed)
    return plans
