"""Saving and loading a fine-tuned (QAT) model's state (``trained_state.TrainedState``): a plain dict
of tensors, loaded with ``weights_only=True`` and checked against the model before use.

Layout: {"format": "ptq-qat", "version": 2, "model": model name, "weights_fingerprint": of the float
weights fine-tuned from, "recipe": text of the quantizer kinds, "layers": {name: {"weight": quantized weight, "float_weight": trained float weight, "bias":
bias or absent}}, "activation_plans": {name: {"scale", "thresholds", "values"}}} with the layers of
the BN-folded model. Version 1 recorded no fingerprint.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.formats.safe_io import check_weights, file_problem, load_tool_file, write_atomically
from pytorch_quantizer.formats.state_checks import level_plan_problem
from pytorch_quantizer.methods.trained_state import TrainedState
from pytorch_quantizer.quantizers.families import LevelPlan

FORMAT, VERSION = "ptq-qat", 2


def save_qat(path: Path, state: TrainedState, model_name: str, recipe: str, fingerprint: str) -> None:
    plans = {name: {"scale": plan.scale.detach().cpu(), "thresholds": plan.thresholds.detach().cpu(),
                    "values": plan.values.detach().cpu()} for name, plan in state.activation_plans.items()}
    payload = {"format": FORMAT, "version": VERSION, "model": model_name, "weights_fingerprint": fingerprint,
               "recipe": recipe, "layers": state.layers, "activation_plans": plans}
    write_atomically(path, lambda temporary: torch.save(payload, temporary))


def load_qat(path: Path, model_name: str, recipe: str, shapes: dict[str, tuple[torch.Size, torch.Size | None]],
             fix: str, fingerprint: str | None = None) -> TrainedState:
    """A saved fine-tuned state, after checking format, model, weights, recipe, layer names, shapes,
    finiteness and the activation plans' levels; ``shapes``: {layer: (weight shape, bias shape or
    None)} of the model it is for."""
    problem = file_problem(path)
    if problem is not None:
        raise QuantizationError(f"QAT file {path} {problem}; {fix}",
                                code="missing_file" if problem == "does not exist" else "not_a_file")
    payload = load_tool_file(path, FORMAT, VERSION, "QAT file", fix, unfingerprinted=(1,))
    if payload.get("model") != model_name or payload.get("recipe") != recipe:
        raise QuantizationError(f"{path} was trained for {payload.get('model')!r:.40} with {payload.get('recipe')!r:.80}, "
                                f"not {model_name} with {recipe!r}; {fix}", code="made_for_other")
    check_weights(path, payload, fingerprint, "fine-tuned from", fix)
    layers, plans = payload.get("layers"), payload.get("activation_plans")
    if not isinstance(layers, dict) or set(layers) != set(shapes) or not isinstance(plans, dict):
        raise QuantizationError(f"{path}: its layers are not those of {model_name}; {fix}")
    for name, entry in layers.items():
        weight_shape, bias_shape = shapes[name]
        for key, shape in (("weight", weight_shape), ("float_weight", weight_shape), ("bias", bias_shape)):
            value = entry.get(key) if isinstance(entry, dict) else None
            if shape is None and key == "bias":
                continue
            fits = isinstance(value, torch.Tensor) and value.shape == shape
            if not fits or not bool(torch.isfinite(value).all()):
                raise QuantizationError(f"{path}: layer {name} {key} is missing, of another shape or not finite; {fix}")
    loaded_plans = {}
    for name, entry in plans.items():
        tensors = [entry.get(key) if isinstance(entry, dict) else None for key in ("scale", "thresholds", "values")]
        if name not in shapes or not all(isinstance(value, torch.Tensor) for value in tensors):
            raise QuantizationError(f"{path}: activation plan {name!r:.60} is not a layer's plan; {fix}")
        problem = level_plan_problem(*tensors)
        if problem:
            raise QuantizationError(f"{path}: the activation plan of layer {name}: {problem}; {fix}", code="damaged_file")
        loaded_plans[name] = LevelPlan(*(value.float() for value in tensors))
    return TrainedState(layers, loaded_plans)


def layer_shapes(quantized) -> dict[str, tuple[torch.Size, torch.Size | None]]:
    """{layer: (weight shape, bias shape or None)} of a ``QuantizedModel``, for ``load_qat``."""
    shapes = {}
    for name in quantized.float_params:
        module = quantized.model.get_submodule(name)
        shapes[name] = (module.weight.shape, module.bias.shape if module.bias is not None else None)
    return shapes
