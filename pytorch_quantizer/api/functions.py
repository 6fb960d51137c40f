"""The public calls: ``quantize``, ``save``, ``load``, ``export_onnx``."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pytorch_quantizer.api.network import QuantizedNetwork
from pytorch_quantizer.api.options import Methods, Statistics
from pytorch_quantizer.api.recipe import Progress, RecipeInputs, RecipeState, run_recipe
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.formats.fingerprint import weights_fingerprint
from pytorch_quantizer.formats.saved_model import load_model_state, methods_as_dict, save_model_state
from pytorch_quantizer.quantizers.config import QuantConfig, config_as_dict, config_from_dict

LOAD_FIX = "save it again with pytorch_quantizer.save from a model quantized with these weights"


def quantize(model: nn.Module, config: QuantConfig, calibration: Iterable | None = None, *,
             methods: Methods | None = None, statistics: Statistics | None = None, training: Iterable | None = None,
             example_input: torch.Tensor | None = None, device: torch.device | str | None = None,
             progress: Progress | None = None, measure_error: bool = False) -> QuantizedNetwork:
    """Quantize a copy of ``model`` (any ``nn.Module``; its Conv2d and Linear layers are quantized,
    BatchNorm after a conv folded into it) with the recipe ``config`` and ``methods``.

    ``calibration``: a re-iterable of batches (image tensors, or (images, labels, ...) tuples, e.g.
    a DataLoader) for the activation ranges, the other seeds' activation quantizers, learned
    rounding and folded bias correction; without it activation ranges come from each batch the
    model runs on (the seed's default; ``statistics=Statistics(per_batch=True)`` asks for that
    with calibration too). ``training``: labelled batches for ``methods.qat_epochs``.
    ``example_input``: one batch to trace the model with (default: the first calibration batch).
    ``progress(iterable, description)`` wraps each long loop (e.g. ``tqdm``). ``device``: where
    the quantized copy runs (default: the model's). Raises ``QuantizationError`` for a recipe that
    cannot run, naming the field."""
    methods = methods or Methods()
    statistics = statistics or Statistics(per_batch=calibration is None)
    if calibration is not None and iter(calibration) is calibration:
        calibration = list(calibration)  # a generator: the recipe passes over the batches more than once
    if not isinstance(config, QuantConfig):
        raise QuantizationError(f"config must be a QuantConfig, not {type(config).__name__}", field="config")
    if not config.enabled:
        raise QuantizationError("the config quantizes nothing: set activations and / or weights", field="config")
    if example_input is None and calibration is None:
        raise QuantizationError("pass calibration= (batches of images) or example_input= (one batch) to trace the "
                                "model with", field="example_input")
    return quantize_with_inputs(model, config, methods, RecipeInputs(
        calibration=calibration, training=training, example_input=example_input, statistics=statistics,
        device=_device(model, device), progress=progress, measure_error=measure_error))


def _device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def quantize_with_inputs(model: nn.Module, config: QuantConfig, methods: Methods, inputs: RecipeInputs,
                         fingerprint: str | None = None) -> QuantizedNetwork:
    """``quantize`` with every input of the recipe spelled out (``RecipeInputs``: stored state to
    reuse, the processes of a distributed run, ...): what ``load`` and the CLI call."""
    fingerprint = fingerprint or weights_fingerprint(model)
    if inputs.example_input is None:
        from pytorch_quantizer.api.recipe import first_images

        inputs.example_input = first_images(inputs.calibration)
    quantized, state, report = run_recipe(model, config, methods, inputs)
    return QuantizedNetwork(quantized, config, methods, state, report, fingerprint, tuple(inputs.example_input.shape))


def save(qmodel: QuantizedNetwork, path: str | Path) -> Path:
    """Write what ``qmodel`` was made of (recipe, statistics, learned rounding, calibrated and
    fine-tuned quantizers, bias corrections, the fingerprint of the float weights) as one safe,
    versioned, data-only file (``formats.saved_model``), atomically. Returns the path."""
    if not isinstance(qmodel, QuantizedNetwork):
        raise QuantizationError(f"save takes what quantize returned, not {type(qmodel).__name__}")
    path = Path(path)
    save_model_state(path, fingerprint=qmodel.fingerprint, config=config_as_dict(qmodel.config),
                     methods=methods_as_dict(qmodel.methods), input_shape=list(qmodel.input_shape), state=qmodel.state)
    return path


def load(model: nn.Module, path: str | Path, config: QuantConfig | None = None, *,
         device: torch.device | str | None = None) -> QuantizedNetwork:
    """The quantized model ``save`` wrote, rebuilt on ``model`` (the float model it was made from)
    without calibration data: the same logits. Refused, with the reason, when ``model``'s weights
    are not those it was made from, or ``config`` (when given) is not its recipe."""
    path = Path(path)
    payload = load_model_state(path, LOAD_FIX)
    fingerprint = weights_fingerprint(model)
    if fingerprint != payload["fingerprint"]:
        raise QuantizationError(f"{path} was made for other weights than this model's (their fingerprints differ); "
                                "load it into the float model it was quantized from, or quantize this one",
                                code="other_weights")
    saved_config = config_from_dict(payload["config"])
    if config is not None and config != saved_config:
        differing = next(name for name in QuantConfig.__dataclass_fields__
                         if getattr(config, name) != getattr(saved_config, name))
        raise QuantizationError(f"{path} was made with another recipe: its {differing} is "
                                f"{getattr(saved_config, differing)!r:.120}, this config's "
                                f"{getattr(config, differing)!r:.120}; pass its recipe or quantize again",
                                code="other_recipe", field=differing)
    try:
        methods = Methods(**payload["methods"])
    except TypeError as error:
        raise QuantizationError(f"{path}: its methods are not this tool's ({error}); {LOAD_FIX}") from None
    state = RecipeState(statistics=payload["statistics"], rounding=payload["rounding"],
                        activation_scales=payload["activation_scales"],
                        family_plans=payload["family_plans"], trained=payload["trained"],
                        bias_corrections=payload["bias_corrections"])
    example = torch.zeros(payload["input_shape"])
    per_batch = state.statistics is None
    return quantize_with_inputs(model, saved_config, methods, RecipeInputs(
        example_input=example, statistics=Statistics(per_batch=per_batch), state=state, device=_device(model, device)),
        fingerprint)


@dataclass(frozen=True)
class OnnxExport:
    """The files ``export_onnx`` wrote and how many tensors carry a quantization encoding."""

    model_path: Path
    encodings_path: Path
    quantized_tensors: int


def export_onnx(qmodel: QuantizedNetwork, path: str | Path, example_input: torch.Tensor | None = None) -> OnnxExport:
    """Write ``qmodel`` as ONNX (opset 21) with QuantizeLinear / DequantizeLinear pairs carrying its
    scales and zero points, and its encodings beside it (``PATH`` minus ``.onnx`` + ``.encodings.json``),
    each atomically. Needs fixed activation ranges (quantized with calibration images) and an
    integer-grid recipe (``export.onnx.export_problem`` says why not)."""
    from pytorch_quantizer.export.onnx import export_qdq, save_export

    path = Path(path)
    if path.suffix != ".onnx":
        raise QuantizationError(f"{path}: name the file *.onnx (the encodings go beside it)", field="path")
    example = example_input if example_input is not None else torch.zeros(qmodel.input_shape)
    device = next(qmodel.module.parameters()).device
    proto, encodings = export_qdq(qmodel.quantized, example[:1].to(device))
    return OnnxExport(path, save_export(proto, encodings, path), len(encodings))
