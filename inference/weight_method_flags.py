"""Flags of the post-training weight methods published after the seed (``pytorch_quantizer``'s
``equalization`` and ``adaround``) and their checks."""
from __future__ import annotations

import argparse

from inference.errors import UserError
from inference.quant_flags import positive_float
from pytorch_quantizer.api.options import DEFAULT_ROUNDING_BATCH, DEFAULT_ROUNDING_STEPS

GROUP_TITLE = "after the seed: weight methods for depthwise networks"
DEFAULT_RECON_ITERS = DEFAULT_ROUNDING_STEPS
DEFAULT_RECON_BATCH = DEFAULT_ROUNDING_BATCH


def add_weight_method_flags(parser: argparse.ArgumentParser, positive_int) -> None:
    group = parser.add_argument_group(GROUP_TITLE)
    group.add_argument("--equalize", action="store_true",
                       help="cross-layer equalization and high-bias absorption (Nagel et al. 2019) of the float "
                            "model before quantization: data-free, the float function unchanged except where the "
                            "absorbed bias assumes pre-activations above beta - 3|gamma|")
    group.add_argument("--adaround", action="store_true",
                       help="learn each integer-grid weight's rounding (AdaRound, Nagel et al. 2020) layer by layer on "
                            "-cs calibration images; saved beside the statistics with -sm collect, reused with -sm use")
    group.add_argument("--reconstruct", choices=("block",), default=None,
                       help="learn the rounding block by block instead (BRECQ, Li et al. 2021): the layers of each "
                            "inverted-residual / residual block together against the block's float output, "
                            "activations quantized inside; saved and reused like --adaround")
    group.add_argument("--qdrop", type=probability, default=None, metavar="P",
                       help="with --reconstruct block: each activation element stays float with probability P while "
                            "learning (QDrop, Wei et al. 2022; default 0)")
    group.add_argument("--learn-step-sizes", action="store_true",
                       help="with --reconstruct block: learn the step sizes of each block's activation grids with its "
                            "rounding (LSQ gradients, Adam at --step-size-lr annealed along a cosine, as BRECQ / QDrop "
                            "do); needs fixed ranges (-sm collect / use or -ac); saved in the rounding file and reused "
                            "with -sm use")
    group.add_argument("--step-size-lr", type=positive_float, default=None, metavar="LR",
                       help="Adam rate of --learn-step-sizes (default: 4e-5, BRECQ's and QDrop's for 20,000 steps per "
                            "block; a step size moves at most about LR x steps / 2, so 0.8 / --recon-iters reaches as "
                            "far)")
    group.add_argument("--joint-blocks", type=positive_int, default=None, metavar="K",
                       help="with --reconstruct block: learn the K pairs of consecutive chained blocks whose relative "
                            "output error (all weights rounded to nearest) rises most from one block to the next "
                            "together, as one unit (after MRECG's mixed reconstruction granularity, Ma et al. 2023; "
                            "default: every block alone)")
    group.add_argument("--recon-iters", type=positive_int, default=None, metavar="N",
                       help=f"optimisation steps per layer / block of --adaround / --reconstruct "
                            f"(default: {DEFAULT_RECON_ITERS})")
    group.add_argument("--recon-batch", type=positive_int, default=None, metavar="B",
                       help=f"calibration images per step of --adaround / --reconstruct (default: {DEFAULT_RECON_BATCH})")
    group.add_argument("--recon-groups", type=positive_int, default=None, metavar="G",
                       help="compute each step's gradient of --adaround / --reconstruct in G passes, one per group of "
                            "calibration batches (batch k in group k mod G), summed in group order: under torchrun G "
                            "must be a multiple of the process count, and one process with the same G learns the same "
                            "rounding bit for bit (default: one pass, or one group per process under torchrun)")


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in [0, 1)")
    return value


def learning_flag(args: argparse.Namespace) -> str | None:
    """The flag that learns weight rounding in this run, if any."""
    if args.adaround:
        return "--adaround"
    return "--reconstruct block" if args.reconstruct else None


def check_weight_method_flags(args: argparse.Namespace) -> None:
    """Before any work: the methods transform a float model or its post-training rounding, which
    fine-tuning or a loaded model replaces; the learning flags need a learning method."""
    if args.adaround and args.reconstruct:
        raise UserError("--adaround learns layer by layer and --reconstruct block block by block: choose one")
    learning = learning_flag(args)
    for flag, value in (("--recon-iters", args.recon_iters), ("--recon-batch", args.recon_batch),
                        ("--recon-groups", args.recon_groups)):
        if value is not None and learning is None:
            raise UserError(f"{flag} concerns learned rounding: add --adaround or --reconstruct block")
    if args.qdrop is not None and not args.reconstruct:
        raise UserError("--qdrop drops activation quantization while learning blocks: add --reconstruct block")
    if args.joint_blocks is not None and not args.reconstruct:
        raise UserError("--joint-blocks joins blocks of block reconstruction: add --reconstruct block")
    if args.learn_step_sizes and not args.reconstruct:
        raise UserError("--learn-step-sizes learns activation step sizes block by block: add --reconstruct block")
    if args.step_size_lr is not None and not args.learn_step_sizes:
        raise UserError("--step-size-lr is the learning rate of learned step sizes: add --learn-step-sizes")
    if args.learn_step_sizes and not (args.sm in ("collect", "use") or args.ac):
        raise UserError("--learn-step-sizes learns the step sizes of fixed activation ranges: add -sm collect, "
                        "-sm use or -ac")
    training = "--qat-epochs" if args.qat_epochs else "--load-qat" if args.load_qat is not None else None
    for flag in ("--equalize" if args.equalize else None, learning):
        if flag is not None and training:
            raise UserError(f"{flag} is a post-training method and {training} replaces the weights it works on: "
                            "drop one of them")
    if learning is None:
        return
    weights = args.qweight if args.qweight is not None else ("int8" if args.qtype not in (None, "f32") else None)
    if weights is None or not weights.startswith("int"):
        raise UserError(f"{learning} learns the rounding of integer-grid weights and -qw is {weights or 'f32'}: "
                        "use -qw intN")
    if args.stochastic:
        raise UserError(f"{learning} learns a fixed rounding and -s rounds at random: drop one of them")
    if args.mtq:
        raise UserError(f"{learning} learns rounding on GEMMLOWP grids, -mtq uses mid-tread bins: drop one of them")
