"""--adaround / --reconstruct block in a run: learn the weight rounding on the calibration images
(saved beside the statistics with -sm collect), or load it with -sm use, and put it in the
quantized model."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from inference.errors import UserError
from inference.quant_flags import statistics_point
from inference.weight_method_flags import DEFAULT_RECON_BATCH, DEFAULT_RECON_ITERS, learning_flag


def rounding_path(args: argparse.Namespace) -> Path:
    method = "block-rounding" if args.reconstruct == "block" else "rounding"
    return args.sf / f"{args.arch}.{statistics_point(args)}.{method}.pt"


def recipe_key(args: argparse.Namespace, config) -> str:
    """The recipe a rounding belongs to: the learning method, QDrop and the whole resolved
    configuration (a frozen dataclass)."""
    return f"{learning_flag(args)} qdrop={args.qdrop or 0.0} {config!r}"


def calibration_images(loader, device: torch.device) -> torch.Tensor:
    return torch.cat([inputs for inputs, _ in loader]).to(device)


def settle_rounding(args: argparse.Namespace, quantized, calibration, config, device: torch.device,
                    show_progress: bool) -> dict:
    """Learned (or loaded) rounding in place in ``quantized``; returns what was done for the results."""
    from pytorch_quantizer.reconstruction import RoundingOptions, learn_block_rounding, learn_model_rounding
    from pytorch_quantizer.rounding_io import load_rounding, save_rounding

    path = rounding_path(args)
    start = time.perf_counter()
    if args.sm == "use":
        shapes = {name: quantized.float_params[name][0].shape for name in quantized.plans
                  if quantized.weight_grid(name) is not None}
        fix = f"learn it again with {learning_flag(args)} -sm collect (same model and quantization flags)"
        for name, up in load_rounding(path, args.arch, recipe_key(args, config), shapes, fix).items():
            quantized.use_weight_rounding(name, up)
        return {"rounding_file": str(path), "rounding_seconds": round(time.perf_counter() - start, 3)}
    if calibration is None:
        raise UserError(f"{learning_flag(args)} needs calibration images: pass -cs N with a calibration split")
    options = RoundingOptions(args.recon_iters or DEFAULT_RECON_ITERS, args.recon_batch or DEFAULT_RECON_BATCH,
                              args.seed, args.qdrop or 0.0)
    blocks = args.reconstruct == "block"

    def bar(names):
        from tqdm import tqdm

        return tqdm(names, desc="reconstruct" if blocks else "adaround", unit="block" if blocks else "layer",
                    disable=None if show_progress else True, leave=False)

    learn = learn_block_rounding if blocks else learn_model_rounding
    results = learn(quantized, calibration_images(calibration.loader, device), options, bar)
    learned = {id(result.losses): result for result in results.values()}  # the layers of a block share one
    summary = {"rounding_layers": len(results), "rounding_seconds": round(time.perf_counter() - start, 3),
               "rounding_nearest_error": sum(result.nearest_error for result in learned.values()),
               "rounding_learned_error": sum(result.learned_error for result in learned.values())}
    if args.sm == "collect":
        save_rounding(path, {name: result.up for name, result in results.items()}, args.arch, recipe_key(args, config))
        summary["rounding_file"] = str(path)
    return summary
