"""Where the accuracy goes and what to spend bits on: ``sensitivity`` measures every layer at every
candidate bit width on calibration images; ``mixed_precision`` picks each layer's bits under a
budget from those measurements (``methods.sensitivity``, ``methods.mixed_precision``)."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from pytorch_quantizer.api.options import Methods, Statistics
from pytorch_quantizer.api.recipe import Progress, RecipeInputs
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.methods.mixed_precision import (
    DEFAULT_CANDIDATES, Budget, MixedPrecisionPlan, layer_costs, solve,
)
from pytorch_quantizer.methods.sensitivity import KINDS, SensitivityRow
from pytorch_quantizer.quantizers.config import QuantConfig

DEFAULT_IMAGES = 32


@dataclass
class SensitivityReport:
    """The rows of a sensitivity analysis (``SensitivityRow``), and {layer: (kept at 8 bits, weight
    bits, activation bits)} of the recipe it was measured for."""

    rows: list[SensitivityRow]
    recipe_bits: dict[str, tuple[bool, int | None, int | None]]
    images: int
    seconds: float

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([asdict(row) for row in self.rows])

    def worst(self, count: int = 5, kind: str = "weights", bits: int | None = None) -> list[tuple[str, float]]:
        """The ``count`` layers that cost the most for ``kind`` at ``bits`` (default: the smallest
        measured): the largest KL quantized alone, or for ``all_but`` the smallest KL with the layer
        left in float (the layer whose float precision helps most)."""
        measured = [row for row in self.rows if row.kind == kind]
        if not measured:
            return []
        bits = bits if bits is not None else min(row.bits for row in measured)
        sign = 1 if kind == "all_but" else -1
        chosen = sorted((row for row in measured if row.bits == bits), key=lambda row: sign * row.kl)
        return [(row.layer, row.kl) for row in chosen[:count]]

    def plot(self, path: Path, worst: int = 5) -> Path:
        """KL of every layer in execution order, one line per (kind, bits), the worst layers named."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        frame = self.to_frame()
        kinds = [kind for kind in KINDS if kind in set(frame.kind)]
        figure, axes = plt.subplots(len(kinds), 1, figsize=(12, 3.2 * len(kinds)), squeeze=False)
        for axis, kind in zip(axes[:, 0], kinds):
            rows = frame[frame.kind == kind]
            for bits, group in rows.groupby("bits"):
                group = group.sort_values("order")
                axis.plot(group.order, group.kl.clip(lower=1e-7), marker=".", label=f"{bits} bits")
            for layer, kl in self.worst(worst, kind):
                order = int(rows[rows.layer == layer].order.iloc[0])
                axis.annotate(layer, (order, max(kl, 1e-7)), fontsize=7, rotation=20)
            axis.set_yscale("log")
            axis.set_ylabel(f"KL to FP32 ({kind})")
            axis.legend(fontsize=7, ncol=len(set(rows.bits)))
        axes[-1, 0].set_xlabel("layer, in execution order")
        figure.tight_layout()
        figure.savefig(path, dpi=110, format="png")
        plt.close(figure)
        return path


def calibration_images(calibration: Iterable, count: int) -> torch.Tensor:
    from pytorch_quantizer.model.calibration import batch_images

    chosen, total = [], 0
    for item in calibration:
        images = batch_images(item)
        chosen.append(images[:count - total])
        total += len(chosen[-1])
        if total >= count:
            break
    if not chosen:
        raise QuantizationError("the calibration batches hold no images", code="empty_calibration",
                                field="calibration")
    return torch.cat(chosen)


def sensitivity(model: nn.Module, config: QuantConfig, calibration: Iterable, *,
                bits: tuple[int, ...] = DEFAULT_CANDIDATES, kinds: tuple[str, ...] = KINDS,
                images: int = DEFAULT_IMAGES, methods: Methods | None = None, batch: int = 32,
                device: torch.device | str | None = None, progress: Progress | None = None,
                processes=None) -> SensitivityReport:
    """Measure every integer-grid layer of ``model`` under ``config`` at every candidate bit width
    (``methods.sensitivity``): activation statistics from all the calibration batches, the
    measurements on the first ``images`` of them (never evaluated images: pass calibration ones).
    ``methods.equalize`` measures the equalized model; learned rounding is not part of it."""
    import time

    from pytorch_quantizer.api.functions import _device, quantize_with_inputs
    from pytorch_quantizer.methods.sensitivity import measure_sensitivity

    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise QuantizationError(f"sensitivity kinds are {', '.join(KINDS)}, not {sorted(unknown)}", field="kinds")
    if not bits or any(not isinstance(b, int) or not 1 <= b <= 16 for b in bits):
        raise QuantizationError(f"sensitivity bits must be integers within 1..16, got {bits}", field="bits")
    if iter(calibration) is calibration:
        calibration = list(calibration)
    start = time.perf_counter()
    inputs = RecipeInputs(calibration=calibration, statistics=Statistics(per_batch=False), device=_device(model, device),
                          progress=progress, **({"processes": processes} if processes is not None else {}))
    with quantize_with_inputs(model, config, Methods(equalize=bool(methods and methods.equalize)), inputs) as network:
        quantized = network.quantized
        chosen = calibration_images(calibration, images).to(inputs.device)
        rows = measure_sensitivity(quantized, chosen, tuple(sorted(set(bits))), tuple(kinds), batch, progress)
        bits_of_recipe = recipe_bits(quantized)
    return SensitivityReport(rows, bits_of_recipe, len(chosen), time.perf_counter() - start)


def recipe_bits(quantized) -> dict[str, tuple[bool, int | None, int | None]]:
    """{layer: (kept at 8 bits, weight bits, activation bits)} of a ``QuantizedModel``'s plans."""
    return {name: (plan.kept_8bit, plan.weight.bits if plan.weight is not None else None,
                   plan.activation.bits if plan.activation is not None else None)
            for name, plan in quantized.plans.items()}


def read_report(frame, model: nn.Module, config: QuantConfig, example_input: torch.Tensor) -> SensitivityReport:
    """A SensitivityReport from the table ``to_frame`` gave (e.g. read back from its CSV), for
    ``model`` under ``config`` (its layer plans, traced on ``example_input``)."""
    from pytorch_quantizer.api.functions import quantize

    rows = [SensitivityRow(**record) for record in frame.to_dict("records")]
    with quantize(model, config, example_input=example_input) as network:
        return SensitivityReport(rows, recipe_bits(network.quantized), 0, math.nan)


def mixed_precision(report: SensitivityReport, budget: Budget, candidates: tuple[int, ...] | None = None,
                    pinned: dict[str, int] | None = None) -> MixedPrecisionPlan:
    """Each layer's bits from ``candidates`` (default: those measured) that minimise the summed
    measured KL within ``budget``; ``pinned``: {layer: weight bits} fixed by hand. The plan's
    ``config(recipe)`` is the recipe with those bits; ``spent`` what it spends, every quantized layer
    counted (layers kept at 8 bits included)."""
    measured = sorted({row.bits for row in report.rows})
    candidates = tuple(sorted(set(candidates or measured)))
    missing = sorted(set(candidates) - set(measured))
    if missing:
        raise QuantizationError(f"candidate {missing[0]} bits was not measured by the sensitivity analysis "
                                f"({', '.join(map(str, measured))})", field="candidates")
    if any(not math.isfinite(row.kl) for row in report.rows if row.kind != "all_but"):
        raise QuantizationError("the sensitivity analysis holds a non-finite KL; measure it again", field="report")
    return solve(layer_costs(report.rows, report.recipe_bits, pinned), budget, candidates)
