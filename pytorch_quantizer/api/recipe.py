"""The recipe, in its one order: equalize the float model, plan and quantize the weights, settle the
activation statistics (per batch, stored, or calibrated), calibrate the other seeds' activation
quantizers, learn (or reuse) the weight rounding, fine-tune (or reuse a fine-tuned state), fold the
activation bias correction. ``pytorch_quantizer.quantize`` and the CLI both run it; what a run can
reuse instead of computing again is a ``RecipeState``, which is also what ``save`` writes.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from pytorch_quantizer.api.options import Methods, Rounding, Statistics
from pytorch_quantizer.api.processes import OneProcess, Processes, data_share
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.methods.trained_state import TrainedState
from pytorch_quantizer.model.observers import StatsAccumulator
from pytorch_quantizer.model.quantized_model import QuantizedModel
from pytorch_quantizer.quantizers.config import QuantConfig, WeightKind
from pytorch_quantizer.quantizers.families import LevelPlan

LOG = logging.getLogger("pytorch_quantizer")

Progress = Callable[[Iterable, str], Iterable]


@dataclass
class RecipeState:
    """What a recipe computed from data, from which the same quantized model is rebuilt without the
    data: activation statistics (accumulated over calibration batches; ``other_statistics`` of the
    other granularity when asked for), learned weight roundings (1 rounds up) and activation step
    sizes learned with them, the other seeds' calibrated activation plans, a fine-tuned state, and folded activation bias corrections."""

    statistics: dict[str, StatsAccumulator] | None = None
    other_statistics: dict[str, StatsAccumulator] | None = None
    rounding: dict[str, torch.Tensor] | None = None
    activation_scales: dict[str, torch.Tensor] | None = None
    family_plans: dict[str, LevelPlan] | None = None
    trained: TrainedState | None = None
    bias_corrections: dict[str, torch.Tensor] | None = None


@dataclass
class RecipeReport:
    """What was done. ``statistics``: "per batch", "stored" or "calibrated"; ``unquantized_layers``:
    layers with weights that the simulator does not quantize (they run in float); ``float_layers``:
    Conv2d / Linear layers left in float by ``keep_fp``."""

    statistics: str = "per batch"
    unquantized_layers: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    equalization: dict | None = None
    rounding: dict | None = None
    qat: object | None = None   # methods.qat.QatOutcome


@dataclass
class RecipeInputs:
    """Data and state a recipe runs on. ``calibration`` and ``training`` are re-iterable sources of
    batches (image tensors, or (images, labels) pairs; ``training`` needs labels); ``state``: what to
    reuse instead of computing, or a function that reads it for the entered ``QuantizedModel`` (files
    checked against its layers); ``progress(iterable, description)`` wraps each long loop."""

    calibration: Iterable | None = None
    training: Iterable | None = None
    example_input: torch.Tensor | None = None
    statistics: Statistics = Statistics()
    state: RecipeState | Callable[[QuantizedModel], RecipeState] = field(default_factory=RecipeState)
    device: torch.device = torch.device("cpu")
    progress: Progress | None = None
    processes: Processes = field(default_factory=OneProcess)
    measure_error: bool = False


def wrapped(progress: Progress | None, iterable: Iterable, description: str) -> Iterable:
    """One pass over ``iterable`` (inside ``progress`` when given), which must hold a batch."""
    return not_empty(progress(iterable, description) if progress is not None else iterable, description)


def not_empty(batches: Iterable, description: str) -> Iterator:
    """The batches, and a QuantizationError at their end if there were none (an empty loader, or one
    whose every image could not be read)."""
    seen = False
    for item in batches:
        seen = True
        yield item
    if not seen:
        raise QuantizationError(f"the {description} batches hold no images: pass at least one batch",
                                code="empty_calibration", field="calibration")


def first_images(batches: Iterable) -> torch.Tensor:
    from pytorch_quantizer.model.calibration import batch_images

    for item in batches:
        return batch_images(item)
    raise QuantizationError("the calibration batches hold no images: pass at least one batch", code="empty_calibration",
                            field="calibration")


def check_methods(config: QuantConfig, methods: Methods, inputs: RecipeInputs) -> None:
    """Combinations the recipe cannot run, before any work."""
    weights = config.weights
    if methods.learns_rounding:
        if weights is None or weights.kind != WeightKind.INT:
            raise QuantizationError(f"Methods.rounding {methods.rounding.value} learns the rounding of integer-grid "
                                    "weights: set weights=TensorQuantSpec(kind=WeightKind.INT)",
                                    code="rounding_needs_int_weights", field="rounding")
        if config.stochastic:
            raise QuantizationError("Methods.rounding learns a fixed rounding and stochastic rounds at random: "
                                    "use one of them", code="rounding_with_stochastic", field="stochastic")
        if weights.bin_allocation:
            raise QuantizationError("Methods.rounding learns rounding on GEMMLOWP grids and weights.bin_allocation "
                                    "uses mid-tread bins: use one of them", code="rounding_with_bins",
                                    field="weights.bin_allocation")
    if methods.qat_epochs or inputs.state.trained is not None:
        kinds = [spec.kind for spec in (config.activations, config.weights) if spec is not None]
        if not kinds or any(kind.grid for kind in kinds):
            raise QuantizationError("Methods.qat_epochs trains the other seeds' kinds (uniform, pot, apot, dorefa, n2uq, "
                                    "binary, ternary): set activations / weights to those kinds",
                                    code="qat_needs_family_kinds", field="qat_epochs")
        if config.bias_correct_weights or config.variance_correct_weights:
            raise QuantizationError("bias_correct_weights / variance_correct_weights correct post-training rounding, "
                                    "which fine-tuning learns: turn them off", code="qat_with_weight_correction",
                                    field="bias_correct_weights")
    if inputs.processes.distributed:
        if config.activations is not None and config.activations.kind.calibrated_activations:
            raise QuantizationError(f"{config.activations.kind.value} activations are calibrated in one process",
                                    code="family_calibration_distributed", field="activations.kind")
        if methods.qat_epochs:
            raise QuantizationError("Methods.qat_epochs trains in one process", code="qat_distributed",
                                    field="qat_epochs")


def needs_calibration(config: QuantConfig, methods: Methods, inputs: RecipeInputs) -> list[str]:
    """What in this recipe takes calibration images (empty: none needed)."""
    state, needs = inputs.state, []
    activations = config.activations
    if (activations is not None and activations.kind.grid and not inputs.statistics.per_batch
            and state.statistics is None):
        needs.append("activation statistics (or Statistics(per_batch=True))")
    if (activations is not None and activations.kind.calibrated_activations and state.family_plans is None
            and state.trained is None):
        needs.append(f"{activations.kind.value} activations")
    if methods.learns_rounding and state.rounding is None:
        needs.append(f"Methods.rounding {methods.rounding.value}")
    if config.bias_correct_activations and config.departures.bca_folded and state.bias_corrections is None:
        needs.append("folded activation bias correction")
    return needs


def check_inputs(config: QuantConfig, methods: Methods, inputs: RecipeInputs) -> None:
    check_methods(config, methods, inputs)
    needs = needs_calibration(config, methods, inputs)
    if needs and inputs.calibration is None:
        raise QuantizationError(f"{needs[0]} need calibration images: pass calibration=", code="needs_calibration",
                                field="calibration")


def run_recipe(model: nn.Module, config: QuantConfig, methods: Methods, inputs: RecipeInputs
               ) -> tuple[QuantizedModel, RecipeState, RecipeReport]:
    """Run the recipe on ``model`` (never modified: the quantized model is a copy). Returns the
    entered ``QuantizedModel`` (its hooks stay until it is exited), the state computed or reused,
    and what was done."""
    if not callable(inputs.state):
        check_inputs(config, methods, inputs)
    example = inputs.example_input if inputs.example_input is not None else first_images(inputs.calibration)
    state, report = RecipeState(), RecipeReport()
    source, inplace = model, False
    if methods.equalize:
        source, report.equalization = equalized(model)
        inplace = True
    quantized = QuantizedModel(source, config, example[:2].to(inputs.device), inplace=inplace,
                               measure_error=inputs.measure_error, device=inputs.device).__enter__()
    try:
        if callable(inputs.state):
            inputs = replace(inputs, state=inputs.state(quantized))
            check_inputs(config, methods, inputs)
        report.unquantized_layers = unquantized_layers(quantized)
        report.float_layers = [name for name, plan in quantized.plans.items()
                               if plan.weight is None and plan.activation is None]
        if report.unquantized_layers:
            LOG.warning("%d layers with weights are not Conv2d / Linear and run in float: %s",
                        len(report.unquantized_layers), ", ".join(report.unquantized_layers[:5]))
        settle_statistics(quantized, inputs, state, report)
        settle_family_activations(quantized, inputs, state)
        settle_rounding(quantized, methods, inputs, state, report)
        settle_training(quantized, methods, inputs, state, report)
        settle_activation_bias(quantized, inputs, state)
    except BaseException:
        quantized.__exit__(None, None, None)
        raise
    return quantized, state, report


def equalized(model: nn.Module) -> tuple[nn.Module, dict]:
    """The cross-layer equalized, high-bias absorbed float copy, and what was done."""
    from pytorch_quantizer.methods.equalization import equalize

    start = time.perf_counter()
    try:
        transformed, done = equalize(model)
    except ValueError as error:
        raise QuantizationError(f"Methods.equalize: {error}; set equalize=False", code="equalize_failed",
                                field="equalize", detail=str(error)) from error
    return transformed, {"chains": done.chains, "sweeps": done.sweeps, "absorbed_channels": done.absorbed_channels,
                         "seconds": round(time.perf_counter() - start, 3)}


def unquantized_layers(quantized: QuantizedModel) -> list[str]:
    """Modules holding weights of their own that are neither a quantized Conv2d / Linear nor a
    BatchNorm folded into one (a Conv1d, an embedding, an unfolded norm ...): they run in float."""
    from pytorch_quantizer.model.graph import GEMM_LAYERS

    names = []
    for name, module in quantized.model.named_modules():
        if isinstance(module, GEMM_LAYERS) or isinstance(module, nn.Identity):
            continue
        if any(True for _ in module.parameters(recurse=False)):
            names.append(name)
    return names


def settle_statistics(quantized: QuantizedModel, inputs: RecipeInputs, state: RecipeState,
                      report: RecipeReport) -> None:
    from pytorch_quantizer.model.calibration import collect_statistics, reduced

    config, stored = quantized.config, inputs.state.statistics
    activations = config.activations
    if activations is None or not activations.kind.grid:
        return
    if stored is not None:
        accumulators, report.statistics = stored, "stored"
    elif inputs.statistics.per_batch:
        return
    else:
        batches = wrapped(inputs.progress, inputs.calibration, "calibration")
        collected = collect_statistics(quantized, batches, inputs.device,
                                       also_other_granularity=inputs.statistics.both_granularities,
                                       image_averaged_range=inputs.statistics.image_averaged_range)
        accumulators, other = collected if inputs.statistics.both_granularities else (collected, {})
        inputs.processes.merge_statistics(accumulators)
        inputs.processes.merge_statistics(other)
        state.other_statistics = other or None
        report.statistics = "calibrated"
    state.statistics = accumulators
    quantized.use_statistics(reduced(accumulators, config.stats_kind.value, quantized.kept_layers()))


def settle_family_activations(quantized: QuantizedModel, inputs: RecipeInputs, state: RecipeState) -> None:
    from pytorch_quantizer.methods.family_calibration import calibrate_activations

    activations = quantized.config.activations
    if activations is None or not activations.kind.calibrated_activations or inputs.state.trained is not None:
        return
    plans = inputs.state.family_plans
    if plans is None:
        plans = calibrate_activations(quantized, wrapped(inputs.progress, inputs.calibration, "calibration"),
                                      inputs.device)
    quantized.family_activations.use(plans)
    state.family_plans = dict(plans)


def settle_rounding(quantized: QuantizedModel, methods: Methods, inputs: RecipeInputs, state: RecipeState,
                    report: RecipeReport) -> None:
    from pytorch_quantizer.methods.reconstruction import RoundingOptions, learn_block_rounding, learn_model_rounding
    from pytorch_quantizer.model.calibration import batch_images
    from pytorch_quantizer.model.weights import use_weight_rounding

    if not methods.learns_rounding:
        return
    start = time.perf_counter()
    stored = inputs.state.rounding
    if stored is not None:
        check_rounding(quantized, stored)
        scales = inputs.state.activation_scales or {}
        check_step_sizes(quantized, scales, methods)
        quantized.use_activation_scales(scales)
        for name, up in stored.items():
            use_weight_rounding(quantized, name, up.to(inputs.device))
        state.rounding, state.activation_scales = dict(stored), dict(scales) or None
        report.rounding = {"rounding_seconds": round(time.perf_counter() - start, 3)}
        return
    batches = [batch_images(item) for item in not_empty(inputs.calibration, "calibration")]
    images = torch.cat(batches).to(inputs.device)
    options = RoundingOptions(methods.rounding_steps, methods.rounding_batch, quantized.config.seed, methods.qdrop,
                              methods.learn_step_sizes, methods.step_size_lr, methods.joint_blocks)
    blocks = methods.rounding == Rounding.BLOCK
    learn = learn_block_rounding if blocks else learn_model_rounding
    bar = (lambda names: inputs.progress(names, "reconstruct" if blocks else "adaround")) if inputs.progress else None
    groups = methods.rounding_groups or inputs.processes.world_size
    share = (data_share([len(batch) for batch in batches], inputs.processes, groups)
             if inputs.processes.distributed or groups > 1 else None)
    results = learn(quantized, images, options, bar, share=share)
    learned = {id(result.losses): result for result in results.values()}  # the layers of a block share one
    state.rounding = {name: result.up.detach().cpu() for name, result in results.items()}
    state.activation_scales = dict(quantized.activation_scales) or None
    report.rounding = {"rounding_layers": len(results), "rounding_units": len(learned),
                       "rounding_seconds": round(time.perf_counter() - start, 3),
                       "rounding_nearest_error": sum(result.nearest_error for result in learned.values()),
                       "rounding_learned_error": sum(result.learned_error for result in learned.values())}


def check_step_sizes(quantized: QuantizedModel, scales: dict[str, torch.Tensor], methods: Methods) -> None:
    """Stored step sizes: present when they were learned (``Methods.learn_step_sizes``) and only
    then, each finite, positive and of a layer with an activation grid."""
    if bool(scales) != methods.learn_step_sizes:
        raise QuantizationError("the stored rounding was learned " + ("with" if scales else "without")
                                + " activation step sizes, unlike Methods.learn_step_sizes", code="step_sizes_mismatch",
                                field="learn_step_sizes")
    for name, scale in scales.items():
        plan = quantized.plans.get(name)
        if plan is None or plan.activation is None or not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            raise QuantizationError(f"the stored activation step size of layer {name} is not a positive finite step "
                                    "of one of its activation grids", code="step_sizes_values")


def check_rounding(quantized: QuantizedModel, rounding: dict[str, torch.Tensor]) -> None:
    """A stored rounding must cover exactly the integer-grid layers, each a 0 / 1 tensor of its weight's shape."""
    from pytorch_quantizer.model.weights import integer_grid_layers

    layers = integer_grid_layers(quantized)
    if set(rounding) != set(layers):
        raise QuantizationError("the stored rounding's layers are not this model's integer-grid layers",
                                code="rounding_layers")
    for name, up in rounding.items():
        shape = quantized.float_params[name][0].shape
        if up.shape != shape or not bool(((up == 0) | (up == 1)).all()):
            raise QuantizationError(f"the stored rounding of layer {name} is not a 0 / 1 tensor of its weight's shape",
                                    code="rounding_values")


def settle_training(quantized: QuantizedModel, methods: Methods, inputs: RecipeInputs, state: RecipeState,
                    report: RecipeReport) -> None:
    from pytorch_quantizer.methods import qat
    from pytorch_quantizer.methods.trained_state import trained_state, use_trained_state

    if inputs.state.trained is not None:
        use_trained_state(quantized, inputs.state.trained)
        state.trained = inputs.state.trained
        return
    if not methods.qat_epochs:
        return
    if inputs.training is None:
        raise QuantizationError("Methods.qat_epochs trains on labelled batches: pass training= (images, labels)",
                                code="qat_needs_training", field="training")

    def bar(batches, epoch):
        return wrapped(inputs.progress, batches, f"QAT epoch {epoch + 1}/{methods.qat_epochs}")

    report.qat = qat.fine_tune(quantized, inputs.training, methods.qat_epochs, methods.qat_lr, inputs.device, bar)
    state.trained = trained_state(quantized)


def settle_activation_bias(quantized: QuantizedModel, inputs: RecipeInputs, state: RecipeState) -> None:
    """The folded activation bias correction (departure ``bca_folded``), measured or stored."""
    from pytorch_quantizer.methods.activation_bias import add_corrections, fold_activation_bias

    config = quantized.config
    if not (config.bias_correct_activations and config.departures.bca_folded):
        return
    stored = inputs.state.bias_corrections
    if stored is not None:
        add_corrections(quantized, stored)
        state.bias_corrections = dict(stored)
        return
    batches = wrapped(inputs.progress, inputs.calibration, "bias correction")
    state.bias_corrections = {name: value.detach().cpu() for name, value in
                              fold_activation_bias(quantized, batches, inputs.device, inputs.processes.sum).items()}
