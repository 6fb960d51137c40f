"""PTQ inference simulator: evaluate a pretrained CNN (top-1 / top-5) on real images.

    python inference/inference_sim.py -a efficientnet_lite0
    python inference/inference_sim.py -a fmnist_resnet20 -b 500
    python inference/inference_sim.py -a resnet50 --data /path/to/imagenet --weights resnet50.pth
    torchrun --standalone --nproc_per_node=2 inference/inference_sim.py -a fmnist_resnet20 --qtype int4
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.errors import UserError  # noqa: E402
from inference.models import get_model_spec, list_models  # noqa: E402
from inference.qat_flags import add_qat_flags  # noqa: E402
from inference.quant_flags import add_quantization_flags  # noqa: E402
from inference.seed_compat import add_rejected_seed_flags, translate_seed_long_names  # noqa: E402
from inference.onnx_flags import add_onnx_flags  # noqa: E402
from inference.weight_method_flags import add_weight_method_flags  # noqa: E402
from inference.validation import calibration_choice, calibrates, resolve_device, validate  # noqa: E402

DEFAULT_ARCH = "efficientnet_lite0"


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (no usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


MAX_SEED = 2 ** 63 - 1  # torch.Generator.manual_seed takes a signed or unsigned 64-bit integer


def seed_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be within 0..2^63-1, got {value}")
    return value


def experiment_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a non-empty experiment name")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="inference_sim.py", description="Evaluate a pretrained CNN on real images.")
    parser.add_argument("-a", "--arch", default=DEFAULT_ARCH, choices=list_models(), metavar="ARCH",
                        help=f"model from the registry: {', '.join(list_models())} (default: {DEFAULT_ARCH})")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=256, help="images per batch (default: 256)")
    parser.add_argument("-j", "--workers", type=non_negative_int, default=2,
                        help="threads decoding image files (in-memory Fashion-MNIST needs none; default: 2)")
    parser.add_argument("--data", type=Path, default=None,
                        help="ImageNet: folder with val/<class>/<image> (class folders named by WordNet id, any subset "
                             "of classes; or all classes, labelled in sorted order) and optionally train/ for "
                             "calibration; Fashion-MNIST: folder with the idx files. Default: the 20 ImageNet photos "
                             "shipped in foolbox, or /usr/share/datasets/fashion-mnist")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="skip image files that cannot be decoded (counted in the results and a warning) "
                             "instead of stopping at the first one")
    parser.add_argument("--calib-data", type=Path, default=None, metavar="DIR",
                        help="calibration images (-sm collect, -ac, -bca): every image file under DIR, searched "
                             "recursively, labels ignored; never the evaluated folder (ImageNet models)")
    parser.add_argument("--calib-holdout", type=positive_int, default=None, metavar="N",
                        help="calibrate on N images of the evaluated set drawn by --seed and evaluate the other ones")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--device_ids", "--device-ids", dest="device_ids", type=non_negative_int, nargs="+", default=None,
                        metavar="ID", help="CUDA devices: process k of torchrun uses cuda:ID[k]; one process takes one ID "
                                           "(several GPUs: torchrun --nproc_per_node=N)")
    parser.add_argument("--seed", type=seed_value, default=0, help="seed of the shuffled order and of torch (default: 0)")
    parser.add_argument("-ss", "--subset", type=positive_int, default=None, help="evaluate only the first N images of the order")
    parser.add_argument("-sh", "--shuffle", action="store_true", help="evaluate in a shuffled order (seeded by --seed)")
    parser.add_argument("-p", "--print-freq", type=non_negative_int, default=10,
                        help="show the running Prec@1/Prec@5 on the progress bar every N batches (0: never; default: 10)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="state dict file to load instead of the registry's weights (loaded with weights_only=True)")
    parser.add_argument("--random-init", action="store_true", help="random weights: architecture-only runs (tests, timing)")
    parser.add_argument("--results-json", type=Path, default=None,
                        help="write {arch, top1, top5, loss, images, ...} to this file")
    parser.add_argument("--compare-fp32", action="store_true",
                        help="also evaluate the FP32 model on the same images and report fp32_top1/fp32_top5/drop")
    parser.add_argument("--report-csv", type=Path, default=None,
                        help="per-layer report of the quantized model (tensor, bits, clipping value, MSE, SQNR, entropy) as CSV")
    parser.add_argument("-mlexp", "--mlf-experiment", dest="mlexp", type=experiment_name, default=None,
                        help="mlflow experiment of this run (default: the arch)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="mlflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite under mlruns/ in the repository)")
    parser.add_argument("-ep", "--eval-precision", dest="ep", action="store_true",
                        help="evaluate the recipe at fp32 and int8 .. int4 (activations and weights); table to --sweep-csv")
    parser.add_argument("--sweep-csv", type=Path, default=None,
                        help="CSV of -ep (default: precision_sweep_<arch>.csv in the current folder)")
    parser.add_argument("-ms", "-m", "--measure-stats", dest="ms", action="store_true",
                        help="measure per-layer statistics of the Conv/Linear inputs during evaluation and save them "
                             "as <arch>.activation_stats.csv in -mf")
    parser.add_argument("-mf", "--measure-stats-folder", dest="mf", type=Path, default=None,
                        help="folder of -ms (default: the statistics folder -sf)")
    parser.add_argument("-dd", "--dump-dir", dest="dd", type=Path, default=None,
                        help="save the first evaluated batch's images, logits and every Conv/Linear input, quantized "
                             "input and output to DIR/<arch>.batch0.pt (tensors only)")
    parser.add_argument("--backend", choices=("auto", "kernels", "reference"), default="auto",
                        help="fake-quantization arithmetic: the fused C++/CUDA kernels, the pure-PyTorch reference, "
                             "or auto (kernels when built, else reference with a warning; default)")
    add_quantization_flags(parser, positive_int)
    add_qat_flags(parser, positive_int, non_negative_int)
    add_weight_method_flags(parser, positive_int)
    add_onnx_flags(parser)
    add_rejected_seed_flags(parser)
    return parser


def prepare_run_data(args: argparse.Namespace, spec):
    """The evaluated and calibration images: folders scanned and checked before any run starts."""
    from inference.data import prepare_data

    if args.calib_data is not None and not calibrates(args):
        logging.getLogger(__name__).warning("--calib-data: this run calibrates nothing (no -sm collect, -ac or -bca); "
                                            "the folder is only recorded")
    return prepare_data(spec, args.data, calibration_choice(args), args.seed)


def inspection_for(args: argparse.Namespace):
    from inference.inspection import Inspection

    stats_csv = dump_file = None
    if args.ms:
        folder = args.mf or args.sf
        folder.mkdir(parents=True, exist_ok=True)
        stats_csv = folder / f"{args.arch}.activation_stats.csv"
    if args.dd is not None:
        args.dd.mkdir(parents=True, exist_ok=True)
        dump_file = args.dd / f"{args.arch}.batch0.pt"
    return Inspection(stats_csv, dump_file)


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
    from inference.simulate import simulate
    from pytorch_quantizer import backend

    process = process or ProcessInfo()
    spec, config = validated or validate(args)
    backend.set_backend(args.backend)
    device = device or resolve_device(args.device, args.device_ids, process)
    torch.manual_seed(args.seed)
    options = LoaderOptions(args.batch_size, args.workers, args.subset, args.shuffle, args.seed, process,
                            args.skip_bad_images)
    data = data or prepare_run_data(args, spec)
    loader = make_loader(data.evaluation, options)
    model = create_model(args.arch, args.weights, args.random_init).to(device)
    inspection = inspection_for(args)
    start = time.perf_counter()
    extra = data.calibration_record()
    if config is None:
        result, _, files = evaluate_inspected(model, loader, device, args.print_freq, process, inspection)
        extra |= files
    else:
        simulation = simulate(args, model, data, loader, config, device, options,
                              measure_error=args.report_csv is not None, inspection=inspection,
                              compare_fp32=args.compare_fp32)
        result = simulation.evaluation
        extra |= simulation.files
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
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(config), default=lambda value: getattr(value, "value", str(value))))


def flatten_quantization(quantization) -> dict:
    from inference.tracking import flatten

    return flatten("quantization", quantization if isinstance(quantization, dict) else {"recipe": quantization}, {})


def results_table(results: dict) -> "pd.DataFrame":  # noqa: F821
    """The final one-row table of a run (printed by main)."""
    import pandas as pd

    recipe = results["quantization"]
    if isinstance(recipe, dict):
        parts = [f"{kind[0].upper()}{recipe[kind]['bits']}" for kind in ("weights", "activations") if recipe.get(kind)]
        recipe = "".join(parts) or "fp32"
    row = {"arch": results["arch"], "recipe": recipe, "images": results["images"], "top1": results["top1"],
           "top5": results["top5"], "loss": results["loss"]}
    if "fp32_top1" in results:
        row.update(fp32_top1=results["fp32_top1"], drop=results["drop"], agreement=results["top1_agreement"],
                   kl=results["mean_kl"])
    row.update(backend=results["backend"], processes=results["processes"], seconds=results["eval_seconds"])
    return pd.DataFrame([row])


def print_results(results: dict, table) -> None:
    if "top1" not in results:
        print(f"{results['arch']}: precision sweep on {results['images']} images, written to {results['sweep_csv']}")
        print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
        return
    print(f"{results['arch']}: {results['images']} images, weights {results['weights']}, device {results['device']}")
    if "statistics" in results:
        print(f"activation statistics: {results['statistics']}; backend: {results['backend']}")
    for kind in ("act", "weight"):
        if f"avg.entropy.{kind}" in results:
            print(f"Average bit rate: avg.entropy.{kind} - {results[f'avg.entropy.{kind}']:.4f} "
                  f"(Huffman {results[f'avg.huffman.{kind}']:.4f})")
    if results.get("calibration"):
        print(f"calibration: {results['calibration_images']} images from {results['calibration']}"
              + (" (overlapping the evaluated images)" if results["calibration_overlaps_eval"] else ""))
    if "fp32_top1" in results:
        print(f"FP32 on the same images: Prec@1 {results['fp32_top1']:.3f} Prec@5 {results['fp32_top5']:.3f} "
              f"(drop {results['drop']:.3f}); top-1 agreement with FP32 {results['top1_agreement']:.3f} %, "
              f"mean KL(FP32 || quantized) {results['mean_kl']:.5f} nats")
    if "onnx_file" in results:
        print(f"ONNX QDQ model: {results['onnx_file']} ({results['onnx_quantized_tensors']} quantized tensors; "
              f"encodings {results['onnx_encodings']})")
    if "onnx_top1" in results:
        print(f"onnxruntime on the same images: Prec@1 {results['onnx_top1']:.3f} Prec@5 {results['onnx_top5']:.3f} "
              f"(simulator {results['onnx_simulator_top1']:.3f}); top-1 agreement with the simulator "
              f"{results['onnx_top1_agreement']:.3f} %, logit difference max {results['onnx_max_abs_logit_diff']:.4f} "
              f"mean {results['onnx_mean_abs_logit_diff']:.5f}; simulator margin of the changed classifications at "
              f"most {results['onnx_max_flipped_margin']:.4f}; {results['onnx_integer_kernels']} integer kernels")
    for key in ("activation_stats_csv", "dump_file"):
        if key in results:
            print(f"{key.replace('_', ' ')}: {results[key]}")
    print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    print(f" * Prec@1 {results['top1']:.3f} Prec@5 {results['top5']:.3f}")


@contextmanager
def tracked_run(args: argparse.Namespace, process):
    """The mlflow run of this invocation (rank 0 only; None elsewhere)."""
    if not process.is_main:
        yield None
        return
    from inference.tracking import mlflow_run

    arguments = {key: str(value) for key, value in vars(args).items()}
    with mlflow_run(args.mlflow_uri, args.mlexp or args.arch, {"args": arguments}) as mlflow:
        yield mlflow


def log_to_mlflow(mlflow, results: dict, uri: str | None) -> None:
    from inference.tracking import log_results, store_errors

    with store_errors(uri):
        mlflow.log_params({key: str(value)[:500] for key, value in flatten_quantization(results["quantization"]).items()})
        log_results(mlflow, results, statistics_file=results.get("statistics_file"))
        if results.get("calibration"):
            mlflow.log_params({"calibration.source": results["calibration"][:500],
                               "calibration.images": results["calibration_images"],
                               "calibration.overlaps_eval": results["calibration_overlaps_eval"]})
        for key in ("report_csv", "activation_stats_csv", "sweep_csv", "dump_file", "onnx_encodings"):
            if results.get(key):
                mlflow.log_artifact(results[key])
        if results.get("qat_losses"):
            log_training_curve(mlflow, results["qat_losses"])


def log_training_curve(mlflow, losses: list[float]) -> None:
    """The QAT loss of every step as metric ``qat.loss`` (step = training step), in batches of 1000."""
    import time

    from mlflow.entities import Metric

    client, run_id, now = mlflow.tracking.MlflowClient(), mlflow.active_run().info.run_id, int(time.time() * 1000)
    metrics = [Metric("qat.loss", float(loss), now, step) for step, loss in enumerate(losses)]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def parse_command_line(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = build_parser()
    known = {option for action in parser._actions for option in action.option_strings}
    return parser, parser.parse_args(translate_seed_long_names(sys.argv[1:] if argv is None else list(argv), known))


def checked_before_work(args: argparse.Namespace, parser: argparse.ArgumentParser, process):
    """Flags, outputs, the tracking store (rank 0), the device and the data, in that order:
    everything the user can get wrong is found before a model is loaded or a run is started."""
    from inference.quant_flags import no_op_warnings
    from inference.tracking import check_tracking_store
    from inference.validation import validate_command_line

    for warning in no_op_warnings(args):
        logging.getLogger(__name__).warning(warning)
    validated = validate_command_line(args, parser)
    if process.is_main:
        check_tracking_store(args.mlflow_uri)
    device = resolve_device(args.device, args.device_ids, process)
    data = prepare_run_data(args, get_model_spec(args.arch))
    if args.qat_epochs and data.calibration_overlaps_eval():
        raise UserError(f"--qat-epochs needs training images disjoint from the evaluated ones, and {args.arch} has no "
                        "training split here (no train/ folder): pass --calib-holdout N (labelled images held out "
                        "of the evaluated set), or put labelled class folders in the data folder's train/")
    return validated, device, data


def evaluate_and_record(args: argparse.Namespace, parser: argparse.ArgumentParser, process) -> tuple[dict, object]:
    """The whole run: checks, the evaluation inside its mlflow run, then the results JSON (rank 0)."""
    from inference.distributed import process_group
    from inference.output_files import write_json_atomically

    validated, device, data = checked_before_work(args, parser, process)
    with process_group(process, device), tracked_run(args, process) as mlflow:
        if args.ep:
            results, table = run_sweep(args, validated, process, device, data)
        else:
            results = run(args, validated, process, device, data)
            table = results_table(results)
        if mlflow is not None:
            log_to_mlflow(mlflow, results, args.mlflow_uri)
        if args.results_json is not None and process.is_main:
            write_json_atomically(args.results_json, results)
    return results, table


def report_error(message: str, process, interrupted: bool, consequence: bool) -> None:
    """The one error line. One process prints it. Under torchrun each process that fails reports
    its own (prefixed with its rank): under ``launch.py`` to the launcher, which prints the first,
    else on stderr. Interrupts are not reported by the processes of torchrun: its agent stops them
    all with SIGTERM when one fails or when it is stopped itself, and the launcher says which."""
    from inference.launch_protocol import launched, record_for_launcher

    if not process.distributed:
        print(f"inference_sim.py: error: {message}", file=sys.stderr)
        return
    if interrupted:
        return
    line = message if process.is_main else f"(rank {process.rank}) {message}"
    if launched():
        record_for_launcher(line, consequence)
    else:
        print(f"inference_sim.py: error: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 with the results printed; 2 with one stderr line for anything the user can fix
    (``cli_errors``); a bug of the tool keeps its traceback."""
    from inference.cli_errors import one_line, signals_as_interrupts, user_error_message
    from inference.distributed import ProcessInfo, process_info
    from inference.errors import PeerProcessFailed

    parser, args = parse_command_line(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    process = ProcessInfo()
    try:
        with signals_as_interrupts():
            process = process_info()
            if not process.is_main:
                logging.getLogger().setLevel(logging.ERROR)
            results, table = evaluate_and_record(args, parser, process)
    except BaseException as error:  # noqa: BLE001 - sorted by cause below; bugs are raised again
        message = user_error_message(error, args.batch_size)
        if message is None:
            raise
        report_error(one_line(message), process, interrupted=isinstance(error, KeyboardInterrupt),
                     consequence=isinstance(error, PeerProcessFailed))
        return 2
    if process.is_main:
        if results.get("skipped_images") or results.get("skipped_calibration_images"):
            logging.getLogger(__name__).warning(
                f"--skip-bad-images: {results['skipped_images']} evaluated and {results['skipped_calibration_images']} "
                "calibration image files could not be decoded and were skipped (e.g. "
                f"{results['skipped_examples'][0] if results['skipped_examples'] else 'on another process'})")
        print_results(results, table)
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
