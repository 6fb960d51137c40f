"""The CLI's flags turned, once, into what the library and the run take: the methods
(``pytorch_quantizer.Methods``), the files read and written around the recipe (``RecipeFiles``) and
the evaluation settings. Below this module nothing reads the argparse Namespace."""
from __future__ import annotations

import argparse

from inference.inspection import Inspection
from inference.qat_flags import DEFAULT_QAT_BATCH, recipe_text
from inference.quant_flags import act_quant_point, departures_from_args
from inference.run_files import RecipeFiles
from inference.simulate import EvaluationSettings
from pytorch_quantizer.api.options import DEFAULT_QAT_LR, DEFAULT_ROUNDING_BATCH, DEFAULT_ROUNDING_STEPS, Methods


def methods_from_args(args: argparse.Namespace) -> Methods:
    rounding = "adaround" if args.adaround else "block" if args.reconstruct == "block" else "nearest"
    return Methods(equalize=args.equalize, rounding=rounding, qdrop=args.qdrop or 0.0,
                   learn_step_sizes=args.learn_step_sizes, step_size_lr=args.step_size_lr,
                   joint_blocks=args.joint_blocks or 0,
                   rounding_steps=args.recon_iters or DEFAULT_ROUNDING_STEPS,
                   rounding_batch=args.recon_batch or DEFAULT_ROUNDING_BATCH,
                   rounding_groups=args.recon_groups,
                   qat_epochs=args.qat_epochs, qat_lr=args.qat_lr or DEFAULT_QAT_LR)


def statistics_point(args: argparse.Namespace) -> str:
    """Where statistics are observed: ``input``, ``output`` (pre-activation, the seed's) or
    ``output.rectified`` (after a fused ReLU, with --rectified-aciq), ``.equalized`` after the point
    with --equalize (another float model); files of one do not serve another."""
    point = act_quant_point(args)
    point = f"{point}.rectified" if point == "output" and departures_from_args(args).rectified_aciq else point
    return f"{point}.equalized" if args.equalize else point


def recipe_files_from_args(args: argparse.Namespace) -> RecipeFiles:
    return RecipeFiles(
        model_name=args.arch, statistics_mode=args.sm, statistics_folder=args.sf, statistics_point=statistics_point(args),
        calibrate=args.ac, image_averaged_range=args.sba, load_qat=args.load_qat, save_qat=args.save_qat,
        qat_recipe=recipe_text(args), qat_batch_size=args.qat_batch_size or DEFAULT_QAT_BATCH,
        export_onnx=args.export_onnx, verify_onnx=args.verify_onnx, kind_text=args.qtype or "")


def inspection_from_args(args: argparse.Namespace) -> Inspection:
    """-ms (statistics CSV in -mf, else -sf) and -dd (the first batch's tensors); folders created."""
    stats_csv = dump_file = None
    if args.ms:
        folder = args.mf or args.sf
        folder.mkdir(parents=True, exist_ok=True)
        stats_csv = folder / f"{args.arch}.activation_stats.csv"
    if args.dd is not None:
        args.dd.mkdir(parents=True, exist_ok=True)
        dump_file = args.dd / f"{args.arch}.batch0.pt"
    return Inspection(stats_csv, dump_file)


def evaluation_from_args(args: argparse.Namespace) -> EvaluationSettings:
    return EvaluationSettings(print_freq=args.print_freq, inspection=inspection_from_args(args),
                              measure_error=args.report_csv is not None, compare_fp32=args.compare_fp32)
