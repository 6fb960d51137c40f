"""Saving and loading learned weight roundings (``adaround``): a plain dict of tensors, loaded with
``weights_only=True`` and checked against the run before use.

Layout: {"format": "ptq-rounding", "version": 2, "model": model name, "weights_fingerprint": of the
float weights it was learned on, "recipe": text of the quantization recipe, "layers": {name: uint8
tensor of the weight's shape, 1 = rounded up}, "activation_scales": {name: step size learned with
the rounding (``Methods.learn_step_sizes``)}}. Version 1 recorded no fingerprint.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.formats.safe_io import check_weights, file_problem, load_tool_file, write_atomically

FORMAT, VERSION = "ptq-rounding", 2


def save_rounding(path: Path, roundings: dict[str, torch.Tensor], model_name: str, recipe: str,
                  fingerprint: str, activation_scales: dict[str, torch.Tensor] | None = None) -> None:
    layers = {name: up.detach().cpu().to(torch.uint8) for name, up in roundings.items()}
    scales = {name: scale.detach().cpu().float() for name, scale in (activation_scales or {}).items()}
    payload = {"format": FORMAT, "version": VERSION, "model": model_name, "weights_fingerprint": fingerprint,
               "recipe": recipe, "layers": layers, "activation_scales": scales}
    write_atomically(path, lambda temporary: torch.save(payload, temporary))


def load_rounding(path: Path, model_name: str, recipe: str, weight_shapes: dict[str, torch.Size],
                  fix: str, fingerprint: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """({layer: rounding as float 0 / 1}, {layer: learned activation step size}) after checking
    format, model, weights, recipe, layers, shapes and values; ``weight_shapes``: the layers with
    integer-grid weights in this run."""
    problem = file_problem(path)
    if problem == "does not exist":
        raise QuantizationError(f"no learned rounding {path} for {model_name}; {fix}", code="missing_file")
    if problem is not None:
        raise QuantizationError(f"learned rounding {path} {problem}; {fix}", code="not_a_file")
    payload = load_tool_file(path, FORMAT, VERSION, "rounding file", fix, unfingerprinted=(1,))
    if payload.get("model") != model_name or payload.get("recipe") != recipe:
        raise QuantizationError(f"{path} was learned for {payload.get('model')!r:.40} with another recipe "
                                f"({payload.get('recipe')!r:.120}); {fix}", code="made_for_other")
    check_weights(path, payload, fingerprint, "learned for", fix)
    layers = payload.get("layers")
    if not isinstance(layers, dict) or set(layers) != set(weight_shapes):
        raise QuantizationError(f"{path}: its layers are not this run's integer-grid layers of {model_name}; {fix}")
    loaded = {}
    for name, up in layers.items():
        if not isinstance(up, torch.Tensor) or up.shape != weight_shapes[name]:
            raise QuantizationError(f"{path}: the rounding of layer {name} is not a tensor of its weight's shape; {fix}")
        if up.is_complex() or not bool(((up == 0) | (up == 1)).all()):
            raise QuantizationError(f"{path}: the rounding of layer {name} holds values other than 0 and 1 (a rounding "
                                    f"is down or up); {fix}", code="damaged_file")
        loaded[name] = up.float()
    scales = payload.get("activation_scales", {})
    if not isinstance(scales, dict) or not all(
            isinstance(name, str) and isinstance(scale, torch.Tensor) and scale.is_floating_point()
            and 1 <= scale.numel() and bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
            for name, scale in scales.items()):
        raise QuantizationError(f"{path}: its activation step sizes are not positive finite numbers by layer "
                                f"(modified or damaged); {fix}", code="damaged_file")
    return loaded, dict(scales)
