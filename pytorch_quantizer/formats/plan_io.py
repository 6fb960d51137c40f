"""Saving and loading a mixed-precision plan (``mixed_precision.MixedPrecisionPlan``): a data-only
dict, loaded with ``weights_only=True``, tied to the weights and recipe it was chosen for.

Layout: {"format": "ptq-mixed-precision", "version": 1, "model": model name, "weights_fingerprint",
"recipe": {the recipe, budget and candidates it was chosen for, as plain data}, "layer_bits":
[[layer, weight bits or None, activation bits or None], ...], "spent": {...}, "objective": float}.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.formats.safe_io import check_weights, file_problem, load_tool_file, write_atomically
from pytorch_quantizer.methods.mixed_precision import MixedPrecisionPlan

FORMAT, VERSION = "ptq-mixed-precision", 1


def save_plan(path: Path, plan: MixedPrecisionPlan, model_name: str, fingerprint: str, recipe: dict) -> None:
    payload = {"format": FORMAT, "version": VERSION, "model": model_name, "weights_fingerprint": fingerprint,
               "recipe": recipe, "layer_bits": [list(entry) for entry in plan.layer_bits],
               "spent": dict(plan.spent), "objective": plan.objective}
    write_atomically(path, lambda temporary: torch.save(payload, temporary))


def load_plan(path: Path, model_name: str, fingerprint: str, recipe: dict, fix: str) -> MixedPrecisionPlan:
    """The plan of ``path`` after checking format, model, weights, recipe and its entries (layer
    names, bits within the candidates the recipe names)."""
    problem = file_problem(path)
    if problem is not None:
        raise QuantizationError(f"mixed-precision plan {path} {problem}; {fix}",
                                code="missing_file" if problem == "does not exist" else "not_a_file")
    payload = load_tool_file(path, FORMAT, VERSION, "mixed-precision plan", fix)
    if payload.get("model") != model_name:
        raise QuantizationError(f"{path} was chosen for {payload.get('model')!r:.40}, not {model_name}; {fix}",
                                code="made_for_other")
    check_weights(path, payload, fingerprint, "chosen for", fix)
    stored = payload.get("recipe") if isinstance(payload.get("recipe"), dict) else {}
    differing = next((key for key in recipe if stored.get(key) != recipe[key]), None)
    if differing == "config":   # name the field of the recipe that differs
        fields = stored.get("config") if isinstance(stored.get("config"), dict) else {}
        key = next((key for key in recipe["config"] if fields.get(key) != recipe["config"][key]), "config")
        raise QuantizationError(f"{path} was chosen for a recipe whose {key} is {fields.get(key)!r:.80}, this run's "
                                f"{recipe['config'][key]!r:.80}; {fix}", code="made_for_other")
    if differing is not None:
        raise QuantizationError(f"{path} was chosen with {differing} {stored.get(differing)!r:.80}, this run's "
                                f"{recipe[differing]!r:.80}; {fix}", code="made_for_other")
    candidates = set(stored.get("candidates", ()))
    entries = payload.get("layer_bits")
    if not isinstance(entries, list) or not entries:
        raise QuantizationError(f"{path}: its layer bits are missing (modified or damaged); {fix}", code="damaged_file")
    layer_bits = []
    for entry in entries:
        sound = (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str)
                 and all(bits is None or (type(bits) is int and (not candidates or bits in candidates))
                         for bits in entry[1:]))
        if not sound:
            raise QuantizationError(f"{path}: layer bits {entry!r:.60} are not a layer and bits among the candidates "
                                    f"(modified or damaged); {fix}", code="damaged_file")
        layer_bits.append(tuple(entry))
    spent = payload.get("spent") if isinstance(payload.get("spent"), dict) else {}
    objective = payload.get("objective")
    if not isinstance(objective, float) or not math.isfinite(objective):
        raise QuantizationError(f"{path}: its objective is not a finite number (modified or damaged); {fix}",
                                code="damaged_file")
    return MixedPrecisionPlan(tuple(layer_bits), {key: float(value) for key, value in spent.items()}, objective)
