"""The time of one learning step of block reconstruction against a float forward + backward of the
same block on the same batch (issue 27): what the learner adds beyond the block's own work.

    python analysis/bench_learning_step.py --json results/bench_learning_step.json

EfficientNet-Lite0 at W4A4 (per-tensor Laplace activations, per-channel 4-bit weights, bias
correction), statistics from 32 random images, each of ``--blocks`` learned on a batch of
``--batch`` of them: the seconds per step with nearest QDrop 0 and with ``--qdrop``, from the
difference of a 1-step and a (1 + ``--steps``)-step run (so the inputs' capture and the final error
are not counted), against the seconds of a forward + backward of the float block (its weights
requiring gradients) on the same batch, in the default (contiguous) layout and in the channels-last
layout the learner uses (``adaround.learning_layout``). Prints and writes the ratios (step over the
channels-last float forward + backward), measured in one run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from analysis.runs import write_text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-a", "--arch", default="efficientnet_lite0")
    parser.add_argument("--blocks", nargs="+", default=["_blocks.1", "_blocks.8", "_blocks.15"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--qdrop", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def float_step_seconds(block, inputs, repeats: int) -> float:
    """Seconds of one forward + backward of ``block`` on ``inputs``, its weights requiring gradients."""
    import torch

    parameters = [parameter for parameter in block.parameters()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    start = time.perf_counter()
    for _ in range(repeats):
        output = block(inputs)
        output.square().mean().backward()
    seconds = (time.perf_counter() - start) / repeats
    for parameter in parameters:
        parameter.grad = None
        parameter.requires_grad_(False)
    torch.set_grad_enabled(True)
    return seconds


def learning_seconds(quantized, name: str, layers: list[str], inputs, targets, steps: int, batch: int, drop: float):
    import torch

    from pytorch_quantizer.methods import adaround
    from pytorch_quantizer.model.weights import weight_correction, weight_grid

    block = quantized.model.get_submodule(name)
    weights = {layer: quantized.float_params[layer][0] for layer in layers}
    grids = {layer: weight_grid(quantized, layer) for layer in layers}

    def output(rounded, batch_inputs):
        parameters = {f"{layer[len(name) + 1:]}.weight": weight for layer, weight in rounded.items()}
        return torch.func.functional_call(block, parameters, (batch_inputs,))

    def timed(iterations: int) -> float:
        start = time.perf_counter()
        with quantized.measures_paused():
            adaround.learn_soft_roundings(weights, grids, output, inputs, targets, iterations, batch, 0,
                                          learning_mode=lambda: quantized.learning.straight_through(drop, 0),
                                          correction=weight_correction(quantized.config))
        return time.perf_counter() - start

    return (timed(1 + steps) - timed(1)) / steps


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from inference.models import create_model, get_model_spec
    from pytorch_quantizer.methods.adaround import learning_layout
    from pytorch_quantizer.methods.reconstruction import BlockInputs, blocks_in_order
    from pytorch_quantizer.model.calibration import collect_statistics, reduced
    from pytorch_quantizer.model.quantized_model import QuantizedModel
    from pytorch_quantizer.quantizers.config import QuantConfig, TensorQuantSpec

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = get_model_spec(args.arch)
    size = spec.preprocessing.crop or 28
    images = torch.randn(args.batch, 3, size, size)
    config = QuantConfig(activations=TensorQuantSpec(4, clipping="laplace"), weights=TensorQuantSpec(4, per_channel=True),
                         bias_correct_weights=True, keep_8bit=(spec.first_layer, spec.last_layer))
    figures = {"arch": args.arch, "batch": args.batch, "steps": args.steps, "threads": args.threads, "blocks": {}}
    with QuantizedModel(create_model(spec), config, images[:2]) as quantized:
        quantized.use_statistics(reduced(collect_statistics(quantized, [images], torch.device("cpu")), "mean",
                                         quantized.kept_layers()))
        blocks, order = blocks_in_order(quantized, images)
        capture = BlockInputs(quantized, images, order, args.batch, reuse_chained=False)
        for name in order:
            if name not in args.blocks:
                continue
            float_inputs, inputs = capture.of(name)
            block = quantized.model.get_submodule(name)
            with quantized.float_model(), torch.no_grad():
                targets = block(float_inputs)
            with quantized.float_model():
                row = {"float_forward_backward": float_step_seconds(block, float_inputs, args.steps)}
                reference = float_step_seconds(block, learning_layout(float_inputs), args.steps)
            row["float_forward_backward_channels_last"] = reference
            for label, drop in (("block", 0.0), (f"block_qdrop_{args.qdrop:g}", args.qdrop)):
                row[label] = learning_seconds(quantized, name, blocks[name], inputs, targets, args.steps, args.batch, drop)
                row[f"{label}_ratio"] = row[label] / reference
            figures["blocks"][name] = {key: round(value, 4) for key, value in row.items()}
            print(name, json.dumps(figures["blocks"][name]), flush=True)
    if args.json is not None:
        write_text(args.json, json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
