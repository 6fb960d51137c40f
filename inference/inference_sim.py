"""PTQ inference simulator: evaluate a pretrained CNN (top-1 / top-5) on real images.

    python inference/inference_sim.py -a efficientnet_lite0
    python inference/inference_sim.py -a fmnist_resnet20 -b 500
    python inference/inference_sim.py -a resnet50 --data /path/to/imagenet --weights resnet50.pth
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.errors import UserError  # noqa: E402
from pytorch_quantizer.errors import InputError  # noqa: E402
from inference.models import list_models  # noqa: E402
from inference.quant_flags import add_quantization_flags  # noqa: E402

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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="inference_sim.py", description="Evaluate a pretrained CNN on real images.")
    parser.add_argument("-a", "--arch", default=DEFAULT_ARCH, choices=list_models(), metavar="ARCH",
                        help=f"model from the registry: {', '.join(list_models())} (default: {DEFAULT_ARCH})")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=256, help="images per batch (default: 256)")
    parser.add_argument("-j", "--workers", type=non_negative_int, default=2,
                        help="worker processes decoding image files (in-memory Fashion-MNIST loads in the main process; default: 2)")
    parser.add_argument("--data", type=Path, default=None,
                        help="ImageNet: folder with val/ (and train/ for calibration) in ImageFolder layout; "
                             "Fashion-MNIST: folder with the idx files. Default: the 20 ImageNet photos shipped in "
                             "foolbox, or /usr/share/datasets/fashion-mnist")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled order and of torch (default: 0)")
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
    parser.add_argument("-mlexp", "--mlf-experiment", dest="mlexp", default=None,
                        help="mlflow experiment of this run (default: the arch)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="mlflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite under mlruns/ in the repository)")
    parser.add_argument("--backend", choices=("auto", "kernels", "reference"), default="auto",
                        help="fake-quantization arithmetic: the fused C++/CUDA kernels, the pure-PyTorch reference, "
                             "or auto (kernels when built, else reference with a warning; default)")
    add_quantization_flags(parser, positive_int)
    return parser


def resolve_device(requested: str | None):
    import torch

    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {requested}: only cpu and cuda are supported")
    return device


def write_json_atomically(path: Path, payload: dict) -> None:
    from pytorch_quantizer.safe_io import write_atomically

    write_atomically(path, lambda temporary: Path(temporary).write_text(json.dumps(payload, indent=2) + "\n"))


def validate(args: argparse.Namespace):
    """Every check that needs no data or model, before any work: returns (model spec, QuantConfig or None)."""
    from inference.models import get_model_spec
    from inference.quant_flags import quant_config_from_args
    from inference.simulate import require_statistics_file

    if args.results_json is not None and not args.results_json.parent.is_dir():
        raise UserError(f"--results-json {args.results_json}: folder {args.results_json.parent} does not exist")
    if args.weights is not None and args.random_init:
        raise UserError("--weights and --random-init contradict each other; pass only one")
    if args.report_csv is not None and not args.report_csv.parent.is_dir():
        raise UserError(f"--report-csv {args.report_csv}: folder {args.report_csv.parent} does not exist")
    spec = get_model_spec(args.arch)
    config = quant_config_from_args(args, spec)
    if config is not None:
        require_statistics_file(args, config)
    elif args.report_csv is not None or args.compare_fp32:
        flag = "--report-csv" if args.report_csv is not None else "--compare-fp32"
        raise UserError(f"{flag} concerns a quantized model: add --qtype intN and/or -qw intN")
    return spec, config


def write_csv_atomically(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    from pytorch_quantizer.safe_io import write_atomically

    write_atomically(path, lambda temporary: pd.DataFrame(rows).to_csv(temporary, index=False))


def run(args: argparse.Namespace, validated=None) -> dict:
    """Evaluate per ``args``; ``validated`` is what ``validate(args)`` returned, if already called."""
    import torch

    from inference.data import LoaderOptions, evaluation_loader
    from inference.evaluate import evaluate
    from inference.models import create_model
    from inference.simulate import simulate
    from pytorch_quantizer import backend

    spec, config = validated or validate(args)
    backend.set_backend(args.backend)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    options = LoaderOptions(args.batch_size, args.workers, args.subset, args.shuffle, args.seed)
    loader = evaluation_loader(spec, args.data, options)
    model = create_model(args.arch, args.weights, args.random_init).to(device)
    start = time.perf_counter()
    extra = {}
    if config is None:
        result = evaluate(model, loader, device, args.print_freq, progress=True)
    else:
        simulation = simulate(args, spec, model, loader, config, device, options,
                              measure_error=args.report_csv is not None)
        result = simulation.evaluation
        if args.report_csv is not None:
            write_csv_atomically(args.report_csv, simulation.layer_report)
            extra["report_csv"] = str(args.report_csv)
        if args.compare_fp32:
            fp32 = evaluate(model, loader, device, args.print_freq, progress=True)
            extra.update({"fp32_top1": fp32.top1, "fp32_top5": fp32.top5, "drop": fp32.top1 - result.top1})
        extra |= {"statistics": simulation.statistics, "statistics_file": simulation.statistics_file,
                 "calibration": simulation.calibration, "calibration_overlaps_eval": simulation.calibration_overlaps_eval,
                 **{key: value for key, value in simulation.entropy.items() if key.startswith("avg.")}}
    weights = "random" if args.random_init else str(args.weights or spec.default_weights())
    return {
        "arch": args.arch, "top1": result.top1, "top5": result.top5, "loss": result.loss, "images": result.images,
        "device": str(device), "weights": weights, "data": str(args.data) if args.data else "default",
        "batch_size": args.batch_size, "subset": args.subset, "shuffle": args.shuffle, "seed": args.seed,
        "quantization": describe(config), "backend": backend.active_backend() if config else "none (fp32)", **extra,
        "eval_seconds": round(time.perf_counter() - start, 3),
    }


def describe(config) -> dict | str:
    """The resolved recipe as plain data (for the results JSON)."""
    if config is None:
        return "fp32"
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(config), default=lambda value: getattr(value, "value", str(value))))


def flatten_quantization(quantization) -> dict:
    from inference.tracking import flatten

    return flatten("quantization", quantization if isinstance(quantization, dict) else {"recipe": quantization}, {})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from inference.tracking import log_results, mlflow_run

    try:
        validated = validate(args)
        arguments = {key: str(value) for key, value in vars(args).items()}
        with mlflow_run(args.mlflow_uri, args.mlexp or args.arch, {"args": arguments}) as mlflow:
            results = run(args, validated)
            mlflow.log_params({key: str(value)[:500] for key, value in
                               flatten_quantization(results["quantization"]).items()})
            log_results(mlflow, results, statistics_file=results.get("statistics_file"))
            if results.get("report_csv"):
                mlflow.log_artifact(results["report_csv"])
        if args.results_json is not None:
            write_json_atomically(args.results_json, results)
    except InputError as error:
        print(f"inference_sim.py: error: {error}", file=sys.stderr)
        return 2
    print(f"{results['arch']}: {results['images']} images, weights {results['weights']}, device {results['device']}")
    if "statistics" in results:
        print(f"activation statistics: {results['statistics']}; backend: {results['backend']}")
    for kind in ("act", "weight"):
        if f"avg.entropy.{kind}" in results:
            print(f"Average bit rate: avg.entropy.{kind} - {results[f'avg.entropy.{kind}']:.4f} "
                  f"(Huffman {results[f'avg.huffman.{kind}']:.4f})")
    if "fp32_top1" in results:
        print(f"FP32 on the same images: Prec@1 {results['fp32_top1']:.3f} Prec@5 {results['fp32_top5']:.3f} "
              f"(drop {results['drop']:.3f})")
    print(f" * Prec@1 {results['top1']:.3f} Prec@5 {results['top5']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
