"""Flags of the sensitivity analysis and of mixed precision under a budget, their checks, and their
one-time conversion into ``PrecisionSettings``."""
from __future__ import annotations

import argparse
from pathlib import Path

from inference.errors import UserError
from pytorch_quantizer.formats.safe_io import file_problem

GROUP_TITLE = "sensitivity analysis and mixed precision"
DEFAULT_IMAGES = 32
BUDGET_FLAGS = {"mp_weight_bits": "--mp-weight-bits", "mp_act_bits": "--mp-act-bits", "mp_gbops": "--mp-gbops"}


def bits_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a bit width (an integer), got {text!r}") from None
    if not 1 <= value <= 16:
        raise argparse.ArgumentTypeError(f"must be a bit width within 1..16, got {value}")
    return value


def pinned_bits(text: str) -> tuple[str, int]:
    name, separator, bits = text.rpartition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"must be LAYER=BITS (e.g. _fc=8), got {text!r}")
    return name, bits_value(bits)


def add_precision_flags(parser: argparse.ArgumentParser, positive_int, positive_float) -> None:
    from pytorch_quantizer.methods.mixed_precision import DEFAULT_CANDIDATES   # imports torch: not at import time

    group = parser.add_argument_group(GROUP_TITLE)
    group.add_argument("--sensitivity", type=Path, default=None, metavar="CSV",
                       help="measure every quantized layer at every --sensitivity-bits on calibration images (KL to "
                            "FP32 and top-1 agreement with only its weights, only its activation, or everything but "
                            "it quantized; its output SQNR), write the table to CSV and a figure beside it (.png)")
    group.add_argument("--sensitivity-bits", type=bits_value, nargs="+", default=None, metavar="B",
                       help=f"candidate bit widths of the analysis and of mixed precision (default: "
                            f"{' '.join(map(str, DEFAULT_CANDIDATES))})")
    group.add_argument("--sensitivity-images", type=positive_int, default=None, metavar="N",
                       help=f"calibration images the analysis measures on (default: {DEFAULT_IMAGES}; statistics "
                            "come from all -cs images)")
    group.add_argument("--sensitivity-kinds", nargs="+", choices=("weights", "activations", "all_but"), default=None,
                       help="what the analysis measures: only a layer's weights, only its activation, everything "
                            "but the layer (default: all three)")
    group.add_argument("--mp-weight-bits", type=positive_float, default=None, metavar="BITS",
                       help="mixed precision: choose each layer's weight bits so that the mean weight bits (by weight "
                            "count, layers kept at 8 bits included) are at most BITS, minimising the measured KL")
    group.add_argument("--mp-act-bits", type=positive_float, default=None, metavar="BITS",
                       help="mixed precision: the same for activation bits (mean by activation elements)")
    group.add_argument("--mp-gbops", type=positive_float, default=None, metavar="G",
                       help="mixed precision: at most G giga bit-operations per image (MACs x weight bits x activation "
                            "bits)")
    group.add_argument("--layer-bits", type=pinned_bits, action="append", default=None, metavar="LAYER=BITS",
                       help="with a budget: fix this layer's weight bits instead of choosing them (repeatable)")
    group.add_argument("--mp-plan", type=Path, default=None, metavar="PATH",
                       help="with a budget: write the chosen plan there (a data-only file tied to the weights and "
                            "recipe); without one: quantize with the plan read from there")


def budget_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, dest) is not None for dest in BUDGET_FLAGS)


def check_precision_flags(args: argparse.Namespace) -> None:
    """Before any work: the flags need each other and a quantized integer-grid recipe."""
    analysis = args.sensitivity is not None or budget_given(args)
    for flag, value in (("--sensitivity-bits", args.sensitivity_bits), ("--sensitivity-images", args.sensitivity_images),
                        ("--sensitivity-kinds", args.sensitivity_kinds)):
        if value is not None and not analysis:
            raise UserError(f"{flag} concerns the sensitivity analysis: add --sensitivity CSV or a budget (--mp-weight-bits)")
    if args.layer_bits is not None and not budget_given(args):
        raise UserError("--layer-bits fixes layers of a mixed-precision plan: add --mp-weight-bits, --mp-act-bits or "
                        "--mp-gbops")
    if args.mp_plan is not None and not budget_given(args):
        problem = file_problem(args.mp_plan)
        if problem is not None:
            raise UserError(f"--mp-plan {args.mp_plan}: {'no such file' if problem == 'does not exist' else problem}; "
                            "write a plan first with a budget (--mp-weight-bits ...) and --mp-plan PATH")
    if not analysis and args.mp_plan is None:
        return
    if args.sensitivity is not None and args.sensitivity.suffix != ".csv":
        raise UserError(f"--sensitivity {args.sensitivity}: name the table *.csv (the figure goes beside it as .png)")
    if args.ep:
        raise UserError("-ep runs six precisions and the sensitivity analysis / mixed precision one recipe: drop one")
    if args.qat_epochs or args.load_qat is not None:
        raise UserError("mixed precision and the sensitivity analysis concern integer grids; QAT trains the other seeds' "
                        "kinds: drop one of them")
    kinds = args.sensitivity_kinds or ()
    if budget_given(args) and kinds and not {"weights", "activations"} & set(kinds):
        raise UserError("a budget chooses bits from the weights / activations measurements: add them to "
                        "--sensitivity-kinds")


def precision_settings(args: argparse.Namespace):
    """The analysis and mixed-precision settings of a run (None when it asks for neither)."""
    from inference.precision import PrecisionSettings
    from pytorch_quantizer.methods.mixed_precision import DEFAULT_CANDIDATES, Budget
    from pytorch_quantizer.methods.sensitivity import KINDS

    if args.sensitivity is None and not budget_given(args) and args.mp_plan is None:
        return None
    budget = Budget(args.mp_weight_bits, args.mp_act_bits, args.mp_gbops) if budget_given(args) else None
    return PrecisionSettings(
        sensitivity_csv=args.sensitivity, bits=tuple(sorted(set(args.sensitivity_bits or DEFAULT_CANDIDATES))),
        images=args.sensitivity_images or DEFAULT_IMAGES, kinds=tuple(args.sensitivity_kinds or KINDS), budget=budget,
        pinned=tuple(sorted(dict(args.layer_bits or []).items())), plan_file=args.mp_plan)
