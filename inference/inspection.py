"""Looking inside an evaluation: runtime activation statistics (-ms / -mf) and a tensor dump of one
batch (-dd). Both observe the inputs of every Conv/Linear layer by module name, before any
quantization of that input, and leave the accuracy untouched."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inference.distributed import ProcessInfo
from inference.errors import UserError
from pytorch_quantizer.api.evaluation import EvalResult, Fidelity, evaluate
from pytorch_quantizer.errors import QuantizationError
from inference.output_files import save_tensors, write_csv_atomically
from inference.progress import progress_bars
from pytorch_quantizer.model.graph import GEMM_LAYERS


@dataclass(frozen=True)
class Inspection:
    """``stats_csv``: where -ms writes per-layer activation statistics; ``dump_file``: where -dd
    writes the tensors of the first evaluated batch (None: not asked)."""

    stats_csv: Path | None = None
    dump_file: Path | None = None


def gemm_layer_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, GEMM_LAYERS)]


@contextmanager
def measuring_activations(model: nn.Module):
    """Per-tensor statistics of every Conv/Linear input over the evaluated batches: {name: StatsAccumulator}."""
    from pytorch_quantizer.model.observers import ObservedLayer, observing

    layers = {name: ObservedLayer(axis=None, clipping="no", bits=8) for name in gemm_layer_names(model)}
    with observing(model, layers) as accumulators:
        yield accumulators


def activation_table(accumulators: dict) -> "pd.DataFrame":  # noqa: F821
    """One row per layer: batches, min / max over batches, and min, max, mean, std, b and the
    positive fraction averaged over batches."""
    import pandas as pd

    rows = []
    for name, accumulator in accumulators.items():
        if not accumulator.state:
            continue
        averaged, extremes = accumulator.reduce("mean"), accumulator.reduce("max")
        row = {"layer": name, "batches": accumulator.batches,
               "min": float(extremes.min[0]), "max": float(extremes.max[0])}
        row.update({f"avg_{key}": float(value[0]) for key, value in averaged.as_dict().items()})
        rows.append(row)
    return pd.DataFrame(rows)


@contextmanager
def capturing_first_batch(model: nn.Module):
    """Record, during the first forward pass inside the block, the images, the logits and every
    Conv/Linear ``<layer>.input`` (the value reaching the layer), ``<layer>.input_quantized`` (what
    its GEMM used) and ``<layer>.output``; later batches are not recorded. Yields the dict."""
    tensors: dict[str, torch.Tensor] = {}
    handles = []

    def keep(key: str, value: torch.Tensor) -> None:
        tensors.setdefault(key, value.detach().cpu().clone())

    def before(name):
        def hook(module, args):
            keep(f"{name}.input", args[0])
        return hook

    def after(name):
        def hook(module, args, output):
            keep(f"{name}.input_quantized", args[0])
            keep(f"{name}.output", output)
        return hook

    handles.append(model.register_forward_pre_hook(lambda module, args: keep("images", args[0])))
    handles.append(model.register_forward_hook(lambda module, args, output: keep("logits", output)))
    for name in gemm_layer_names(model):
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(before(name), prepend=True))
        handles.append(module.register_forward_hook(after(name)))
    try:
        yield tensors
    finally:
        for handle in handles:
            handle.remove()


def nothing_decoded(what: str, flag: str, skipped: list[str]) -> str:
    """The error of a run whose every (evaluated or calibration) image file was skipped as undecodable."""
    example = f", e.g. {skipped[0]}" if skipped else ""
    return (f"--skip-bad-images: none of the {what} image files could be decoded ({len(skipped)} skipped{example}); "
            f"check {flag}")


def evaluate_inspected(model: nn.Module, loader, device: torch.device, print_freq: int, process: ProcessInfo,
                       inspection: Inspection, reference: nn.Module | None = None,
                       ) -> tuple[EvalResult, Fidelity | None, dict[str, str]]:
    """``evaluate`` over this process's batches (beside ``reference`` when given), summed over
    processes, with the asked inspections of ``model``; returns the result, the fidelity against
    ``reference`` and {kind: path} of the files written (by rank 0 only)."""
    files = {}
    dumping = inspection.dump_file is not None and process.is_main
    measuring = measuring_activations(model) if inspection.stats_csv is not None else nullcontext({})
    with measuring as accumulators, capturing_first_batch(model) if dumping else nullcontext({}) as captured:
        try:
            result, fidelity = evaluate(model, loader, device, print_freq, progress=progress_bars(process.is_main),
                                        sum_over_processes=process.sum, reference=reference,
                                        max_over_processes=process.maximum)
        except QuantizationError as error:
            if error.code != "no_images":
                raise
            raise UserError(nothing_decoded("evaluated", "--data", getattr(loader, "skipped", []))) from None
    if dumping:
        save_tensors({**captured, "labels": next(iter(loader))[1]}, inspection.dump_file)
        files["dump_file"] = str(inspection.dump_file)
    if inspection.stats_csv is not None:
        process.merge_statistics(accumulators)
        if process.is_main:
            write_csv_atomically(inspection.stats_csv, activation_table(accumulators))
            files["activation_stats_csv"] = str(inspection.stats_csv)
    return result, fidelity, files
