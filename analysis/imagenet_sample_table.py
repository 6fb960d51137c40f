"""EfficientNet-Lite0 on the ImageNet development photos: FP32 and the quantized recipes, with top-1
agreement and KL divergence against FP32 (for docs/results.md).

    python analysis/imagenet_sample_table.py --csv results/imagenet_sample_lite0.csv

Every quantized row calibrates on ``--calib-holdout`` photos drawn by ``--seed`` and evaluates the
others (statistics collected on the held-out photos, ``-sm collect``; one row takes them from
each evaluated batch, the seed's default), with ``--compare-fp32`` on the same photos. Rows marked
--improved use every departure of this project from the seed's arithmetic.
"""
import argparse
import sys
import tempfile
from pathlib import Path


from analysis.runs import DEVELOPMENT_PHOTOS, run_commands, write_csv

W8A8 = "-pcq_w --qtype int8 -qw int8"
W4A8 = "-pcq_w --qtype int8 -qw int4"
W8A4 = "-pcq_w --qtype int4 -qw int8"
W4A4 = "-pcq_w -pcq_a --qtype int4 -qw int4"
FULL = "-c laplace -baa -baw -bcw"
OFFLINE = "-sm collect"
RECIPES = {
    "FP32": "",
    "W8A8": f"{W8A8} {OFFLINE}",
    "W8A8 + weight bias corr": f"{W8A8} -bcw {OFFLINE}",
    "W8A8 + weight bias corr, --improved": f"{W8A8} -bcw {OFFLINE} --improved",
    "W4A8": f"{W4A8} {OFFLINE}",
    "W4A8 + weight bias corr": f"{W4A8} -bcw {OFFLINE}",
    "W4A8 + weight bias corr, --improved": f"{W4A8} -bcw {OFFLINE} --improved",
    "W8A4": f"{W8A4} {OFFLINE}",
    "W8A4 + laplace": f"{W8A4} -c laplace {OFFLINE}",
    "W4A4 naive (per-channel)": f"{W4A4} {OFFLINE}",
    "W4A4 full recipe": f"{W4A4} {FULL} {OFFLINE}",
    "W4A4 full recipe, per-batch statistics": f"{W4A4} {FULL}",
    "W4A4 full recipe, --improved": f"{W4A4} {FULL} {OFFLINE} --improved",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-a", "--arch", default="efficientnet_lite0")
    parser.add_argument("--data", type=Path, default=DEVELOPMENT_PHOTOS, help="folder with val/<wnid>/ photos")
    parser.add_argument("--holdout", type=int, default=100, help="calibration photos held out (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-b", "--batch-size", type=int, default=64)
    parser.add_argument("--csv", type=Path, required=True)
    args = parser.parse_args(argv)
    import pandas as pd

    with tempfile.TemporaryDirectory() as stats_folder:
        common = ["-a", args.arch, "--data", args.data, "--calib-holdout", args.holdout, "--seed", args.seed,
                  "-b", args.batch_size, "-p", "0", "-sf", stats_folder]
        commands = {label: [*common, *flags.split(), *(["--compare-fp32"] if flags else [])]
                    for label, flags in RECIPES.items()}
        table = pd.DataFrame(run_commands(commands, "recipes"))
    table.loc[table.recipe == "FP32", ["agreement", "kl"]] = (100.0, 0.0)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    write_csv(table, args.csv)
    print(table[["recipe", "top1", "top5", "agreement", "kl"]].to_markdown(index=False, floatfmt=".4g"))
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
