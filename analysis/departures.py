"""The effect of each departure from the seed's arithmetic (for the table in docs/seed-arithmetic.md).

    python analysis/departures.py --csv results/departures.csv

For every model, each option is added to a base recipe of the seed's arithmetic that exercises it,
and top-1 and top-1 agreement with FP32 are compared with the base on the same images:
efficientnet_lite0 on the development photos (100 held out for calibration, 400 evaluated) and
fmnist_resnet20 / fmnist_mobilenet on their 10,000 test images (calibration: training images).
"""
import argparse
import sys
import tempfile
from pathlib import Path


from analysis.runs import model_data_flags, run_commands, write_csv

W4A4_FULL = "-pcq_w -pcq_a --qtype int4 -qw int4 -c laplace -baa -baw -bcw"
BASES = {
    "full": f"{W4A4_FULL} -sm collect",
    "naive per-tensor": "-pcq_w --qtype int4 -qw int4",
    "full + bca": f"{W4A4_FULL} -sm collect -bca",
}
OPTIONS = {  # option flags -> the base they are measured on
    "--exact-aciq": "full",
    "--rectified-aciq": "full",
    "--range-within-data": "full",
    "--exact-bit-budget": "full",
    "--zero-bit-zero": "full",
    "--calibrate-quantized": "full",
    "--act-quant-point input": "full",
    "--batch-range": "naive per-tensor",
    "--bca-folded": "full + bca",
    "--weight-clipping laplace": "full",
    "--improved": "full",
    "--improved --bca-folded": "full + bca",
}
MODELS = ("efficientnet_lite0", "fmnist_resnet20", "fmnist_mobilenet")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--csv", type=Path, required=True)
    args = parser.parse_args(argv)
    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory() as stats_folder:
        for arch in args.models:
            data = [*model_data_flags(arch, stats_folder), "--compare-fp32"]
            commands = {f"base: {name}": [*data, *flags.split()] for name, flags in BASES.items()}
            commands |= {option: [*data, *BASES[base].split(), *option.split()] for option, base in OPTIONS.items()}
            measured = {row["recipe"]: row for row in run_commands(commands, arch)}
            for option, base in OPTIONS.items():
                before, after = measured[f"base: {base}"], measured[option]
                rows.append({"model": arch, "option": option, "base": base, "base_top1": before["top1"],
                             "top1": after["top1"], "top1_change": after["top1"] - before["top1"],
                             "base_agreement": before["agreement"], "agreement": after["agreement"],
                             "agreement_change": after["agreement"] - before["agreement"], "images": after["images"]})
    table = pd.DataFrame(rows)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    write_csv(table, args.csv)
    summary = table.pivot(index="option", columns="model", values=["top1_change", "agreement_change"])
    print(summary.to_markdown(floatfmt="+.2f"))
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
