"""EfficientNet-Lite0 on the ImageNet development photos: FP32 and the quantized recipes, with top-1
agreement and KL divergence against FP32 (for the README).

    python analysis/imagenet_sample_table.py --data ../shared/data/imagenet-sample --csv results/imagenet_sample_lite0.csv

Every quantized row calibrates on ``--calib-holdout`` photos drawn by ``--seed`` and evaluates the
others (statistics collected on the held-out photos, ``-sm collect``; the last row takes them from
each evaluated batch, the seed's default), with ``--compare-fp32`` on the same photos.
"""
import argparse
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

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
    "W4A8": f"{W4A8} {OFFLINE}",
    "W4A8 + laplace + weight bias corr": f"{W4A8} -c laplace -bcw {OFFLINE}",
    "W8A4": f"{W8A4} {OFFLINE}",
    "W8A4 + laplace": f"{W8A4} -c laplace {OFFLINE}",
    "W4A4 naive (per-channel)": f"{W4A4} {OFFLINE}",
    "W4A4 full recipe": f"{W4A4} {FULL} {OFFLINE}",
    "W4A4 full recipe, per-batch statistics": f"{W4A4} {FULL}",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-a", "--arch", default="efficientnet_lite0")
    parser.add_argument("--data", type=Path, required=True, help="folder with val/<wnid>/ photos")
    parser.add_argument("--holdout", type=int, default=100, help="calibration photos held out (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-b", "--batch-size", type=int, default=64)
    parser.add_argument("--csv", type=Path, required=True)
    args = parser.parse_args(argv)
    import pandas as pd
    from tqdm import tqdm

    from inference.inference_sim import build_parser, run

    rows = []
    with tempfile.TemporaryDirectory() as stats_folder:
        for label, flags in tqdm(RECIPES.items(), desc="recipes", unit="run"):
            common = ["-a", args.arch, "--data", str(args.data), "--calib-holdout", str(args.holdout), "--seed",
                      str(args.seed), "-b", str(args.batch_size), "-p", "0", "-sf", stats_folder]
            compare = ["--compare-fp32"] if flags else []
            result = run(build_parser().parse_args([*common, *flags.split(), *compare]))
            rows.append({"recipe": label, "flags": flags, "top1": result["top1"], "top5": result["top5"],
                         "agreement": result.get("top1_agreement", 100.0), "kl": result.get("mean_kl", 0.0),
                         "images": result["images"], "calibration": result.get("calibration", "")})
    table = pd.DataFrame(rows)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)
    print(table[["recipe", "top1", "top5", "agreement", "kl"]].to_markdown(index=False, floatfmt=(".2f", ".2f", ".2f",
                                                                                                  ".2f", ".4f")))
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
