"""Uniform against mixed-precision weights (issue 26): top-1 and agreement with FP32 against the mean
weight bits spent (every quantized layer counted, the first conv and the classifier kept at 8 bits)
and against GBOPs, with nearest rounding and with block reconstruction. 8-bit activations,
per-channel weights with bias correction (``--qtype int8 -qw intN -pcq_w -bcw``). Each row one mlflow
run (experiment ``mixed-precision``), resumable like ``report.py``.

    python analysis/mixed_precision.py                       # efficientnet_lite0 and fmnist_mobilenet
    python analysis/mixed_precision.py --quick               # fmnist_mobilenet, 200 test images (tests)

The sensitivity of each model is measured once through the library (``pytorch_quantizer.sensitivity``)
on the calibration images the CLI would use (EfficientNet-Lite0: the 100 development photos held
out of the 400 evaluated; Fashion-MNIST: its training images), its table and figure written beside
the results; each mixed row's plan is chosen from it for the budget (``pytorch_quantizer.mixed_precision``),
written as a plan file and run by the CLI with ``--mp-plan``. The budgets are the mean weight bits
the uniform rows spend (3-, 4- and 5-bit weights) and 4.0. Writes ``<out>/<model>.md``,
``<out>/<model>.sensitivity.csv`` / ``.png``, ``<out>/mixed_precision.csv`` and ``<out>/mixed_precision.png``.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from analysis.report import (EMPTY_RESULT, RowFailed, data_flags, figures, finished_or_run, plan_models, result_path,
                             resume_message, row_argv)
from analysis.runs import DEVELOPMENT_PHOTOS, parse_row_script, write_csv, write_model_csv, write_text

MODELS = ("efficientnet_lite0", "fmnist_mobilenet")
RECIPE = "--qtype int8 -qw int{bits} -pcq_w -bcw"
UNIFORM_BITS = (2, 3, 4, 5, 6)
LEARNED_BITS = (3, 4)         # uniform rows also run with block reconstruction, and mixed ones at their spend
FIXED_BUDGETS = (4.0,)
BLOCK = {"efficientnet_lite0": "-cs 100 --recon-iters 200", "fmnist_mobilenet": "-cs 256 --recon-iters 500"}
SENSITIVITY_IMAGES = {"efficientnet_lite0": 100, "fmnist_mobilenet": 256}
QUICK = {"uniform": (4,), "learned": (), "images": 16, "bits": (2, 4, 8)}


def uniform_rows(arch: str, quick: bool) -> dict[str, str]:
    rows = {"FP32": ""}
    for bits in QUICK["uniform"] if quick else UNIFORM_BITS:
        rows[f"uniform {bits}-bit weights, nearest"] = RECIPE.format(bits=bits)
    for bits in () if quick else LEARNED_BITS:
        rows[f"uniform {bits}-bit weights, block"] = f"{RECIPE.format(bits=bits)} --reconstruct block {BLOCK[arch]}"
    return rows


def budgets(uniform: dict[str, dict], quick: bool) -> list[tuple[float, bool]]:
    """(mean weight bits, also with block reconstruction) of the mixed rows: what the uniform rows
    spend, rounded down to 4 decimals so that the plan fits, and the fixed budgets."""
    chosen = []
    for bits in QUICK["uniform"] if quick else UNIFORM_BITS[1:4]:
        spent = uniform[f"uniform {bits}-bit weights, nearest"]["mean_weight_bits"]
        chosen.append((math.floor(spent * 1e4) / 1e4, bits in LEARNED_BITS and not quick))
    return sorted(chosen + [(value, False) for value in (() if quick else FIXED_BUDGETS)])


def sensitivity_report(arch: str, argv: list[str], out: Path, quick: bool):
    """The model's sensitivity table, measured once (read back from ``<out>/<model>.sensitivity.csv``
    when it is there), on the CLI's calibration split of ``argv``."""
    import pandas as pd
    import torch

    import pytorch_quantizer as pq
    from inference.data import LoaderOptions
    from inference.inference_sim import build_parser
    from inference.models import create_model
    from inference.quant_flags import quant_config_from_args
    from inference.run import prepare_run_data
    from inference.validation import validate
    from pytorch_quantizer.api.analysis import read_report

    args = build_parser().parse_args(argv)
    spec, _ = validate(args)
    config = quant_config_from_args(args, spec)
    csv = out / f"{arch}.sensitivity.csv"
    torch.manual_seed(args.seed)
    model = create_model(spec, args.weights).eval()
    data = prepare_run_data(args, spec)
    calibration = data.calibration_loader(LoaderOptions(args.batch_size, args.workers, seed=args.seed)).loader
    images = QUICK["images"] if quick else SENSITIVITY_IMAGES[arch]
    bits = QUICK["bits"] if quick else (2, 3, 4, 5, 6, 8)
    if csv.exists():
        return model, config, read_report(pd.read_csv(csv), model, config, next(iter(calibration))[0][:1])
    report = pq.sensitivity(model, config, calibration, bits=bits, kinds=("weights",), images=images)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(report.to_frame(), csv)
    report.plot(out / f"{arch}.sensitivity.png")
    return model, config, report


def plan_file(arch: str, budget: float, argv: list[str], out: Path, quick: bool, state: dict) -> Path:
    """The plan of ``budget`` for ``arch`` as a file the CLI reads with --mp-plan (chosen once)."""
    import pytorch_quantizer as pq
    from inference.precision import plan_recipe
    from pytorch_quantizer.formats.fingerprint import weights_fingerprint
    from pytorch_quantizer.formats.plan_io import save_plan

    path = out / arch / f"plan.{budget:.4f}.pt"
    if path.exists():
        return path
    if "report" not in state:
        state["model"], state["config"], state["report"] = sensitivity_report(arch, argv, out, quick)
    plan = pq.mixed_precision(state["report"], pq.Budget(weight_bits=budget))
    path.parent.mkdir(parents=True, exist_ok=True)
    recipe = plan_recipe(state["config"], pq.Methods()) | {"budget": {"weight_bits": budget},
                                                           "candidates": sorted({row.bits for row in state["report"].rows})}
    save_plan(path, plan, arch, weights_fingerprint(state["model"]), recipe)
    return path


def row_figures(label: str, result: dict) -> dict:
    return figures(label, result) | {"mean_weight_bits": result.get("mean_weight_bits", 32.0),
                                     "gbops": result.get("gbops", math.nan),
                                     "learn_seconds": result.get("rounding_seconds", 0.0)}


def run_rows(arch, rows, data, args, bar) -> dict[str, dict]:
    results = {}
    for label, flags in rows.items():
        argv = row_argv(arch, flags, data, args.out / arch / "statistics")
        path = result_path(args.out, arch, label, argv)
        bar.update(1)
        if path.exists() or not args.finished_only:
            results[label] = finished_or_run(path, argv, args.experiment, args.mlflow_uri)
    return results


def run_model(arch: str, args: argparse.Namespace, development_photos: bool, bar) -> list[dict]:
    data = [*data_flags(arch, development_photos, quick=False), *(["-ss", "200"] if args.quick else [])]
    uniform = run_rows(arch, uniform_rows(arch, args.quick), data, args, bar)
    if any(f"uniform {bits}-bit weights, nearest" not in uniform for bits in UNIFORM_BITS[1:4] if not args.quick):
        return [row_figures(label, result) for label, result in uniform.items()]
    state, mixed = {}, {}
    base = row_argv(arch, RECIPE.format(bits=4), data, args.out / arch / "statistics")
    for budget, learned in budgets(uniform, args.quick):
        plan = plan_file(arch, budget, base, args.out, args.quick, state)
        mixed[f"mixed {budget:.2f} bits, nearest"] = f"{RECIPE.format(bits=4)} --mp-plan {plan}"
        if learned:
            mixed[f"mixed {budget:.2f} bits, block"] = f"{RECIPE.format(bits=4)} --mp-plan {plan} --reconstruct block {BLOCK[arch]}"
    bar.total += len(mixed)
    results = uniform | run_rows(arch, mixed, data, args, bar)
    return [row_figures(label, result) for label, result in results.items()]


def plot(frame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(frame.model))
    figure, axes = plt.subplots(len(models), 2, figsize=(11, 3.6 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        rows = frame[(frame.model == model) & (frame.recipe != "FP32")]
        fp32 = frame[(frame.model == model) & (frame.recipe == "FP32")].top1
        for column, x in enumerate(("mean_weight_bits", "gbops")):
            axis = axes[row, column]
            for kind, marker in (("uniform", "o"), ("mixed", "s")):
                for rounding, style in (("nearest", "-"), ("block", "--")):
                    chosen = rows[rows.recipe.str.startswith(kind) & rows.recipe.str.endswith(rounding)].sort_values(x)
                    if len(chosen):
                        axis.plot(chosen[x], chosen.top1, style, marker=marker, label=f"{kind}, {rounding}")
            if len(fp32):
                axis.axhline(float(fp32.iloc[0]), color="gray", linewidth=0.8, label="FP32")
            axis.set_xlabel("mean weight bits (every quantized layer)" if x == "mean_weight_bits" else "GBOPs per image")
            axis.set_ylabel("top-1 (%)")
            axis.set_title(model)
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None,
                        help="default: both (with --quick: fmnist_mobilenet)")
    args, command = parse_row_script(parser, "mixed_precision", "mixed-precision",
                                     "fmnist_mobilenet: FP32, uniform 4-bit and its mixed row on 200 test images", argv)
    models, notes = plan_models(args.models or (["fmnist_mobilenet"] if args.quick else list(MODELS)),
                                DEVELOPMENT_PHOTOS.is_dir())
    for note in notes:
        print(note)
    args.out.mkdir(parents=True, exist_ok=True)
    tables = []
    with tqdm(total=sum(len(uniform_rows(arch, args.quick)) for arch in models), desc="mixed precision", unit="row") as bar:
        for arch in models:
            try:
                table = pd.DataFrame(run_model(arch, args, DEVELOPMENT_PHOTOS.is_dir(), bar),
                                     columns=list(row_figures("", EMPTY_RESULT)))
            except RowFailed as failure:
                print(resume_message("mixed_precision.py", failure), file=sys.stderr)
                return 2
            columns = ["recipe", "mean_weight_bits", "gbops", "top1", "agreement", "kl", "learn_seconds", "seconds"]
            text = f"### {arch}\n\nProduced by `{command}`.\n\n" + table[columns].to_markdown(index=False, floatfmt=".2f")
            write_text(args.out / f"{arch}.md", text + "\n")
            tables.append(table.assign(model=arch))
            print(text)
    frame = pd.concat(tables)
    write_model_csv(frame, args.out / "mixed_precision.csv")
    plot(frame, args.out / "mixed_precision.png")
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
