"""PTQ inference simulator: evaluate a pretrained CNN (top-1 / top-5) on real images. The console
command ``ptq-sim`` and ``python -m inference.inference_sim`` run the same ``cli``.

    ptq-sim -a mobilenet_v3_small --weights mobilenet_v3_small.pth --data DIR --qtype int8
    python inference/inference_sim.py -a efficientnet_lite0
    python inference/inference_sim.py -a fmnist_resnet20 -b 500
    python inference/inference_sim.py -a resnet50 --data /path/to/imagenet --weights resnet50.pth
    torchrun --standalone --nproc_per_node=2 inference/inference_sim.py -a fmnist_resnet20 --qtype int4
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from inference.errors import UserError
from inference.model_flags import add_model_flags, spec_from_args
from inference.qat_flags import add_qat_flags
from inference.quant_flags import add_quantization_flags, positive_float
from inference.seed_compat import add_rejected_seed_flags, translate_seed_long_names
from inference.onnx_flags import add_onnx_flags
from inference.precision_flags import add_precision_flags
from inference.weight_method_flags import add_weight_method_flags
from inference.validation import resolve_device


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


def fold_spec(text: str) -> tuple[int, int]:
    """``I/K`` -> (I, K); the range is checked with the other calibration choices (``CalibrationChoice``)."""
    part, slash, parts = text.partition("/")
    if not slash or not part.strip().isdigit() or not parts.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be part/parts such as 1/5, got {text!r}")
    return int(part), int(parts)


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
    add_model_flags(parser, positive_int)
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
    parser.add_argument("--calib-fold", type=fold_spec, default=None, metavar="I/K",
                        help="k-fold cross-validation: cut the evaluated set into K parts drawn by --seed, evaluate "
                             "part I and calibrate on the other K - 1 (-cs of them); runs of I = 1..K evaluate every "
                             "image once (analysis/cross_validated.py pools them)")
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
    add_precision_flags(parser, positive_int, positive_float)
    add_rejected_seed_flags(parser)
    return parser


def parse_command_line(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = build_parser()
    known = {option for action in parser._actions for option in action.option_strings}
    return parser, parser.parse_args(translate_seed_long_names(sys.argv[1:] if argv is None else list(argv), known))


def checked_before_work(args: argparse.Namespace, parser: argparse.ArgumentParser, process):
    """Flags, outputs, the tracking store (rank 0), the device and the data, in that order:
    everything the user can get wrong is found before a model is loaded or a run is started. The
    warnings about flags that change nothing come after these checks, so that an error that stops
    the run is never preceded by them."""
    from inference.quant_flags import no_op_warnings
    from inference.run import data_warnings, prepare_run_data
    from inference.tracking import check_tracking_store
    from inference.validation import validate_command_line

    validated = validate_command_line(args, parser)
    if args.recon_groups is not None and args.recon_groups % process.world_size:
        raise UserError(f"--recon-groups {args.recon_groups} is not a multiple of the {process.world_size} processes: "
                        "each group's calibration batches must be on one process; use a multiple of the process count")
    if process.is_main:
        check_tracking_store(args.mlflow_uri)
    device = resolve_device(args.device, args.device_ids, process)
    data = prepare_run_data(args, spec_from_args(args))
    if args.qat_epochs and data.calibration_overlaps_eval():
        raise UserError(f"--qat-epochs needs training images disjoint from the evaluated ones, and {args.arch} has no "
                        "training split here (no train/ folder): pass --calib-holdout N (labelled images held out "
                        "of the evaluated set), or put labelled class folders in the data folder's train/")
    for warning in [*no_op_warnings(args), *data_warnings(args)]:
        logging.getLogger(__name__).warning(warning)
    return validated, device, data


def evaluate_and_record(args: argparse.Namespace, parser: argparse.ArgumentParser, process) -> tuple[dict, object]:
    """The whole run: checks, the evaluation inside its mlflow run, then the results JSON (rank 0)."""
    from inference.distributed import process_group
    from inference.output_files import write_json_atomically
    from inference.results_output import log_to_mlflow, recipe_label, results_table, tracked_run
    from inference.run import run, run_sweep
    from inference.settings_flags import methods_from_args

    validated, device, data = checked_before_work(args, parser, process)
    arguments = {key: str(value) for key, value in vars(args).items()}
    recipe = "precision sweep" if args.ep else recipe_label(validated[1], methods_from_args(args))
    with process_group(process, device), tracked_run(arguments, args.mlflow_uri, args.mlexp or args.arch, process,
                                                     f"{args.arch} {recipe}", recipe) as mlflow:
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
    from inference.results_output import print_results

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


def cli() -> None:
    """The console command ``ptq-sim`` (and ``python -m inference.inference_sim``): glibc malloc tuned
    for inference first (``allocator``), then ``main``."""
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())


if __name__ == "__main__":
    cli()
