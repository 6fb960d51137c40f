"""Ablation of the Banner et al. recipe on a real model: FP32, W8A8, naive W4A4, each method alone,
the full recipe. Writes a CSV and prints a markdown table (for docs/results.md).

    python analysis/ablation.py -a fmnist_resnet20 --csv results/ablation_fmnist_resnet20.csv
"""
import argparse
import sys
from pathlib import Path

from analysis.runs import write_csv

REPO_ROOT = Path(__file__).resolve().parent.parent

W4A4 = "-pcq_w -pcq_a --qtype int4 -qw int4"
RECIPES = {
    "FP32": "",
    "W8A8 (per-channel, laplace)": "-pcq_w -pcq_a --qtype int8 -qw int8 -c laplace",
    "W8A8 (per-channel, no clipping)": "-pcq_w -pcq_a --qtype int8 -qw int8",
    "W4A4 naive": W4A4,
    "W4A4 + ACIQ laplace": f"{W4A4} -c laplace",
    "W4A4 + laplace + bit alloc (A)": f"{W4A4} -c laplace -baa",
    "W4A4 + laplace + bit alloc (W)": f"{W4A4} -c laplace -baw",
    "W4A4 + bias corr (W)": f"{W4A4} -bcw",
    "W4A4 full recipe (laplace, -baa -baw -bcw)": f"{W4A4} -c laplace -baa -baw -bcw",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-a", "--arch", required=True)
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--extra", default="", help="flags added to every run, e.g. '-ss 2000 -b 500'")
    args = parser.parse_args(argv)
    import pandas as pd

    from inference.inference_sim import build_parser
    from inference.run import run

    rows = []
    for label, flags in RECIPES.items():
        cli = build_parser().parse_args(["-a", args.arch, *flags.split(), *args.extra.split()])
        result = run(cli)
        rows.append({"recipe": label, "flags": flags, "top1": result["top1"], "top5": result["top5"],
                     "loss": result["loss"], "images": result["images"]})
        print(f"{label:45s} {result['top1']:.2f}", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    fp32, naive = table.loc[0, "top1"], table.loc[table.recipe == "W4A4 naive", "top1"].item()
    drop = fp32 - naive
    table["recovered_of_naive_drop"] = (table.top1 - naive) / drop if drop > 0 else float("nan")
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    write_csv(table, args.csv)
    print(table[["recipe", "top1", "top5", "recovered_of_naive_drop"]].to_markdown(index=False, floatfmt=".2f"))
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
