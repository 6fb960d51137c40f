"""Top-1 against the measured bit rate: the seed's bin allocation + entropy experiment swept over
its target, beside uniform-bit recipes. Writes a CSV and one PNG per model, prints the table.

    python analysis/bitrate_vs_accuracy.py --out results/bitrate_vs_accuracy

Bin allocation: the seed README's row "bin allocation 5.3 bits, entropy" of
``seed_experiments.EXPERIMENTS`` (``-pcq_w -pcq_a -sh --qtype int4 -qw int4 -c laplace -baa -baw
-bcw -bata X -batw X -mtq -me``, per-batch statistics as in that row) with its target X replaced by
each ``--targets`` value. Uniform recipes: the same flags without ``-bata -batw -mtq`` at ``--qtype
intN -qw intN`` for each ``--uniform`` N, still with ``-me``. At 4 bits ``-baa -baw`` allocate
integer bits per channel (mean 4: the seed's full W4A4 recipe); above 4 bits they do nothing, as
in the seed. The first conv and the classifier stay at 8 bits in every row and count in the
averages.

Measured bit rate (``-me``): per layer the Shannon entropy and the Huffman code length of the
histogram of its integer codes (all channels of the layer pooled), averaged over layers weighted by
element count (``avg.entropy.*`` / ``avg.huffman.*`` of ``inference.run.run``). Per layer
H <= L < H + 1, hence also for the averages. The allocated mean bits log2(B_i) bound the entropy of
each channel's codes, not the pooled, averaged figure, and the 8-bit layers count too: a target
above the measured entropy is what these runs show, not a theorem (the script prints any row where
it fails).

Data: fmnist_resnet20 on the 10,000 Fashion-MNIST test images; efficientnet_lite0 on the 400
development photos of ``../shared/data/imagenet-sample`` not held out (100) for calibration, as
``runs.model_data_flags`` does (skipped with a reason when the folder is missing; with ``--quick``
the 20 embedded photos are used instead). ``--quick``: fmnist_resnet20 only (unless ``--models``
names others), 200 test images (8 photos for lite0), targets 3.0 and 5.3, W4A4.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

from analysis.runs import DEVELOPMENT_PHOTOS, figures, model_data_flags, output_folder, write_csv
from analysis.seed_experiments import EXPERIMENTS

ANALYSIS = Path(__file__).resolve().parent

SEED_ROW = "bin allocation 5.3 bits, entropy"
MODELS = ("fmnist_resnet20", "efficientnet_lite0")
DEFAULT_TARGETS = (3.0, 3.5, 4.0, 4.5, 5.0, 5.3, 6.0)
DEFAULT_UNIFORM = (4, 5, 6, 8)
QUICK_TARGETS = (3.0, 5.3)
QUICK_UNIFORM = (4,)
QUICK_IMAGES = {"fmnist_resnet20": 200, "efficientnet_lite0": 8}
MAX_TARGET = 8.0  # pytorch_quantizer.quantizers.config.MAX_ALLOCATION_TARGET (not imported: no torch at flag parsing)
BIN_ALLOCATION, UNIFORM = "bin allocation", "uniform bits"
COLUMNS = ["model", "kind", "recipe", "target_bits", "top1", "top5", "images", "entropy_act", "huffman_act",
           "entropy_weight", "huffman_weight", "seconds", "flags"]


def seed_base_flags() -> list[str]:
    """The seed row's flags without its bin-allocation target, -mtq and -me."""
    tokens = EXPERIMENTS[SEED_ROW].split()
    base, skip = [], False
    for token in tokens:
        if skip:
            skip = False
        elif token in ("-bata", "-batw"):
            skip = True
        elif token not in ("-mtq", "-me"):
            base.append(token)
    return base


def with_bits(flags: list[str], bits: int) -> list[str]:
    """``flags`` with --qtype and -qw set to intN."""
    out = list(flags)
    for flag in ("--qtype", "-qw"):
        out[out.index(flag) + 1] = f"int{bits}"
    return out


def recipes(targets, uniform_bits) -> list[tuple[str, str, float, list[str]]]:
    """(kind, label, target bits, flags) of every run of one model."""
    base = seed_base_flags()
    rows = [(BIN_ALLOCATION, f"bin alloc {target:g}", float(target),
             [*base, "-bata", f"{target:g}", "-batw", f"{target:g}", "-mtq", "-me"]) for target in targets]
    rows += [(UNIFORM, f"W{bits}A{bits}", float(bits), [*with_bits(base, bits), "-me"]) for bits in uniform_bits]
    return rows


def data_flags(model: str, stats_folder: str, quick: bool) -> tuple[list[str] | None, str]:
    """Data flags of ``model`` and a note; None (skip) when its images are missing."""
    if model.startswith("fmnist") or DEVELOPMENT_PHOTOS.is_dir():
        return [str(flag) for flag in model_data_flags(model, stats_folder)], ""
    if quick:
        return (["-a", model, "-p", "0", "-sf", stats_folder, "-b", "64"],
                f"{DEVELOPMENT_PHOTOS} is missing: {model} on the 20 embedded photos")
    return None, f"skipped {model}: {DEVELOPMENT_PHOTOS} is missing (the development photos)"


def measured(result: dict) -> dict:
    """``runs.figures`` plus the Huffman bit rates, without the FP32-comparison columns."""
    row = {key: value for key, value in figures(result).items() if key not in ("agreement", "kl")}
    for kind in ("act", "weight"):
        row.setdefault(f"entropy_{kind}", math.nan)
        row[f"huffman_{kind}"] = result.get(f"avg.huffman.{kind}", math.nan)
    return row


def run_model(model: str, args: argparse.Namespace) -> list[dict]:
    from tqdm import tqdm

    from inference.inference_sim import build_parser
    from inference.run import run

    rows = []
    with tempfile.TemporaryDirectory() as stats_folder:  # per-batch statistics: nothing is collected here
        data, note = data_flags(model, stats_folder, args.quick)
        if note:
            print(note)
        if data is None:
            return rows
        images = args.images
        if args.quick:
            images = min(images or QUICK_IMAGES[model], QUICK_IMAGES[model])
        subset = ["-ss", str(images)] if images else []
        for kind, label, target, flags in tqdm(recipes(args.targets, args.uniform), desc=model, unit="run"):
            argv = [*data, *flags, *subset]
            start = time.perf_counter()
            result = run(build_parser().parse_args(argv))
            rows.append({"model": model, "kind": kind, "recipe": label, "target_bits": target, **measured(result),
                         "seconds": round(time.perf_counter() - start, 1), "flags": " ".join(flags + subset)})
    return rows


def plot(table, model: str, path: Path) -> None:
    """Top-1 against the average bit rate of activations and of weights (two panels): entropy and
    Huffman as two marker styles, bin allocation as lines over its targets, uniform recipes as points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = table[table["model"] == model]
    bins = rows[rows["kind"] == BIN_ALLOCATION].sort_values("target_bits")
    uniform = rows[rows["kind"] == UNIFORM]
    figure = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(figure)
    for axes, kind, title in zip(figure.subplots(1, 2, sharey=True), ("act", "weight"), ("activation", "weight")):
        for measure, marker, style in (("entropy", "o", "-"), ("huffman", "s", "--")):
            column = f"{measure}_{kind}"
            axes.plot(bins[column], bins["top1"], style, marker=marker, color="tab:blue",
                      label=f"bin allocation, {measure}")
            axes.plot(uniform[column], uniform["top1"], linestyle="none", marker="^" if measure == "entropy" else "v",
                      markersize=8, color="tab:red", label=f"uniform bits, {measure}")
        for record in bins.to_dict("records"):
            axes.annotate(f"{record['target_bits']:g}", (record[f"entropy_{kind}"], record["top1"]),
                          textcoords="offset points", xytext=(4, -10), fontsize=7, color="tab:blue")
        for record in uniform.to_dict("records"):
            axes.annotate(record["recipe"], (record[f"entropy_{kind}"], record["top1"]),
                          textcoords="offset points", xytext=(4, 4), fontsize=7, color="tab:red")
        axes.set_xlabel(f"average bit rate of {title} codes (bits / value)")
        axes.set_title(f"{title}s")
        axes.margins(x=0.08, y=0.12)
        axes.grid(alpha=0.3)
    figure.axes[0].set_ylabel("top-1 (%)")
    figure.axes[0].legend(fontsize=7, loc="lower right")
    images = int(rows["images"].iloc[0]) if len(rows) else 0
    figure.suptitle(f"{model}: top-1 against measured bit rate ({images} images; bin-allocation targets annotated)")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)


def bits_value(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_TARGET or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text}: a bin-allocation target must be within (0, {MAX_TARGET:g}] bits")
    return value


def uniform_value(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 16:
        raise argparse.ArgumentTypeError(f"{text}: uniform bits must be within 2..16")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number of images")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None,
                        help="models (default: both; with --quick fmnist_resnet20)")
    parser.add_argument("--targets", nargs="+", type=bits_value, default=None,
                        help=f"bin-allocation targets in mean bits (default {' '.join(map(str, DEFAULT_TARGETS))}; "
                             f"--quick {' '.join(map(str, QUICK_TARGETS))})")
    parser.add_argument("--uniform", nargs="*", type=uniform_value, default=None,
                        help="bits of the uniform WnAn recipes (default 4 5 6 8; --quick 4; the flag alone: none)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: results/bitrate_vs_accuracy; with --quick results/quick/bitrate_vs_accuracy)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (see the module docstring)")
    parser.add_argument("--images", type=positive, default=None, help="evaluate at most N images per run")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.out, problem = output_folder(args.out, "bitrate_vs_accuracy", args.quick)
    if problem is not None:
        parser.error(problem)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file: name a folder")
    args.models = args.models or (["fmnist_resnet20"] if args.quick else list(MODELS))
    args.targets = args.targets or list(QUICK_TARGETS if args.quick else DEFAULT_TARGETS)
    args.uniform = args.uniform if args.uniform is not None else list(QUICK_UNIFORM if args.quick else DEFAULT_UNIFORM)
    import pandas as pd

    rows = []
    for model in dict.fromkeys(args.models):
        rows += run_model(model, args)
    args.out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=COLUMNS)
    csv = args.out / "bitrate_vs_accuracy.csv"
    write_csv(table, csv)
    print(table.drop(columns=["flags"]).to_markdown(index=False, floatfmt=".3f"))
    for model in table["model"].unique():
        path = args.out / f"{model}.png"
        plot(table, model, path)
        print(f"figure: {path}")
    print(f"table: {csv}")
    bins = table[table["kind"] == BIN_ALLOCATION]
    for kind in ("act", "weight"):
        above = bins[bins[f"entropy_{kind}"] > bins["target_bits"]]
        verdict = "holds in every bin-allocation row" if above.empty else \
            "fails in " + ", ".join(f"{r['model']} {r['recipe']} ({r[f'entropy_{kind}']:.3f})" for r in above.to_dict("records"))
        print(f"entropy_{kind} <= target: {verdict}")
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
