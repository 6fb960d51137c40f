"""Flags of the post-training weight methods published after the seed (``pytorch_quantizer``'s
``equalization``) and their checks."""
from __future__ import annotations

import argparse

from inference.errors import UserError

GROUP_TITLE = "after the seed: weight methods for depthwise networks"


def add_weight_method_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(GROUP_TITLE)
    group.add_argument("--equalize", action="store_true",
                       help="cross-layer equalization and high-bias absorption (Nagel et al. 2019) of the float "
                            "model before quantization: data-free, the float function unchanged except where the "
                            "absorbed bias assumes pre-activations above beta - 3|gamma|")


def check_weight_method_flags(args: argparse.Namespace) -> None:
    """Before any work: the methods transform a float model, which fine-tuning or a loaded one replaces."""
    if args.equalize and (args.qat_epochs or args.load_qat is not None):
        flag = "--qat-epochs" if args.qat_epochs else "--load-qat"
        raise UserError(f"--equalize transforms the float model before post-training quantization and {flag} "
                        "replaces its weights: drop one of them")
