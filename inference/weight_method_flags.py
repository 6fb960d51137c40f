"""Flags of the post-training weight methods published after the seed (``pytorch_quantizer``'s
``equalization`` and ``adaround``) and their checks."""
from __future__ import annotations

import argparse

from inference.errors import UserError

GROUP_TITLE = "after the seed: weight methods for depthwise networks"
DEFAULT_RECON_ITERS = 1000
DEFAULT_RECON_BATCH = 32


def add_weight_method_flags(parser: argparse.ArgumentParser, positive_int) -> None:
    group = parser.add_argument_group(GROUP_TITLE)
    group.add_argument("--equalize", action="store_true",
                       help="cross-layer equalization and high-bias absorption (Nagel et al. 2019) of the float "
                            "model before quantization: data-free, the float function unchanged except where the "
                            "absorbed bias assumes pre-activations above beta - 3|gamma|")
    group.add_argument("--adaround", action="store_true",
                       help="learn each integer-grid weight's rounding (AdaRound, Nagel et al. 2020) layer by layer on "
                            "-cs calibration images; saved beside the statistics with -sm collect, reused with -sm use")
    group.add_argument("--recon-iters", type=positive_int, default=None, metavar="N",
                       help=f"optimisation steps per layer of --adaround (default: {DEFAULT_RECON_ITERS})")
    group.add_argument("--recon-batch", type=positive_int, default=None, metavar="B",
                       help=f"calibration images per step of --adaround (default: {DEFAULT_RECON_BATCH})")


def check_weight_method_flags(args: argparse.Namespace) -> None:
    """Before any work: the methods transform a float model or its post-training rounding, which
    fine-tuning or a loaded model replaces; the learning flags need --adaround."""
    for flag, value in (("--recon-iters", args.recon_iters), ("--recon-batch", args.recon_batch)):
        if value is not None and not args.adaround:
            raise UserError(f"{flag} concerns learned rounding: add --adaround")
    training = "--qat-epochs" if args.qat_epochs else "--load-qat" if args.load_qat is not None else None
    for flag, given in (("--equalize", args.equalize), ("--adaround", args.adaround)):
        if given and training:
            raise UserError(f"{flag} is a post-training method and {training} replaces the weights it works on: "
                            "drop one of them")
    if not args.adaround:
        return
    weights = args.qweight if args.qweight is not None else ("int8" if args.qtype not in (None, "f32") else None)
    if weights is None or not weights.startswith("int"):
        raise UserError(f"--adaround learns the rounding of integer-grid weights and -qw is {weights or 'f32'}: "
                        "use -qw intN")
    if args.stochastic:
        raise UserError("--adaround learns a fixed rounding and -s rounds at random: drop one of them")
    if args.mtq:
        raise UserError("--adaround learns rounding on GEMMLOWP grids, -mtq uses mid-tread bins: drop one of them")
