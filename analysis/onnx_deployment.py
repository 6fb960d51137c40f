"""Simulator against an integer runtime: each model's recipe exported as ONNX QDQ (``--export-onnx``)
and run by onnxruntime on the evaluated images (``--verify-onnx``), one row (one mlflow run,
experiment ``onnx-deployment``) per model and precision, resumable like ``report.py``.

    python analysis/onnx_deployment.py            # three models, W8A8 / W4A8 (each also with --int32-bias) / W4A4
    python analysis/onnx_deployment.py --quick    # fmnist_mobilenet W8A8 on 200 images (tests)

Recipes: per-channel weights, per-tensor activations, statistics collected once (``-sm collect``)
on calibration images disjoint from the evaluated ones (Fashion-MNIST: 512 training images;
EfficientNet-Lite0: the 100 development photos held out, 400 evaluated; the 20 foolbox photos
without them). Columns: the simulator's and the runtime's top-1, their top-1 agreement, the max /
mean absolute logit difference, the largest simulator margin (top-1 logit minus the logit of the
runtime's class) among the images whose class changed (0 where none changed; nan in other rows
run before this figure existed: delete a row's JSON to run it again), and the Conv / Gemm that
onnxruntime ran as integer kernels.
Writes ``<out>/onnx_deployment.md`` and ``.csv``; the ONNX files go to ``<out>/models/``.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


from analysis.report import (RowFailed, data_flags, finished_or_run, plan_models, result_path,
                    resume_message, row_argv)
from analysis.runs import DEVELOPMENT_PHOTOS, output_folder, write_csv, write_text

MODELS = ("fmnist_resnet20", "fmnist_mobilenet", "efficientnet_lite0")
PRECISIONS = {"W8A8": "--qtype int8 -qw int8", "W8A8 --int32-bias": "--qtype int8 -qw int8 --int32-bias",
              "W8A8 --int32-bias --range-within-data": "--qtype int8 -qw int8 --int32-bias --range-within-data",
              "W4A8": "--qtype int8 -qw int4", "W4A8 --int32-bias": "--qtype int8 -qw int4 --int32-bias",
              "W4A4": "--qtype int4 -c laplace -qw int4"}
COLUMNS = {"top1": "simulator top-1", "onnx_top1": "onnxruntime top-1", "onnx_top1_agreement": "agreement %",
           "onnx_max_abs_logit_diff": "max abs logit diff", "onnx_mean_abs_logit_diff": "mean abs logit diff",
           "onnx_max_flipped_margin": "max flipped margin", "onnx_integer_kernels": "integer kernels",
           "images": "images"}


def row_flags(arch: str, precision: str, model_file: Path, development_photos: bool) -> str:
    calibration = "-cs 512" if arch.startswith("fmnist") else ("-cs 100" if development_photos else "-cs 5")
    return (f"-pcq_w {PRECISIONS[precision]} -sm collect {calibration} --export-onnx {model_file} --verify-onnx")


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None, help="default: all three")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: results/onnx_deployment; with --quick results/quick/onnx_deployment)")
    parser.add_argument("--experiment", default="onnx-deployment", help="mlflow experiment of the rows")
    parser.add_argument("--mlflow-uri", default=None, help="mlflow store (default: the CLI's)")
    parser.add_argument("--quick", action="store_true", help="fmnist_mobilenet W8A8 on 200 test images")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.out, problem = output_folder(args.out, "onnx_deployment", args.quick)
    if problem is not None:
        parser.error(problem)
    development_photos = DEVELOPMENT_PHOTOS.is_dir()
    models, notes = plan_models(args.models or (["fmnist_mobilenet"] if args.quick else list(MODELS)), development_photos)
    precisions = ["W8A8"] if args.quick else list(PRECISIONS)
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    rows = []
    with tqdm(total=len(models) * len(precisions), desc="onnx deployment", unit="row") as bar:
        for arch in models:
            data = [*data_flags(arch, development_photos, quick=False), *(["-ss", "200"] if args.quick else [])]
            for precision in precisions:
                model_file = args.out / "models" / f"{arch}.{precision.replace(' --', '.')}.onnx"
                flags = row_flags(arch, precision, model_file, development_photos)
                argv_row = row_argv(arch, flags, data, args.out / arch / "statistics")
                path = result_path(args.out, arch, precision, argv_row)
                bar.update(1)
                try:
                    result = finished_or_run(path, argv_row, args.experiment, args.mlflow_uri)
                except RowFailed as failure:
                    print(resume_message("onnx_deployment.py", failure), file=sys.stderr)
                    return 2
                if result.get("onnx_top1_agreement") == 100.0:
                    result.setdefault("onnx_max_flipped_margin", 0.0)   # no changed class: 0 by definition
                rows.append({"model": arch, "recipe": precision,
                             **{column: result.get(column, math.nan) for column in COLUMNS}})
    frame = pd.DataFrame(rows).rename(columns=COLUMNS)
    write_csv(frame, args.out / "onnx_deployment.csv")
    command = " ".join(["python analysis/onnx_deployment.py", *argv])
    text = (f"Produced by `{command}`.{' ' + ' '.join(notes) if notes else ''}\n\n"
            + frame.to_markdown(index=False, floatfmt=".3f") + "\n")
    write_text(args.out / "onnx_deployment.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
