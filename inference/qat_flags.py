"""Flags of the short quantization-aware fine-tuning (``pytorch_quantizer.methods.qat``) and their checks."""
from __future__ import annotations

import argparse
from pathlib import Path

from inference.errors import UserError
from inference.quant_flags import other_seeds_kind, positive_float
from pytorch_quantizer.api.options import DEFAULT_QAT_LR
from pytorch_quantizer.formats.safe_io import file_problem

DEFAULT_QAT_BATCH = 128


def add_qat_flags(parser: argparse.ArgumentParser, positive_int, non_negative_int) -> None:
    group = parser.add_argument_group("quantization-aware fine-tuning (the other seeds' kinds)")
    group.add_argument("--qat-epochs", type=non_negative_int, default=0, metavar="N",
                       help="fine-tune the quantized model for N passes over -cs images of the calibration split "
                            "(STE; learnable alpha for apot/pot/uniform; G-STE thresholds for n2uq) before "
                            "evaluating (default: 0, post-training only)")
    group.add_argument("--qat-lr", type=positive_float, default=None,
                       help=f"Adam learning rate of --qat-epochs (default: {DEFAULT_QAT_LR:g})")
    group.add_argument("--qat-batch-size", type=positive_int, default=None,
                       help=f"images per training step of --qat-epochs (default: {DEFAULT_QAT_BATCH})")
    group.add_argument("--save-qat", type=Path, default=None, metavar="PATH",
                       help="write the fine-tuned weights and activation quantizers (a plain tensor dict)")
    group.add_argument("--load-qat", type=Path, default=None, metavar="PATH",
                       help="evaluate a model saved with --save-qat, without training again")


def recipe_text(args: argparse.Namespace) -> str:
    """The recipe a QAT file belongs to (its quantizer kinds and granularity)."""
    return f"--qtype {args.qtype or 'f32'} -qw {args.qweight or 'int8'}{' -pcq_w' if args.pcq_w else ''}"


def check_qat_flags(args: argparse.Namespace) -> None:
    """Before any work: the QAT flags need each other and the other seeds' kinds."""
    training = args.qat_epochs > 0
    for flag, value in (("--qat-lr", args.qat_lr), ("--qat-batch-size", args.qat_batch_size),
                        ("--save-qat", args.save_qat)):
        if value is not None and not training:
            raise UserError(f"{flag} concerns fine-tuning: add --qat-epochs N")
    if not training and args.load_qat is None:
        return
    if training and args.load_qat is not None:
        raise UserError("--load-qat evaluates a fine-tuned model without training: drop --qat-epochs or --load-qat")
    flag = "--qat-epochs" if training else "--load-qat"
    weight_text = args.qweight if args.qweight is not None else ("int8" if args.qtype not in (None, "f32") else None)
    kinds = [text for text in (args.qtype, weight_text) if text not in (None, "f32")]
    if not kinds or not all(other_seeds_kind(text) for text in kinds):
        raise UserError(f"{flag} trains the other seeds' kinds: set --qtype / -qw to uniformN, potN, apotN, dorefaN, "
                        "n2uqN, binary or ternary (or f32), not the integer grid")
    if training and args.calib_data is not None:
        raise UserError("--qat-epochs trains on labelled images and --calib-data images are unlabelled: pass "
                        "--calib-holdout N, or put labelled class folders in the data folder's train/")
    if args.bcw or args.vcw:
        raise UserError(f"{flag}: -bcw / -vcw correct post-training rounding, which fine-tuning learns: drop them")
    problem = file_problem(args.load_qat) if args.load_qat is not None else None
    if problem is not None:
        what = "no such file" if problem == "does not exist" else problem
        raise UserError(f"--load-qat {args.load_qat}: {what}; save it again with --qat-epochs N --save-qat PATH "
                        "(same model and --qtype / -qw)")
