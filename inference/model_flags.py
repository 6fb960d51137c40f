"""The model flags: ``-a`` (a registry model, a torchvision classifier by name, or a factory
``package.module:function``) and, for models outside the registry, their input preprocessing."""
from __future__ import annotations

import argparse

from inference.models import list_models

DEFAULT_ARCH = "efficientnet_lite0"


def float_triple(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def add_model_flags(parser: argparse.ArgumentParser, positive_int) -> None:
    parser.add_argument("-a", "--arch", default=DEFAULT_ARCH, metavar="ARCH",
                        help=f"model: one of the registry ({', '.join(list_models())}), any torchvision "
                             "classification model by name (e.g. mobilenet_v3_small; ImageNet weights from the torch "
                             "hub cache or --weights), or your factory package.module:function returning an "
                             f"nn.Module (with --weights) (default: {DEFAULT_ARCH})")
    group = parser.add_argument_group("preprocessing of models outside the registry")
    group.add_argument("--input-size", type=positive_int, default=None, metavar="N",
                       help="centre crop of N x N pixels fed to the model (default: its torchvision weights' crop, "
                            "else 224)")
    group.add_argument("--resize", type=positive_int, default=None, metavar="N",
                       help="short side resized to N before the crop (default: the weights', else input size x 256 / 224)")
    group.add_argument("--mean", type=float_triple, nargs=3, default=None, metavar=("R", "G", "B"),
                       help="per-channel mean subtracted after scaling to [0, 1] (default: ImageNet's)")
    group.add_argument("--std", type=float_triple, nargs=3, default=None, metavar=("R", "G", "B"),
                       help="per-channel standard deviation divided by (default: ImageNet's)")


def spec_from_args(args: argparse.Namespace):
    """The ``ModelSpec`` of ``-a`` with the preprocessing flags applied."""
    from inference.model_choice import model_spec

    if args.std is not None and min(args.std) <= 0:
        from inference.errors import UserError

        raise UserError(f"--std {' '.join(map(str, args.std))}: standard deviations must be positive")
    overrides = (args.input_size, args.resize, tuple(args.mean) if args.mean else None,
                 tuple(args.std) if args.std else None)
    return model_spec(args.arch, overrides if any(value is not None for value in overrides) else None)
