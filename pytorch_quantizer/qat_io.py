"""Saving and loading a fine-tuned (QAT) model: a plain dict of tensors, loaded with
``weights_only=True`` and checked against the run before use.

Layout: {"format": "ptq-qat", "version": 1, "model": arch, "recipe": "--qtype .. -qw ..",
"layers": {name: {"weight": quantized weight, "float_weight": trained float weight, "bias": bias or
absent}}, "activation_plans": {name: {"scale", "thresholds", "values"}}} with the layers of the
BN-folded model.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pytorch_quantizer.errors import InputError
from pytorch_quantizer.families import LevelPlan
from pytorch_quantizer.safe_io import load_tool_file, write_atomically

FORMAT, VERSION = "ptq-qat", 1


def save_qat(path: Path, quantized, model_name: str, recipe: str) -> None:
    """Write the fine-tuned weights and activation plans of ``quantized`` (a ``transform.QuantizedModel``)."""
    layers = {}
    for name, (float_weight, _) in quantized.float_params.items():
        module = quantized.model.get_submodule(name)
        entry = {"weight": module.weight.detach().cpu().clone(), "float_weight": float_weight.detach().cpu().clone()}
        if module.bias is not None:
            entry["bias"] = module.bias.detach().cpu().clone()
        layers[name] = entry
    plans = {name: {"scale": plan.scale.detach().cpu(), "thresholds": plan.thresholds.detach().cpu(),
                    "values": plan.values.detach().cpu()} for name, plan in quantized.family_activations.plans.items()}
    payload = {"format": FORMAT, "version": VERSION, "model": model_name, "recipe": recipe, "layers": layers,
               "activation_plans": plans}
    write_atomically(path, lambda temporary: torch.save(payload, temporary))


def load_qat(path: Path, quantized, model_name: str, recipe: str) -> None:
    """Put a saved fine-tuned model into ``quantized``: every layer's weights and the activation
    plans, after checking format, model, recipe, layer names, shapes and finiteness."""
    fix = "save it again with --qat-epochs N --save-qat PATH (same model and --qtype / -qw)"
    if not path.is_file():
        raise InputError(f"--load-qat {path}: no such file; {fix}")
    payload = load_tool_file(path, FORMAT, VERSION, "QAT file", fix)
    if payload.get("model") != model_name or payload.get("recipe") != recipe:
        raise InputError(f"{path} was trained for {payload.get('model')!r:.40} with {payload.get('recipe')!r:.80}, "
                         f"not {model_name} with {recipe!r}; {fix}")
    layers, plans = payload.get("layers"), payload.get("activation_plans")
    if not isinstance(layers, dict) or set(layers) != set(quantized.float_params) or not isinstance(plans, dict):
        raise InputError(f"{path}: its layers are not those of {model_name}; {fix}")
    for name, entry in layers.items():
        module = quantized.model.get_submodule(name)
        for key, target in (("weight", module.weight), ("float_weight", module.weight), ("bias", module.bias)):
            value = entry.get(key) if isinstance(entry, dict) else None
            if target is None and key == "bias":
                continue
            fits = isinstance(value, torch.Tensor) and value.shape == target.shape
            if not fits or not bool(torch.isfinite(value).all()):
                raise InputError(f"{path}: layer {name} {key} is missing, of another shape or not finite; {fix}")
    loaded_plans = {}
    for name, entry in plans.items():
        tensors = [entry.get(key) if isinstance(entry, dict) else None for key in ("scale", "thresholds", "values")]
        if name not in quantized.float_params or not all(isinstance(value, torch.Tensor) for value in tensors):
            raise InputError(f"{path}: activation plan {name!r:.60} is not a layer's plan; {fix}")
        loaded_plans[name] = LevelPlan(*(value.float() for value in tensors))
    with torch.no_grad():
        for name, entry in layers.items():
            module = quantized.model.get_submodule(name)
            module.weight.data.copy_(entry["weight"])
            if module.bias is not None:
                module.bias.data.copy_(entry["bias"])
            quantized.record_trained_weight(name, entry["float_weight"], entry["weight"])
    quantized.family_activations.use(loaded_plans)
