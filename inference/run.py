"""One evaluation of the CLI (or one row of a -ep sweep): the flags converted once (``settings_flags``),
the model and data prepared, FP32 evaluated or the library's recipe simulated, and the figures
gathered into the results dict that is printed, written as JSON and logged to mlflow."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from inference.validation import calibration_choice, calibrates, resolve_device, validate


def prepare_run_data(args: argparse.Namespace, spec):
    """The evaluated and calibration images: folders scanned and checked before any run starts."""
    from inference.data import prepare_data

    return prepare_data(spec, args.data, calibration_choice(args), args.seed)


def data_warnings(args: argparse.Namespace) -> list[str]:
    """Data flags that this run takes but does not use: one sentence each."""
    if args.calib_data is not None and not calibrates(args):
        return ["--calib-data: this run calibrates nothing (no -sm collect, -ac or -bca); the folder is only recorded"]
    return []


def run(args: argparse.Namespace, validated=None, process=None, device=None, data=None) -> dict:
    """Evaluate per ``args``; ``validated`` is what ``validate(args)`` returned and ``data`` what
    ``prepare_run_data`` returned, if already called. Under torchrun (``process``) every process
    calls it on its share of the batches; the returned figures are the totals over all processes."""
    import pandas as pd
    import torch

    from inference.data import LoaderOptions, make_loader
    from inference.distributed import ProcessInfo
    from inference.inspection import evaluate_inspected
    from inference.models import create_model
    from inference.output_files import write_csv_atomically
    from inference.precision import settle_precision
    from inference.precision_flags import precision_settings
    from inference.settings_flags import evaluation_from_args, methods_from_args, recipe_files_from_args
    from inference.simulate import simulate
    from pytorch_quantizer.quantizers import backend

    process = process or ProcessInfo()
    spec, config = validated or validate(args)
    backend.set_backend(args.backend)
    device = device or resolve_device(args.device, args.device_ids, process)
    torch.manual_seed(args.seed)
    options = LoaderOptions(args.batch_size, args.workers, args.subset, args.shuffle, args.seed, process,
                            args.skip_bad_images)
    data = data or prepare_run_data(args, spec)
    loader = make_loader(data.evaluation, options)
    model = create_model(spec, args.weights, args.random_init).to(device)
    evaluation = evaluation_from_args(args)
    start = time.perf_counter()
    extra = data.calibration_record()
    if config is None:
        result, _, files = evaluate_inspected(model, loader, device, args.print_freq, process, evaluation.inspection)
        extra |= files
    else:
        methods, files = methods_from_args(args), recipe_files_from_args(args)
        settings = precision_settings(args)
        if settings is not None:
            config, precision = settle_precision(model, config, methods, files, settings, data, options, device)
            extra |= precision
        simulation = simulate(model, config, methods, files, data, loader, device, options, evaluation)
        result = simulation.evaluation
        extra |= simulation.files | simulation.costs
        if args.report_csv is not None:
            write_csv_atomically(args.report_csv, pd.DataFrame(simulation.layer_report))
            extra["report_csv"] = str(args.report_csv)
        if simulation.fidelity is not None:
            fidelity = simulation.fidelity
            extra.update({"fp32_top1": fidelity.reference.top1, "fp32_top5": fidelity.reference.top5,
                          "drop": fidelity.reference.top1 - result.top1, "top1_agreement": fidelity.top1_agreement,
                          "mean_kl": fidelity.mean_kl})
        if simulation.calibration is not None:
            extra |= {"calibration": simulation.calibration, "calibration_images": simulation.calibration_images,
                      "calibration_overlaps_eval": simulation.calibration_overlaps_eval}
        if simulation.rounding is not None:
            extra |= simulation.rounding
        extra |= simulation.onnx
        if simulation.equalization is not None:
            extra |= {f"equalization.{key}": value for key, value in simulation.equalization.items()}
        if simulation.qat is not None:
            extra |= {"qat_epochs": args.qat_epochs, "qat_final_loss": simulation.qat.losses[-1],
                      "qat_train_top1": simulation.qat.epoch_accuracy[-1], "qat_losses": simulation.qat.losses}
        extra |= {"statistics": simulation.statistics, "statistics_file": simulation.statistics_file,
                  **{key: value for key, value in simulation.entropy.items() if key.startswith("avg.")}}
    if args.skip_bad_images:
        skipped = list(getattr(loader, "skipped", []))
        calibration_skipped = simulation.calibration_skipped if config is not None else []
        counts = process.sum(torch.tensor([len(skipped), len(calibration_skipped)]))
        extra |= {"skipped_images": int(counts[0]), "skipped_calibration_images": int(counts[1]),
                  "skipped_examples": (skipped + calibration_skipped)[:3]}
    weights = "random" if args.random_init else str(args.weights or spec.default_weights())
    return {
        "arch": args.arch, "top1": result.top1, "top5": result.top5, "loss": result.loss, "images": result.images,
        "device": str(device), "processes": process.world_size, "weights": weights,
        "data": str(args.data) if args.data else "default",
        "batch_size": args.batch_size, "subset": args.subset, "shuffle": args.shuffle, "seed": args.seed,
        "quantization": describe(config), "backend": backend.active_backend() if config else "none (fp32)", **extra,
        "eval_seconds": round(time.perf_counter() - start, 3),
    }


def run_sweep(args: argparse.Namespace, rows: dict, process, device, data=None) -> tuple[dict, "pd.DataFrame"]:  # noqa: F821
    """-ep: every precision of ``validate_sweep`` in turn, on the same ``data``; the CSV is written by rank 0."""
    from inference.output_files import write_csv_atomically
    from inference.sweep import sweep_table

    results = {precision: run(row, validated, process, device, data) for precision, (row, validated) in rows.items()}
    table = sweep_table(results)
    summary = {"arch": args.arch, "images": results["fp32"]["images"], "device": str(device),
               "processes": process.world_size, "backend": results["int8"]["backend"],
               "quantization": results["int4"]["quantization"]}
    for record in table.to_dict("records"):
        summary.update({f"{key}.{record['precision']}": record[key] for key in ("top1", "top5", "loss", "drop")})
    if process.is_main:
        path = args.sweep_csv or Path(f"precision_sweep_{args.arch}.csv")
        write_csv_atomically(path, table)
        summary["sweep_csv"] = str(path)
    return summary, table


def describe(config) -> dict | str:
    """The resolved recipe as plain data (for the results JSON)."""
    if config is None:
        return "fp32"
    from pytorch_quantizer.quantizers.config import config_as_dict

    return config_as_dict(config)


