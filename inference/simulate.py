"""One quantized evaluation: the library's recipe on the model (``pytorch_quantizer.api.functions``),
with this run's files read and written around it (``run_files``), then the evaluation, and the
export when asked."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from inference.data import LoaderOptions, RunData
from inference.deployment import export_and_verify
from inference.errors import UserError
from inference.inspection import Inspection, evaluate_inspected, nothing_decoded
from inference.progress import progress_bars
from inference.run_files import RecipeFiles, StoredState, save_collected, save_rounding_file, statistics_description
from pytorch_quantizer.api.evaluation import EvalResult, Fidelity
from pytorch_quantizer.api.options import Methods, Statistics
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.quantizers.config import QuantConfig

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
    qat: "QatOutcome | None" = None  # noqa: F821 - pytorch_quantizer.methods.qat
    calibration_skipped: list[str] = field(default_factory=list)  # undecodable files, with --skip-bad-images
    equalization: dict | None = None  # --equalize: chains, sweeps, absorbed channels, seconds
    rounding: dict | None = None  # --adaround / --reconstruct: layers, seconds, output errors, file
    onnx: dict = field(default_factory=dict)  # --export-onnx / --verify-onnx: files and runtime figures
    unquantized_layers: list[str] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)   # mean weight / activation bits, GBOPs (report.bit_costs)


@dataclass(frozen=True)
class EvaluationSettings:
    """How the quantized model is evaluated: ``print_freq`` of the running accuracy, the
    inspections (-ms / -dd), per-layer errors (--report-csv), FP32 beside it (--compare-fp32)."""

    print_freq: int = 10
    inspection: Inspection = Inspection()
    measure_error: bool = False
    compare_fp32: bool = False


def needs_calibration_images(config: QuantConfig, methods: Methods, files: RecipeFiles) -> bool:
    activations = config.activations
    family_calibration = (activations is not None and activations.kind.calibrated_activations
                          and files.load_qat is None)
    folded_bca = config.bias_correct_activations and config.departures.bca_folded
    learns_rounding = methods.learns_rounding and not files.uses
    return files.collects or files.calibrate or folded_bca or family_calibration or learns_rounding


def simulate(model: torch.nn.Module, config: QuantConfig, methods: Methods, files: RecipeFiles, data: RunData,
             loader, device: torch.device, options: LoaderOptions,
             evaluation: EvaluationSettings = EvaluationSettings()) -> SimulationResult:
    """Calibration images come from ``data.calibration_loader``. With ``compare_fp32`` the float
    ``model`` runs beside the quantized copy on every evaluated batch (``SimulationResult.fidelity``).
    Under torchrun (``options.process``) calibration batches are split over the processes and
    their statistics merged exactly before use; only rank 0 writes files."""
    from pytorch_quantizer.api.functions import quantize_with_inputs
    from pytorch_quantizer.api.recipe import RecipeInputs
    from pytorch_quantizer.formats.fingerprint import weights_fingerprint
    from pytorch_quantizer.model import report

    process = options.process
    example, _ = next(iter(loader))
    calibration = data.calibration_loader(options) if needs_calibration_images(config, methods, files) else None
    training = None
    if methods.qat_epochs:
        training = data.calibration_loader(replace(options, batch_size=files.qat_batch_size)).loader
    fingerprint = weights_fingerprint(model)   # of the float weights: what stored files must have been made for
    stored = StoredState(files, config, methods, fingerprint)
    inputs = RecipeInputs(
        calibration=calibration.loader if calibration is not None else None, training=training,
        example_input=example, statistics=Statistics(per_batch=not files.fixed_ranges,
                                                     image_averaged_range=files.image_averaged_range,
                                                     both_granularities=files.collects),
        state=stored, device=device, progress=progress_bars(process.is_main), processes=process,
        measure_error=evaluation.measure_error)
    with recipe_errors(calibration), quantize_with_inputs(model, config, methods, inputs, fingerprint) as network:
        recipe = network.report
        result = SimulationResult(EvalResult(0, 0, 0, 0), statistics_description(
            files, config, calibration, stored.calibration_images), equalization=recipe.equalization,
            rounding=recipe.rounding, qat=recipe.qat, unquantized_layers=recipe.unquantized_layers)
        if calibration is not None:
            result.calibration, result.calibration_overlaps_eval = calibration.source, calibration.overlaps_eval
            result.calibration_images = calibration.images
        if files.uses and stored.calibration_images is not None:
            result.statistics_file = str(files.statistics_path(config.activations.per_channel))
        if process.is_main:
            write_learned_files(files, config, methods, network, calibration, result)
        result.evaluation, result.fidelity, result.files = evaluate_inspected(
            network.module, loader, device, evaluation.print_freq, process, evaluation.inspection,
            model if evaluation.compare_fp32 else None)
        if files.export_onnx is not None:
            result.onnx = export_and_verify(network, files.export_onnx, files.verify_onnx, example, loader, device,
                                            process)
        if calibration is not None:
            result.calibration_skipped = list(getattr(calibration.loader, "skipped", []))
        if process.distributed and (config.measure_entropy or evaluation.measure_error):
            report.merge_activation_measures(network.quantized, process.sum)
        result.costs = report.bit_costs(network.quantized, example.to(device))
        if config.measure_entropy:
            result.entropy = network.entropy()
        if evaluation.measure_error:
            result.layer_report = network.layer_report()
    if result.calibration_overlaps_eval:
        LOG.warning("calibration images overlap the evaluated ones: %s", result.calibration)
    return result


@contextmanager
def recipe_errors(calibration):
    """The recipe's errors about this run's data in the CLI's words: calibration batches that hold no
    image because every file was skipped as undecodable."""
    try:
        yield
    except QuantizationError as error:
        if error.code != "empty_calibration" or calibration is None:
            raise
        skipped = list(getattr(calibration.loader, "skipped", []))
        if skipped:
            raise UserError(nothing_decoded("calibration", "--calib-data", skipped)) from None
        raise UserError(f"the calibration images of {calibration.source} are empty: pass -cs N with a calibration "
                        "split that holds images") from None


def write_learned_files(files: RecipeFiles, config: QuantConfig, methods: Methods, network, calibration,
                        result: SimulationResult) -> None:
    """What this run learned and was asked to keep: statistics and rounding (-sm collect), the
    fine-tuned state (--save-qat)."""
    from pytorch_quantizer.formats.qat_io import save_qat

    state, fingerprint = network.state, network.fingerprint
    if files.collects and state.statistics is not None:
        result.statistics_file = str(save_collected(files, config, state, calibration.images, fingerprint))
    if files.collects and methods.learns_rounding:
        result.rounding["rounding_file"] = str(save_rounding_file(files, config, methods, state, fingerprint))
    elif files.uses and methods.learns_rounding:
        result.rounding["rounding_file"] = str(files.rounding_path(methods))
    if files.save_qat is not None and methods.qat_epochs:
        save_qat(files.save_qat, state.trained, files.model_name, files.qat_recipe, fingerprint)
