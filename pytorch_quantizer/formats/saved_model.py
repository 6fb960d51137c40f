"""The file ``pytorch_quantizer.save`` writes: one versioned, data-only ``torch.save`` dict (tensors,
strings, numbers, lists; loaded with ``weights_only=True``) holding everything a quantized model is
rebuilt from besides its float weights:

    format "ptq-quantized-model", version, library_version
    fingerprint   SHA-256 of the float model's state dict (``fingerprint``): the weights it is for
    config        the QuantConfig as plain data (``config_as_dict``); methods: the Methods as plain data
    input_shape   the shape of the example input the model was traced with
    statistics    {layer: accumulator state} or None; rounding {layer: uint8 0 / 1} or None;
    family_plans  {layer: {scale, thresholds, values}} or None; trained {layers, activation_plans} or None;
    bias_corrections {layer: tensor} or None

Written atomically (temporary file, then rename).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from pytorch_quantizer.version import __version__
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.formats import state_checks
from pytorch_quantizer.formats.safe_io import file_problem, load_tool_file, write_atomically
from pytorch_quantizer.methods.trained_state import TrainedState
from pytorch_quantizer.model.observers import StatsAccumulator
from pytorch_quantizer.quantizers.families import LevelPlan

FORMAT, VERSION = "ptq-quantized-model", 1
PLAN_KEYS = ("scale", "thresholds", "values")


def _cpu(tensors: dict[str, torch.Tensor] | None, dtype: torch.dtype | None = None) -> dict | None:
    if tensors is None:
        return None
    return {name: value.detach().cpu().to(dtype) if dtype else value.detach().cpu() for name, value in tensors.items()}


def _plans(plans: dict[str, LevelPlan] | None) -> dict | None:
    if plans is None:
        return None
    return {name: {key: getattr(plan, key).detach().cpu() for key in PLAN_KEYS} for name, plan in plans.items()}


def save_model_state(path: Path, *, fingerprint: str, config: dict, methods: dict, input_shape: list[int],
                     state) -> None:
    """Write ``state`` (an ``api.recipe.RecipeState``) with the recipe and fingerprint it belongs to."""
    trained = None
    if state.trained is not None:
        trained = {"layers": {name: _cpu(entry) for name, entry in state.trained.layers.items()},
                   "activation_plans": _plans(state.trained.activation_plans)}
    payload = {
        "format": FORMAT, "version": VERSION, "library_version": __version__, "fingerprint": fingerprint,
        "config": config, "methods": methods, "input_shape": list(input_shape),
        "statistics": None if state.statistics is None else
        {name: _cpu(accumulator.state) for name, accumulator in state.statistics.items()},
        "rounding": _cpu(state.rounding, torch.uint8),
        "activation_scales": _cpu(state.activation_scales),
        "family_plans": _plans(state.family_plans),
        "trained": trained,
        "bias_corrections": _cpu(state.bias_corrections),
    }
    write_atomically(path, lambda temporary: torch.save(payload, temporary))


def _tensors(path: Path, what: str, value, fix: str) -> dict[str, torch.Tensor] | None:
    """A {name: finite tensor} entry (None stays None)."""
    if value is None:
        return None
    problem = state_checks.tensor_dict_problem(value) if isinstance(value, dict) else f"is {state_checks.describe(value)}"
    problem = problem or state_checks.non_finite_problem(value)
    if problem:
        raise QuantizationError(f"{path}: its {what} {problem} (modified or damaged); {fix}", code="damaged_file")
    return value


def _level_plans(path: Path, what: str, value, fix: str) -> dict[str, LevelPlan] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise QuantizationError(f"{path}: its {what} are {state_checks.describe(value)} (modified or damaged); {fix}",
                                code="damaged_file")
    plans = {}
    for name, entry in value.items():
        tensors = _tensors(path, f"{what} of {name}", entry, fix)
        missing = [key for key in PLAN_KEYS if key not in tensors]
        problem = f"lacks {missing[0]}" if missing else state_checks.level_plan_problem(*(tensors[key] for key in PLAN_KEYS))
        if problem:
            raise QuantizationError(f"{path}: its {what} of {name}: {problem} (modified or damaged); {fix}",
                                    code="damaged_file")
        plans[name] = LevelPlan(*(tensors[key].float() for key in PLAN_KEYS))
    return plans


def load_model_state(path: Path, fix: str) -> dict:
    """The saved payload, checked for format, version and sound contents; ``statistics`` as
    accumulators, ``rounding`` as float 0 / 1, plans as LevelPlans, ``trained`` as a TrainedState."""
    problem = file_problem(path)
    if problem == "does not exist":
        raise QuantizationError(f"{path}: no such saved quantized model; {fix}", code="missing_file")
    if problem is not None:
        raise QuantizationError(f"saved quantized model {path} {problem}; {fix}", code="not_a_file")
    payload = load_tool_file(path, FORMAT, VERSION, "saved quantized model", fix)
    for key, kind in (("fingerprint", str), ("config", dict), ("methods", dict), ("input_shape", list)):
        if not isinstance(payload.get(key), kind):
            raise QuantizationError(f"{path}: its {key} is {payload.get(key)!r:.40} (modified or damaged); {fix}",
                                    code="damaged_file")
    statistics = payload.get("statistics")
    if statistics is not None:
        if not isinstance(statistics, dict):
            raise QuantizationError(f"{path}: its statistics are {state_checks.describe(statistics)}; {fix}",
                                    code="damaged_file")
        for name, state in statistics.items():
            # per tensor or per channel by layer; the fingerprint and recipe checks tie them to the model
            problem = state_checks.accumulator_state_problem(state, per_channel=True)
            if problem:
                raise QuantizationError(f"{path}: layer {name} {problem} (modified or damaged); {fix}", code="damaged_file")
        payload["statistics"] = {name: StatsAccumulator(state) for name, state in statistics.items()}
    rounding = _tensors(path, "rounding", payload.get("rounding"), fix)
    for name, up in (rounding or {}).items():
        if not bool(((up == 0) | (up == 1)).all()):
            raise QuantizationError(f"{path}: the rounding of layer {name} holds values other than 0 and 1 (modified or "
                                    f"damaged); {fix}", code="damaged_file")
    payload["rounding"] = None if rounding is None else {name: up.float() for name, up in rounding.items()}
    payload["activation_scales"] = _tensors(path, "activation step sizes", payload.get("activation_scales"), fix)
    payload["family_plans"] = _level_plans(path, "activation plans", payload.get("family_plans"), fix)
    payload["bias_corrections"] = _tensors(path, "bias corrections", payload.get("bias_corrections"), fix)
    trained = payload.get("trained")
    if trained is not None:
        layers = trained.get("layers") if isinstance(trained, dict) else None
        if not isinstance(layers, dict):
            raise QuantizationError(f"{path}: its fine-tuned layers are damaged; {fix}", code="damaged_file")
        checked = {name: _tensors(path, f"fine-tuned layer {name}", entry, fix) for name, entry in layers.items()}
        payload["trained"] = TrainedState(checked, _level_plans(path, "fine-tuned activation plans",
                                                                trained.get("activation_plans"), fix) or {})
    return payload


def methods_as_dict(methods) -> dict:
    data = asdict(methods)
    data["rounding"] = methods.rounding.value
    return data
