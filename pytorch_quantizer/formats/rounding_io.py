"""Saving and loading learned weight roundings (``adaround``): a plain dict of tensors, loaded with
``weights_only=True`` and checked against the run before use.

Layout: {"format": "ptq-rounding", "version": 1, "model": arch, "recipe": text of the quantization
recipe, "layers": {name: uint8 tensor of the weight's shape, 1 = rounded up}}.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.formats.safe_io import load_tool_file, write_atomically

FORMAT, VERSION = "ptq-rounding", 1


def save_rounding(path: Path, roundings: dict[str, torch.Tensor], model_name: str, recipe: str) -> None:
    layers = {name: up.detach().cpu().to(torch.uint8) for name, up in roundings.items()}
    payload = {"format": FORMAT, "version": VERSION, "model": model_name, "recipe": recipe, "layers": layers}
    write_atomically(path, lambda temporary: torch.save(payload, temporary))


def load_rounding(path: Path, model_name: str, recipe: str, weight_shapes: dict[str, torch.Size],
                  fix: str) -> dict[str, torch.Tensor]:
    """{layer: rounding as float 0 / 1} after checking format, model, recipe, layers and shapes;
    ``weight_shapes``: the layers with integer-grid weights in this run."""
    if not path.is_file():
        raise QuantizationError(f"no learned rounding {path} for {model_name}; {fix}")
    payload = load_tool_file(path, FORMAT, VERSION, "rounding file", fix)
    if payload.get("model") != model_name or payload.get("recipe") != recipe:
        raise QuantizationError(f"{path} was learned for {payload.get('model')!r:.40} with another recipe "
                         f"({payload.get('recipe')!r:.120}); {fix}")
    layers = payload.get("layers")
    if not isinstance(layers, dict) or set(layers) != set(weight_shapes):
        raise QuantizationError(f"{path}: its layers are not this run's integer-grid layers of {model_name}; {fix}")
    loaded = {}
    for name, up in layers.items():
        if not isinstance(up, torch.Tensor) or up.shape != weight_shapes[name] or bool((up > 1).any()):
            raise QuantizationError(f"{path}: the rounding of layer {name} is not a 0 / 1 tensor of its weight's shape; {fix}")
        loaded[name] = up.float()
    return loaded
