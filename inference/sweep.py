"""-ep: the same recipe at every precision, FP32 and int8 down to int4 (activations and weights),
one row each, as a pandas table written to CSV."""
from __future__ import annotations

import argparse
from copy import copy

from inference.errors import UserError

SWEEP_PRECISIONS = ("fp32", "int8", "int7", "int6", "int5", "int4")
SWEEP_COLUMNS = ("precision", "top1", "top5", "loss", "images", "drop")


def check_sweep_flags(args: argparse.Namespace) -> None:
    """Flags that contradict a sweep, each with the fix."""
    if args.qtype is not None or args.qweight is not None or args.q_off:
        raise UserError("-ep sets --qtype and -qw itself (fp32, int8 .. int4): drop --qtype / -qw / --q_off")
    if args.sm != "no":
        raise UserError("-ep with -sm: a statistics file holds one precision's ranges; use -ac to calibrate "
                        "each precision in memory, or drop -ep")
    if args.compare_fp32:
        raise UserError("-ep already evaluates FP32 as its first row: drop --compare-fp32")
    for flag, given in (("--report-csv", args.report_csv is not None), ("-ms", args.ms), ("-dd", args.dd is not None)):
        if given:
            raise UserError(f"-ep runs six precisions and {flag} describes one run: drop one of them")


def precision_args(args: argparse.Namespace, precision: str) -> argparse.Namespace:
    """The CLI namespace of one sweep row: FP32 through the same pipeline, or --qtype = -qw = intN."""
    row = copy(args)
    row.ep = False
    if precision == "fp32":
        row.q_off = True
    else:
        row.qtype = row.qweight = precision
    return row


def sweep_table(results: dict[str, dict]) -> "pd.DataFrame":  # noqa: F821
    """{precision: run() results} -> one row per precision, drop = FP32 top-1 - top-1."""
    import pandas as pd

    fp32_top1 = results["fp32"]["top1"]
    rows = [{"precision": precision, "top1": result["top1"], "top5": result["top5"], "loss": result["loss"],
             "images": result["images"], "drop": fp32_top1 - result["top1"]} for precision, result in results.items()]
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))
