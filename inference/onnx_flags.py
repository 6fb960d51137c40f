"""--export-onnx and --verify-onnx: the calibrated model as ONNX QDQ (``pytorch_quantizer.export.onnx``),
checked against the simulator by onnxruntime on the evaluated images."""
from __future__ import annotations

import argparse
from pathlib import Path

from inference.errors import UserError
from inference.library_messages import cli_wording

GROUP_TITLE = "deployment: ONNX QDQ export"


def add_onnx_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(GROUP_TITLE)
    group.add_argument("--export-onnx", type=Path, default=None, metavar="PATH",
                       help="after calibration, write the BN-folded model as ONNX (opset 21) with QuantizeLinear / "
                            "DequantizeLinear pairs carrying the simulator's scales and zero points, and the "
                            "encodings beside it as PATH minus .onnx + .encodings.json")
    group.add_argument("--int32-bias", action="store_true",
                       help="round each Conv / Linear bias to its accumulator grid, round(b / (s_x s_w)) s_x s_w (int32), "
                            "where the layer's input lies on an activation grid, as integer runtimes hold it "
                            "(needs fixed activation ranges: -sm collect / use; exported as int32 DequantizeLinear)")
    group.add_argument("--verify-onnx", action="store_true",
                       help="with --export-onnx: run the exported model in onnxruntime (CPU) on the evaluated images "
                            "and report its top-1, its top-1 agreement with the simulator, the max / mean "
                            "absolute logit difference and the simulator's largest top-1 margin among the "
                            "images whose class changed")


def check_onnx_flags(args: argparse.Namespace, config) -> None:
    """Before any work: what an integer runtime cannot express is refused with the reason."""
    from inference.output_files import check_output_file
    from pytorch_quantizer.export.onnx import export_problem

    if args.int32_bias:
        check_int32_bias(args, config)
    if args.verify_onnx and args.export_onnx is None:
        raise UserError("--verify-onnx checks an exported model: add --export-onnx PATH")
    if args.export_onnx is None:
        return
    if args.export_onnx.suffix != ".onnx":
        raise UserError(f"--export-onnx {args.export_onnx}: name the file *.onnx (the encodings go beside it)")
    check_output_file("--export-onnx", args.export_onnx)
    if config is None:
        raise UserError("--export-onnx exports a quantized model: add --qtype intN and/or -qw intN")
    if args.ep:
        raise UserError("--export-onnx writes one model and -ep runs several precisions: drop one of them")
    problem = export_problem(config, fixed_ranges=args.sm in ("collect", "use") or args.ac)
    if problem is not None:
        raise UserError(cli_wording(problem))


def check_int32_bias(args: argparse.Namespace, config) -> None:
    """--int32-bias needs integer weights and fixed per-tensor activation ranges (the s_x of each layer)."""
    from pytorch_quantizer.quantizers.config import WeightKind

    if config is None or config.weights is None or config.weights.kind != WeightKind.INT:
        raise UserError("--int32-bias puts biases on the grid of integer weights: add -qw intN")
    if config.activations is None or not config.activations.kind.grid:
        raise UserError("--int32-bias needs GEMMLOWP activations (the accumulator grid is s_x s_w): add --qtype intN")
    if not (args.sm in ("collect", "use") or args.ac):
        raise UserError("--int32-bias needs fixed activation ranges, which define s_x: add -sm collect or -sm use")
    if config.activations.per_channel:
        raise UserError("--int32-bias needs one input scale per layer: drop -pcq_a")
    if config.bias_correct_activations:
        raise UserError("--int32-bias and -bca both change biases: drop one of them")
    if args.qat_epochs or args.load_qat is not None:
        raise UserError("--int32-bias places biases on the grids of post-training weights, which QAT replaces: "
                        "drop one of them")
