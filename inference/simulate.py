"""One quantized evaluation: prepare the quantized model, settle activation statistics (on the fly,
calibrated, collected and saved, or loaded), optional activation bias correction, evaluate."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field

import torch

from inference.data import LoaderOptions, RunData
from inference.errors import UserError
from inference.evaluate import EvalResult, Fidelity
from inference.inspection import Inspection, evaluate_inspected
from inference.quant_flags import statistics_path, statistics_point
from inference.weight_method_flags import learning_flag

LOG = logging.getLogger(__name__)


@dataclass
class SimulationResult:
    evaluation: EvalResult
    statistics: str
    calibration: str | None = None
    calibration_images: int = 0
    calibration_overlaps_eval: bool = False
    fidelity: Fidelity | None = None
    statistics_file: str | None = None
    entropy: dict[str, float] = field(default_factory=dict)
    layer_report: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    qat: "QatOutcome | None" = None  # noqa: F821 - pytorch_quantizer.qat, imported when fine-tuning
    calibration_skipped: list[str] = field(default_factory=list)  # undecodable files, with --skip-bad-images
    equalization: dict | None = None  # --equalize: chains, sweeps, absorbed channels, seconds
    rounding: dict | None = None  # --adaround / --reconstruct: layers, seconds, output errors, file
    onnx: dict = field(default_factory=dict)  # --export-onnx / --verify-onnx: files and runtime figures


def simulate(args: argparse.Namespace, model: torch.nn.Module, data: RunData, loader, config,
             device: torch.device, options: LoaderOptions, measure_error: bool = False,
             inspection: Inspection = Inspection(), compare_fp32: bool = False) -> SimulationResult:
    """Calibration images come from ``data.calibration_loader``. With ``compare_fp32`` the float
    ``model`` runs beside the quantized copy on every evaluated batch (``SimulationResult.fidelity``).
    Under torchrun (``options.process``) calibration batches are split over the processes and
    their statistics merged exactly before use; only rank 0 writes the statistics file."""
    from pytorch_quantizer.activation_bias import fold_activation_bias
    from pytorch_quantizer.families import calibrate_activations
    from pytorch_quantizer.stats_io import StatisticsFile, load_statistics, save_statistics
    from pytorch_quantizer.transform import QuantizedModel

    example, _ = next(iter(loader))
    per_channel = config.activations is not None and config.activations.per_channel
    path = statistics_path(args, per_channel)
    process = options.process
    source, equalization = equalized(model) if args.equalize else (model, None)
    with QuantizedModel(source, config, example[:2].to(device), inplace=args.equalize,
                        measure_error=measure_error) as quantized:
        layers = sorted(quantized.activation_plans())
        result = SimulationResult(EvalResult(0, 0, 0, 0), "on the fly (each evaluated batch)",
                                  equalization=equalization)
        calibration = None
        folded_bca = args.bca and config.departures.bca_folded
        family_calibration = (config.activations is not None and config.activations.kind.calibrated_activations
                              and args.load_qat is None)
        if family_calibration and process.distributed:
            raise UserError(f"{args.qtype} activations are calibrated in one process: run without torchrun")
        learning = learning_flag(args)
        learns_rounding = learning is not None and args.sm != "use"
        if learns_rounding and process.distributed:
            raise UserError(f"{learning} learns in one process: run without torchrun (or load a learned rounding "
                            "with -sm use)")
        if args.sm == "collect" or args.ac or folded_bca or family_calibration or learns_rounding:
            calibration = data.calibration_loader(options)
            calibration_batches = progress(calibration.loader, "calibration", process.is_main)
            result.calibration, result.calibration_overlaps_eval = calibration.source, calibration.overlaps_eval
            result.calibration_images = calibration.images
        if args.sm == "use":
            stored = load_statistics(path, args.arch, per_channel, statistics_point(args), layers)
            quantized.use_statistics(reduced(stored.layers, args.sk, quantized.kept_layers()))
            result.statistics, result.statistics_file = f"from {path} ({stored.calibration_images} images)", str(path)
        elif args.sm == "collect" or args.ac:
            collecting = args.sm == "collect"
            if collecting:
                accumulators, other = quantized.collect_statistics(calibration_batches, device, also_other_granularity=True,
                                                                   image_averaged_range=args.sba)
            else:
                accumulators, other = quantized.collect_statistics(calibration_batches, device,
                                                                   image_averaged_range=args.sba), {}
            process.merge_statistics(accumulators)
            process.merge_statistics(other)
            images = calibration.images
            if collecting and process.is_main:
                clipping = config.activations.clipping
                for granularity, layers in ((per_channel, accumulators), (not per_channel, other)):
                    save_statistics(StatisticsFile(args.arch, images, granularity, statistics_point(args), clipping,
                                                   layers), statistics_path(args, granularity))
                result.statistics_file = str(path)
            quantized.use_statistics(reduced(accumulators, args.sk, quantized.kept_layers()))
            result.statistics = f"calibrated on {images} images of {calibration.source}"
        if family_calibration:
            quantized.family_activations.use(calibrate_activations(
                quantized, progress(calibration.loader, "calibration", process.is_main), device))
            result.statistics = f"{args.qtype} calibrated on {calibration.images} images of {calibration.source}"
        if learning is not None:
            from inference.rounding import settle_rounding

            result.rounding = settle_rounding(args, quantized, calibration, config, device, process.is_main)
        if args.load_qat is not None:
            from inference.qat_flags import recipe_text
            from pytorch_quantizer.qat_io import load_qat

            load_qat(args.load_qat, quantized, args.arch, recipe_text(args))
            result.statistics = f"fine-tuned model from {args.load_qat}"
        elif args.qat_epochs:
            result.qat = fine_tune(args, quantized, data, options, device)
        if folded_bca:
            fold_activation_bias(quantized, progress(calibration.loader, "bias correction", process.is_main), device,
                                 process.sum)
        result.evaluation, result.fidelity, result.files = evaluate_inspected(
            quantized.model, loader, device, args.print_freq, process, inspection, model if compare_fp32 else None)
        if args.export_onnx is not None:
            from inference.onnx_flags import export_and_verify

            result.onnx = export_and_verify(args, quantized, example, loader, device, process)
        if calibration is not None:
            result.calibration_skipped = list(getattr(calibration.loader, "skipped", []))
        if process.distributed and (config.measure_entropy or measure_error):
            quantized.merge_activation_measures(process.sum)
        if config.measure_entropy:
            result.entropy = quantized.entropy_summary()
        if measure_error:
            result.layer_report = quantized.layer_report()
    if result.calibration_overlaps_eval:
        LOG.warning("calibration images overlap the evaluated ones: %s", result.calibration)
    return result


def equalized(model: torch.nn.Module) -> tuple[torch.nn.Module, dict]:
    """--equalize: the cross-layer equalized, high-bias absorbed float copy, and what was done."""
    import time

    from pytorch_quantizer.equalization import equalize

    start = time.perf_counter()
    try:
        transformed, report = equalize(model)
    except ValueError as error:
        raise UserError(f"--equalize: {error}; run without --equalize") from error
    return transformed, {"chains": report.chains, "sweeps": report.sweeps,
                         "absorbed_channels": report.absorbed_channels,
                         "seconds": round(time.perf_counter() - start, 3)}


def fine_tune(args: argparse.Namespace, quantized, data: RunData, options: LoaderOptions, device: torch.device):
    """--qat-epochs on -cs labelled images of the calibration split (never the evaluated ones)."""
    from dataclasses import replace

    from inference.qat_flags import DEFAULT_QAT_BATCH, DEFAULT_QAT_LR, recipe_text
    from pytorch_quantizer import qat
    from pytorch_quantizer.qat_io import save_qat

    if options.process.distributed:
        raise UserError("--qat-epochs trains in one process: run without torchrun")
    training = data.calibration_loader(replace(options, batch_size=args.qat_batch_size or DEFAULT_QAT_BATCH))

    def bar(batches, epoch):
        from tqdm import tqdm

        return tqdm(batches, desc=f"QAT epoch {epoch + 1}/{args.qat_epochs}", unit="batch", disable=None, leave=False)

    outcome = qat.fine_tune(quantized, training.loader, args.qat_epochs, args.qat_lr or DEFAULT_QAT_LR, device, bar)
    if args.save_qat is not None:
        save_qat(args.save_qat, quantized, args.arch, recipe_text(args))
    return outcome


def reduced(accumulators: dict, kind: str, kept: set[str]) -> dict:
    """Each layer's statistics over the calibration batches: ``kind`` (-sk), and their extremes at
    layers kept at 8 bits (the seed's classifier output)."""
    return {name: accumulator.reduce("max" if name in kept else kind) for name, accumulator in accumulators.items()
            if accumulator.batches}  # layers that calibration never reached (an eval-mode auxiliary head) have none


def progress(loader, description: str, show: bool):
    """A tqdm bar over the batches of ``loader`` (drawn by rank 0 only)."""
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes, the one error line)
    return tqdm(loader, desc=description, unit="batch", disable=None if show else True, leave=False)


def require_statistics_file(args: argparse.Namespace, config) -> None:
    """-sm use needs an existing file: checked before any work."""
    if args.sm == "use":
        path = statistics_path(args, config.activations.per_channel)
        if not path.is_file():
            raise UserError(f"-sm use: no statistics file {path} for {args.arch}; run with -sm collect first "
                            "(same -pcq_a, --act-quant-point and --equalize) or point -sf at its folder")
