"""The seed README's experiments on EfficientNet-Lite0 and the development photos, with the seed's
arithmetic and with every departure of this project (--improved), side by side (for docs/seed-arithmetic.md).

    python analysis/seed_experiments.py --csv results/seed_experiments_lite0.csv

The seed's commands (ResNet-50 on ImageNet val) with -a efficientnet_lite0 and -b 64; the photos are
split once: 100 held out for calibration (seed 0), 400 evaluated, for every row. Offline statistics
are collected the seed's way: 32 single-image batches at 8 bits (-b 1 --qtype int8 -sm collect -cs 32).
"""
import argparse
import sys
import tempfile
from pathlib import Path


from analysis.runs import model_data_flags, run_commands, write_csv

W4A4 = "-pcq_w -pcq_a -sh --qtype int4 -qw int4"
EXPERIMENTS = {
    "W4A4 naive": W4A4,
    "W4A4 + ACIQ + bit alloc (A, W) + bias corr (W)": f"{W4A4} -c laplace -baa -baw -bcw",
    "the same with offline statistics": "-pcq_w -pcq_a --qtype int4 -qw int4 -c laplace -baa -baw -bcw -sm use",
    "4-bit activations, 2-std clipping": "-pcq_w -pcq_a -sh --qtype int4 -c 2std",
    "ACIQ layer-wise (offline statistics)": "--qtype int4 -c laplace -sm use",
    "bin allocation 5.3 bits, entropy": f"{W4A4} -c laplace -baa -baw -bcw -bata 5.3 -batw 5.3 -mtq -me",
}
COLLECT = "--qtype int8 -sm collect -cs 32"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-a", "--arch", default="efficientnet_lite0")
    parser.add_argument("--csv", type=Path, required=True)
    args = parser.parse_args(argv)
    import pandas as pd

    rows = []
    for arithmetic, extra in (("seed", []), ("improved", ["--improved"])):
        with tempfile.TemporaryDirectory() as stats_folder:
            data = model_data_flags(args.arch, stats_folder)
            commands = {"collect statistics": [*data, *COLLECT.split(), "-b", "1", "-ss", "1", *extra]}
            commands |= {label: [*data, *flags.split(), *extra, "--compare-fp32"] for label, flags in EXPERIMENTS.items()}
            for row in run_commands(commands, f"{arithmetic} arithmetic")[1:]:
                rows.append({"arithmetic": arithmetic, **row})
    table = pd.DataFrame(rows)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    write_csv(table, args.csv)
    wide = table.pivot(index="recipe", columns="arithmetic", values=["top1", "agreement"]).reindex(list(EXPERIMENTS))
    print(wide.to_markdown(floatfmt=".2f"))
    entropy = table.dropna(subset=["entropy_act"]) if "entropy_act" in table else table.iloc[0:0]
    for record in entropy.to_dict("records"):
        print(f"{record['arithmetic']}: Average bit rate: avg.entropy.act - {record['entropy_act']:.4f}")
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
