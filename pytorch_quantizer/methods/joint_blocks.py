"""Mixed reconstruction granularity (after MRECG, Ma et al. 2023): adjacent blocks whose output
error rises most from one to the next are learned together, as one unit, instead of one by one.

MRECG traces the oscillation of block reconstruction's loss along a network to neighbours of
unequal capacity, and reconstructs jointly the k neighbour pairs with the largest differential of
a capacity proxy. The proxy here (this project's, measured before any learning) is each block's
relative output error with every rounding to nearest and the activations quantized as the run's
recipe does, on the calibration images:

    e_b = sum ||q_b(x~) - f_b(x)||^2 / sum ||f_b(x)||^2

(q_b the quantized model's output of block b on its own quantized inputs, f_b the float model's,
both over the same images); the differential of a pair (a, b) of consecutive blocks is
e_b - e_a. The k pairs with the largest positive differential are joined; pairs that share a block
make one unit of three or more. Only pairs where b reads exactly what a returns (``chained_blocks``)
and neither is a bare layer can be joined: one unit then runs as ``a`` followed by ``b``.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from pytorch_quantizer.methods.grouped_steps import DataShare


def joint_units(order: list[str], errors: dict[str, float], joinable: set[str], count: int) -> list[list[str]]:
    """The blocks of ``order`` grouped into learning units: the ``count`` pairs (a, b) of
    consecutive blocks with b in ``joinable`` and the largest positive rise ``errors[b] -
    errors[a]`` are joined (ties: the earlier pair); every other block is a unit of its own."""
    rises = [(errors[second] - errors[first], index) for index, (first, second) in enumerate(zip(order, order[1:]))
             if second in joinable and first in errors and second in errors]
    chosen = {index for rise, index in sorted(rises, key=lambda item: (-item[0], item[1]))[:count] if rise > 0}
    units: list[list[str]] = [[order[0]]] if order else []
    for index, block in enumerate(order[1:]):
        if index in chosen:
            units[-1].append(block)
        else:
            units.append([block])
    return units


def relative_output_errors(model: nn.Module, images: torch.Tensor, blocks: list[str], batch: int,
                           as_float: Callable[[], AbstractContextManager],
                           as_quantized: Callable[[], AbstractContextManager],
                           share: DataShare | None = None) -> dict[str, float]:
    """{block: e_b} (module docstring) over ``images`` in batches of ``batch``: ``model`` runs as
    the float model inside ``as_float()`` and as the quantized one inside ``as_quantized()`` (with
    ``share``, over every process's images)."""
    sums = torch.zeros(len(blocks), 2, dtype=torch.float64)
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _args, output):
            outputs[name] = output.detach()
        return hook

    def run(mode: Callable[[], AbstractContextManager], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs.clear()
        handles = [model.get_submodule(name).register_forward_hook(keep(name)) for name in blocks]
        try:
            with mode(), torch.no_grad():
                model(inputs)
        finally:
            for handle in handles:
                handle.remove()
        return dict(outputs)

    for start in range(0, len(images), batch):
        inputs = images[start:start + batch]
        targets = run(as_float, inputs)
        quantized = run(as_quantized, inputs)
        for row, name in enumerate(blocks):
            target = targets[name].double()
            sums[row, 0] += (quantized[name].double() - target).square().sum()
            sums[row, 1] += target.square().sum()
    if share is not None:
        sums = share.sum(sums)
    return {name: float(error / max(float(scale), 1e-300)) for name, (error, scale) in zip(blocks, sums)}
