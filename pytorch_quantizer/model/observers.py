"""Observers: they only collect statistics of activations over batches; turning statistics into
ranges is the quantizer's job.

Per batch an observer computes ``TensorStats`` (per tensor or per channel) and, for clipping
methods that need the values, their measured range. Over batches it keeps, exactly mergeable
across processes, the batch count, the sum of every statistic and its extreme (min for min and
lower clipping bounds, max for the rest). Two reductions follow:

    mean:  every statistic averaged over batches (the seed's default)
    max:   min of mins, max of maxes, max of std / b / upper bounds, min of lower bounds and of
           the positive fraction (a larger rectified scale), mean averaged (the widest, most conservative ranges)
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from pytorch_quantizer.maths.clipping import get_clipping
from pytorch_quantizer.maths.primitives import channels_first
from pytorch_quantizer.quantizers.backend import compute_stats
from pytorch_quantizer.maths.stats import TensorStats

MINIMUM_KEYS = ("min", "positive_fraction")


def takes_minimum(name: str) -> bool:
    return name in MINIMUM_KEYS or name.endswith(".lo")


def merge_rule(key: str) -> str:
    """How one accumulator state entry combines across shards: "sum" for the batch count and the
    sums, "min" or "max" for the extremes."""
    if key == "count" or key.startswith("sum."):
        return "sum"
    return "min" if takes_minimum(key[len("ext."):]) else "max"


@dataclass(frozen=True)
class ObservedLayer:
    """What to observe at one layer: the channel axis (None: per tensor), for clipping methods that
    need the values the method and the bits to measure them at, and whether min / max are each
    image's averaged over the batch (the seed's per-batch ranges and -sba) instead of the batch's.

    ``fused_range``: [0, ceiling] of a ReLU / ReLU6 fused into the output's range (ceiling inf for a
    ReLU). The grid then starts at 0 and the activation discards what lies outside, so methods that
    measure the values measure them clamped to it, as a non-negative tensor; the statistics
    themselves stay the pre-activation's (ACIQ's, the seed's)."""

    axis: int | None
    clipping: str
    bits: float
    image_averaged_range: bool = False
    fused_range: tuple[float, float] | None = None


class StatsAccumulator:
    """Batch count, per-statistic sums and extremes; ``reduce(kind)`` gives the final TensorStats."""

    def __init__(self, state: dict[str, torch.Tensor] | None = None):
        self.state = dict(state) if state else {}

    @property
    def batches(self) -> int:
        return int(self.state.get("count", torch.tensor(0)))

    def update(self, stats: TensorStats) -> None:
        values = {name: value.detach().float().cpu() for name, value in stats.as_dict().items()}
        if not self.state:
            self.state["count"] = torch.tensor(0, dtype=torch.int64)
            for name, value in values.items():
                self.state[f"sum.{name}"] = torch.zeros_like(value, dtype=torch.float64)
                self.state[f"ext.{name}"] = value.clone()
        self.state["count"] += 1
        for name, value in values.items():
            self.state[f"sum.{name}"] += value.double()
            extreme = self.state[f"ext.{name}"]
            self.state[f"ext.{name}"] = torch.minimum(extreme, value) if takes_minimum(name) else torch.maximum(extreme, value)

    def merge(self, other: "StatsAccumulator") -> None:
        """Combine with the accumulator of another process or shard (exact: sums add, extremes compare)."""
        if not other.state:
            return
        if not self.state:
            self.state = {name: value.clone() for name, value in other.state.items()}
            return
        combine = {"sum": torch.add, "min": torch.minimum, "max": torch.maximum}
        for name, value in other.state.items():
            self.state[name] = combine[merge_rule(name)](self.state[name], value)

    def reduce(self, kind: str) -> TensorStats:
        if not self.state:
            raise ValueError("no batch was observed")
        count = float(self.state["count"])
        names = [name[len("sum."):] for name in self.state if name.startswith("sum.")]
        values = {}
        for name in names:
            average = (self.state[f"sum.{name}"] / count).float()
            values[name] = average if kind == "mean" or name == "mean" else self.state[f"ext.{name}"]
        return TensorStats.from_dict(values)


def image_averaged_range(x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """min and max of each image (dim 0), per channel of ``axis`` or over the whole image, averaged
    over the images of the batch."""
    x = x.detach().float()
    images = x.shape[0]
    if axis is None or x.dim() < 2:
        rows = x.reshape(images, 1, -1)
    else:
        rows = x.movedim(axis, 1).reshape(images, x.shape[axis], -1)
    return rows.amin(dim=2).mean(dim=0), rows.amax(dim=2).mean(dim=0)


def observe(x: torch.Tensor, layer: ObservedLayer) -> TensorStats:
    """Statistics of one batch at one layer, with measured clipping ranges where the method needs them."""
    stats = compute_stats(x, layer.axis)
    if layer.image_averaged_range:
        low, high = image_averaged_range(x, layer.axis)
        stats = replace(stats, min=low.to(stats.min.device), max=high.to(stats.max.device))
    method = get_clipping(layer.clipping)
    if method.needs_values:
        values, non_negative = x.detach().float(), stats.non_negative
        if layer.fused_range is not None:
            values, non_negative = values.clamp(*layer.fused_range), True
        rows = channels_first(values, layer.axis)
        bits = torch.full((rows.shape[0],), float(layer.bits))
        lo, hi = method.measure(rows, bits, non_negative)
        stats = replace(stats, extra={f"{method.name}.lo": lo, f"{method.name}.hi": hi})
    return stats


@contextmanager
def observing(model: nn.Module, layers: dict[str, ObservedLayer], at_output: bool = False,
              transform_output=None):
    """Attach observers to the named modules (their inputs, or outputs with ``at_output``) for the
    duration of the block; yields {name: StatsAccumulator}. Hooks run before any other hook of
    the module, so they see the values before quantization. ``transform_output(name, y)`` maps an
    output before observation (e.g. a fused ReLU)."""
    accumulators = {name: StatsAccumulator() for name in layers}
    handles = []

    def input_hook(name):
        def hook(module, args):
            accumulators[name].update(observe(args[0], layers[name]))
        return hook

    def output_hook(name):
        def hook(module, args, output):
            value = transform_output(name, output) if transform_output else output
            accumulators[name].update(observe(value, layers[name]))
        return hook

    for name in layers:
        module = model.get_submodule(name)
        if at_output:
            handles.append(module.register_forward_hook(output_hook(name), prepend=True))
        else:
            handles.append(module.register_forward_pre_hook(input_hook(name), prepend=True))
    try:
        yield accumulators
    finally:
        for handle in handles:
            handle.remove()
