"""The state a quantization-aware fine-tuning (``qat``) leaves in a ``QuantizedModel``: each layer's
trained float weight and the quantized weight it evaluates with, its bias, and the learned
activation level plans. Taken out to be saved, and put back into a freshly quantized model."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pytorch_quantizer.model.weights import record_trained_weight
from pytorch_quantizer.quantizers.families import LevelPlan


@dataclass
class TrainedState:
    """``layers``: {layer: {"weight": quantized weight, "float_weight": trained float weight,
    "bias": bias (absent without one)}}; ``activation_plans``: {layer: LevelPlan}."""

    layers: dict[str, dict[str, torch.Tensor]]
    activation_plans: dict[str, LevelPlan]


def trained_state(quantized) -> TrainedState:
    """The trained weights and activation plans of ``quantized``, on the CPU."""
    layers = {}
    for name, (float_weight, _) in quantized.float_params.items():
        module = quantized.model.get_submodule(name)
        entry = {"weight": module.weight.detach().cpu().clone(), "float_weight": float_weight.detach().cpu().clone()}
        if module.bias is not None:
            entry["bias"] = module.bias.detach().cpu().clone()
        layers[name] = entry
    return TrainedState(layers, dict(quantized.family_activations.plans))


@torch.no_grad()
def use_trained_state(quantized, state: TrainedState) -> None:
    """Put ``state`` (checked to fit: the same layers and shapes) into ``quantized``."""
    for name, entry in state.layers.items():
        module = quantized.model.get_submodule(name)
        module.weight.data.copy_(entry["weight"])
        if module.bias is not None:
            module.bias.data.copy_(entry["bias"])
        record_trained_weight(quantized, name, entry["float_weight"].to(module.weight.device), module.weight.detach().clone())
    quantized.family_activations.use(state.activation_plans)
