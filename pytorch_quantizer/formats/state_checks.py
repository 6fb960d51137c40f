"""Consistency checks of loaded states (statistics accumulators, weights): each function returns
``None`` for a sound state or the problem as a short phrase naming the key, which the loader
completes into a one-line ``QuantizationError`` with the file's path and the fix.

An accumulator state (``observers.StatsAccumulator``) is

    count       int64 scalar, the number of observed batches (>= 1)
    sum.<stat>  float, the sum over batches of one statistic
    ext.<stat>  float, its extreme over batches

for every ``<stat>`` of ``stats.STAT_NAMES`` and optionally measured ranges ``extra.<method>.lo`` /
``extra.<method>.hi`` (in pairs). All sum / ext tensors of a layer are 1-D of one length C (1 per
tensor), finite, with std, b >= 0, min <= max, positive_fraction in [0, 1] (its sum in [0, count]).
"""
from __future__ import annotations

from collections import Counter

import torch

from pytorch_quantizer.maths.stats import STAT_NAMES

EXTRA_PREFIX = "extra."
RANGE_ENDS = (".lo", ".hi")
NON_NEGATIVE_STATS = ("std", "b")


def describe(value) -> str:
    """A value's kind for messages: ``an int64 tensor of shape (3, 4)``, ``a list``."""
    if isinstance(value, torch.Tensor):
        return with_article(f"{str(value.dtype).removeprefix('torch.')} tensor of shape {shape_text(value)}")
    return with_article(type(value).__name__)


def with_article(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def shape_text(value: torch.Tensor | torch.Size) -> str:
    """A shape as Python writes a tuple: ``(16, 1, 3, 3)``, ``(16,)``, ``()``."""
    shape = value.shape if isinstance(value, torch.Tensor) else value
    return str(tuple(int(size) for size in shape))


def dense_problem(value: torch.Tensor) -> str | None:
    """Tensors whose values cannot be read as an ordinary array (sparse, meta, quantized)."""
    if value.layout != torch.strided:
        return f"is {with_article(str(value.layout).removeprefix('torch.'))} tensor, not a dense one"
    if value.device.type == "meta":
        return "is a meta tensor without values"
    if value.is_quantized:
        return "is a quantized tensor, not a float one"
    return None


def non_finite_count(value: torch.Tensor) -> int:
    """Number of NaN / Inf entries of a floating or complex tensor (0 for other dtypes)."""
    if not (value.is_floating_point() or value.is_complex()):
        return 0
    return int((~torch.isfinite(value)).sum())


def tensor_dict_problem(state: dict) -> str | None:
    """A weights state dict: not empty, string keys, dense tensor values."""
    if not state:
        return "holds no tensors (an empty state dict)"
    return entries_problem(state, "a parameter name")


def entries_problem(state: dict, key_kind: str) -> str | None:
    """The first key that is not a string or value that is not a dense tensor."""
    for key, value in state.items():
        if not isinstance(key, str):
            return f"has a key {key!r:.60} that is {describe(key)}, not {key_kind}"
        if not isinstance(value, torch.Tensor):
            return f"entry {key} is {describe(value)}, not a tensor"
        dense = dense_problem(value)
        if dense:
            return f"entry {key} {dense}"
    return None


def non_finite_problem(state: dict[str, torch.Tensor]) -> str | None:
    """The first entry (in order) of a dict of tensors with NaN / Inf values, and how many."""
    for key, value in state.items():
        bad = non_finite_count(value)
        if bad:
            return f"entry {key} holds {bad} NaN/Inf value{'s' if bad > 1 else ''} (of {value.numel()})"
    return None


def statistic_name(key: str) -> str | None:
    """``<stat>`` of ``sum.<stat>`` / ``ext.<stat>``, or None for a key of no accumulator."""
    for prefix in ("sum.", "ext."):
        if key.startswith(prefix):
            name = key[len(prefix):]
            if name in STAT_NAMES:
                return name
            if name.startswith(EXTRA_PREFIX) and name.endswith(RANGE_ENDS) and len(name) > len(EXTRA_PREFIX) + 3:
                return name
    return None


def state_structure_problem(state) -> str | None:
    """The types an accumulator state must have before anything reads its values: a dict of
    string keys and dense tensors."""
    if not isinstance(state, dict):
        return f"is {describe(state)}, not a dict of tensors"
    return entries_problem(state, "a string")


def count_problem(state: dict) -> str | None:
    if "count" not in state:
        return "lacks its batch count (key count)"
    count = state["count"]
    if count.dtype == torch.bool or count.is_floating_point() or count.is_complex() or count.dim() != 0:
        return f"batch count is {describe(count)}, not an integer scalar"
    if int(count) < 1:
        return f"batch count is {int(count)}, not a positive number of batches"
    return None


def keys_problem(state: dict) -> str | None:
    names = set()
    for key in state:
        if key == "count":
            continue
        name = statistic_name(key)
        if name is None:
            return f"has an entry {key[:80]} that no statistics file of this tool holds"
        names.add(name)
    for name in sorted(names):
        for key in (f"sum.{name}", f"ext.{name}"):
            if key not in state:
                return f"lacks statistic {key} (its pair {'ext' if key.startswith('sum') else 'sum'}.{name} is present)"
    for name in STAT_NAMES:
        if name not in names:
            return f"lacks statistic sum.{name} (every layer holds sum / ext of {', '.join(STAT_NAMES)})"
    for name in sorted(names):
        if name.startswith(EXTRA_PREFIX):
            stem = name[:-len(".lo")]
            for end in RANGE_ENDS:
                if stem + end not in names:
                    return f"lacks statistic sum.{stem}{end} (measured ranges come as .lo / .hi pairs)"
    return None


def values_problem(state: dict, per_channel: bool) -> str | None:
    tensors = {key: value for key, value in state.items() if key != "count"}
    for key, value in tensors.items():
        if not value.is_floating_point():
            return f"statistic {key} has dtype {str(value.dtype).removeprefix('torch.')}, not a floating type"
        if value.dim() != 1 or value.numel() < 1:
            return f"statistic {key} has shape {shape_text(value)}, not one value per channel (C,)"
    shapes = {key: value.shape for key, value in tensors.items()}
    common = Counter(shapes.values()).most_common(1)[0][0]
    for key, shape in sorted(shapes.items()):
        if shape != common:
            return f"statistic {key} has shape {shape_text(shape)}, the layer's other statistics {shape_text(common)}"
    if not per_channel and common != (1,):
        return f"statistics have shape {shape_text(common)} in a per-tensor statistics file, not (1,)"
    for key in sorted(tensors):
        bad = non_finite_count(tensors[key])
        if bad:
            return f"statistic {key} holds NaN/Inf ({bad} of {tensors[key].numel()} values)"
    return ranges_problem(state)


def ranges_problem(state: dict) -> str | None:
    count = float(state["count"])
    for kind in ("sum", "ext"):
        for name in NON_NEGATIVE_STATS:
            if bool((state[f"{kind}.{name}"] < 0).any()):
                return f"statistic {kind}.{name} is negative (a {name} is >= 0)"
        if bool((state[f"{kind}.min"] > state[f"{kind}.max"]).any()):
            return f"statistic {kind}.min exceeds {kind}.max"
    upper = {"ext": 1.0, "sum": count}
    for kind, limit in upper.items():
        fraction = state[f"{kind}.positive_fraction"]
        if bool((fraction < 0).any() or (fraction > limit * (1 + 1e-6)).any()):
            bound = "1" if kind == "ext" else f"the batch count {int(count)}"
            return f"statistic {kind}.positive_fraction lies outside [0, {bound}]"
    return None


def accumulator_state_problem(state, per_channel: bool) -> str | None:
    """Everything a loaded ``StatsAccumulator.state`` must satisfy to be reduced into sound
    ``TensorStats`` (module docstring); ``per_channel`` False requires one value per statistic. An
    empty state is a layer that calibration never reached (inception_v3's auxiliary head in eval
    mode): it is kept empty and refused only if the layer runs (``QuantizedModel.quantize_activation``)."""
    if isinstance(state, dict) and not state:
        return None
    return (state_structure_problem(state) or count_problem(state) or keys_problem(state)
            or values_problem(state, per_channel))


def level_plan_problem(scale: torch.Tensor, thresholds: torch.Tensor, values: torch.Tensor) -> str | None:
    """A level plan (``families.LevelPlan``) as the quantizers make them: finite positive scales,
    finite thresholds in increasing order, one more finite output level than thresholds."""
    for key, value in (("scale", scale), ("thresholds", thresholds), ("values", values)):
        problem = dense_problem(value)
        if problem or not value.is_floating_point():
            return f"{key} {problem or 'is not a floating tensor'}"
        if non_finite_count(value):
            return f"{key} holds NaN/Inf values"
    if scale.numel() < 1 or bool((scale <= 0).any()):
        return "scale is not positive"
    if thresholds.dim() != 1 or values.dim() != 1:
        return f"thresholds {shape_text(thresholds)} / values {shape_text(values)} are not 1-D"
    if values.numel() != thresholds.numel() + 1:
        return f"has {thresholds.numel()} thresholds for {values.numel()} levels (a plan has one threshold fewer)"
    if bool((thresholds[1:] < thresholds[:-1]).any()):
        return "thresholds are not in increasing order"
    return None
