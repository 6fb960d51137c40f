"""Variants of EfficientNet-Lite0's W4A4 block reconstruction judged on the 100 held-out photos
before any of them reaches the 400 evaluated ones (issue 27), each one mlflow run (experiment
``fold-one-variants``), resumable like ``report.py``.

    python analysis/fold_one_variants.py           # Lite0: eight W4A4 recipes, five W8A4 references (50 minutes)
    python analysis/fold_one_variants.py --quick   # fmnist_mobilenet, 100 test images, 10 learning steps (tests)

Every variant tried on the 400 evaluated photos adds a comparison chosen on them, and one standard
error of top-1 there (about 1.9 points) is larger than the gap left to issue 27's W4A4 target. So
new variants are first judged on part 1 of ``--calib-fold 1/5``: with ``--seed 0`` exactly the 100
photos that ``--calib-holdout 100`` holds out for calibration in the other tables, evaluated here
by a rounding learned on 100 of the other 400 (``-cs 100 --recon-iters 200``, the other tables'
amounts). No label of the 400 enters the comparison. The photos run in two batches of 50 because
the W4A4 recipes take their activation ranges from each evaluated batch (the seed's way). The
judge is the KL to FP32 and the agreement with it, steadier than top-1 on 100 photos (one standard
error about 3 points). Reference rows give the same 4-bit activations with 8-bit weights rounded
to nearest (ranges by ACIQ, least squared error or KL divergence): what the activations alone
cost. Writes ``<out>/<model>.md`` and ``<out>/fold_one_variants.csv``.
"""
from __future__ import annotations

import argparse
import sys

from analysis.cross_validated import fold_rows, write_table
from analysis.post_training_methods import PRECISIONS
from analysis.runs import DEVELOPMENT_PHOTOS, parse_row_script

BLOCK = f"{PRECISIONS['W4A4']} --reconstruct block"
VARIANTS = {"W4A4, reconstruct block": BLOCK,
            "+ activation bias correction folded after learning (-bca --bca-folded)": f"{BLOCK} -bca --bca-folded",
            "+ weight ranges of least squared error (--weight-clipping mse)": f"{BLOCK} --weight-clipping mse",
            "+ the seed's activation bias correction, fixed ranges (-bca -sm collect)": f"{BLOCK} -bca -sm collect",
            "+ fixed activation ranges (-sm collect)": f"{BLOCK} -sm collect",
            "+ fixed activation ranges of least squared error (-c mse -sm collect)":
                f"{BLOCK.replace('-c laplace', '-c mse')} -sm collect",
            "+ 4 pairs of blocks learned jointly (--joint-blocks 4)": f"{BLOCK} --joint-blocks 4",
            "+ 8 pairs of blocks learned jointly (--joint-blocks 8)": f"{BLOCK} --joint-blocks 8"}
# What the same 4-bit activations cost with 8-bit weights rounded to nearest: how much of the W4A4
# row's loss is left to its activations.
W8A4 = "--qtype int4 -c laplace -qw int8 -pcq_w -bcw"
VARIANTS |= {"reference: W8A4, nearest rounding": W8A4,
             "reference: W8A4, nearest rounding, fixed ranges (-sm collect)": f"{W8A4} -sm collect -cs 100",
             "reference: W8A4, nearest rounding, the seed's -bca, fixed ranges": f"{W8A4} -bca -sm collect -cs 100",
             "reference: W8A4, nearest rounding, fixed ranges of least squared error (-c mse)":
                 f"{W8A4.replace('-c laplace', '-c mse')} -sm collect -cs 100",
             "reference: W8A4, nearest rounding, fixed KL-divergence ranges (-c kld)":
                 f"{W8A4.replace('-c laplace', '-c kld')} -sm collect -cs 100"}
FULL = {"arch": "efficientnet_lite0", "folds": 5, "learning": "-cs 100 --recon-iters 200",
        "data": ["--data", str(DEVELOPMENT_PHOTOS), "-b", "50"], "photos": DEVELOPMENT_PHOTOS,
        "source": "Part 1 of the 500 ImageNet development photos cut into 5 seeded parts (seed 0): the 100 photos "
                  "the other tables hold out for calibration, evaluated with the rounding learned on 100 of the "
                  "other 400"}
QUICK = {"arch": "fmnist_mobilenet", "folds": 2, "learning": "-cs 64 --recon-iters 10",
         "data": ["-b", "100", "-ss", "100"],
         "source": "Fashion-MNIST test images cut into 2 seeded parts; the first 100 images of part 1, learned on "
                   "images of part 2"}
QUICK_VARIANTS = {"W4A4, adaround": f"{PRECISIONS['W4A4']} --adaround",
                  "+ folded activation bias correction": f"{PRECISIONS['W4A4']} --adaround -bca --bca-folded"}


def with_baseline(frame):
    """``frame`` (one row per recipe, the first the baseline) with each row's KL and agreement
    against the baseline's: ``kl_change`` (negative: closer to FP32) and ``agreement_change``."""
    base = frame.iloc[0]
    return frame.assign(kl_change=frame["kl"] - base["kl"], agreement_change=frame["agreement"] - base["agreement"])


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args, command = parse_row_script(parser, "fold_one_variants", "fold-one-variants",
                                     "fmnist_mobilenet, 100 test images, 10 learning steps", argv)
    plan, variants = (QUICK, QUICK_VARIANTS) if args.quick else (FULL, VARIANTS)
    rows = fold_rows(plan, variants, [1], args, "fold_one_variants.py")
    if isinstance(rows, int):
        return rows
    if not rows or rows[0]["recipe"] != next(iter(variants)):
        print("fold_one_variants.py: the baseline has not run yet: run without --finished-only", file=sys.stderr)
        return 2
    columns = ["recipe", "images", "top1", "agreement", "kl", "kl_change", "agreement_change", "fp32_top1",
               "learn_seconds"]
    print(write_table(args.out, plan, "variants on the held-out photos", command, "Changes are against the first row.",
                      with_baseline(pd.DataFrame(rows)), columns, "fold_one_variants.csv"))
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
