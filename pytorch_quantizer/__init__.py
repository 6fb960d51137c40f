"""PTQ simulator for convolutional networks: GEMMLOWP fake quantization, ACIQ clipping, bit / bin
allocation and bias correction (Banner et al., NeurIPS 2019), the APoT, N2UQ, XNOR, TWN and DoReFa
quantizers, cross-layer equalization, AdaRound, block reconstruction with QDrop and ONNX QDQ export,
on any ``nn.Module`` built from Conv2d / Linear layers::

    import pytorch_quantizer as pq
    config = pq.QuantConfig(weights=pq.TensorQuantSpec(bits=4, per_channel=True),
                            activations=pq.TensorQuantSpec(bits=8))
    qmodel = pq.quantize(model, config, calibration=loader)
    logits = qmodel(images)

Sub-packages by role, each importing only those listed before it: ``maths`` (pure tensor maths),
``quantizers`` (configuration, one-tensor quantizers, the kernel backend), ``model`` (the hooked
model, its plans and observers), ``methods`` (equalization, learned rounding, QAT, bias
correction), ``formats`` (safe files), ``export`` (ONNX), ``api`` (what this package exports).

Importing the package does no work: the names below load their modules (and torch) on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pytorch_quantizer.version import __version__

_EXPORTS = {
    "QuantConfig": "pytorch_quantizer.quantizers.config",
    "TensorQuantSpec": "pytorch_quantizer.quantizers.config",
    "WeightKind": "pytorch_quantizer.quantizers.config",
    "Prior": "pytorch_quantizer.quantizers.config",
    "BitRounding": "pytorch_quantizer.quantizers.config",
    "StatsKind": "pytorch_quantizer.quantizers.config",
    "ActQuantPoint": "pytorch_quantizer.quantizers.config",
    "Departures": "pytorch_quantizer.maths.departures",
    "Methods": "pytorch_quantizer.api.options",
    "Rounding": "pytorch_quantizer.api.options",
    "Statistics": "pytorch_quantizer.api.options",
    "quantize": "pytorch_quantizer.api.functions",
    "save": "pytorch_quantizer.api.functions",
    "load": "pytorch_quantizer.api.functions",
    "export_onnx": "pytorch_quantizer.api.functions",
    "OnnxExport": "pytorch_quantizer.api.functions",
    "QuantizedNetwork": "pytorch_quantizer.api.network",
    "RecipeReport": "pytorch_quantizer.api.recipe",
    "evaluate": "pytorch_quantizer.api.evaluation",
    "EvalResult": "pytorch_quantizer.api.evaluation",
    "Fidelity": "pytorch_quantizer.api.evaluation",
    "QuantizationError": "pytorch_quantizer.errors",
    "sensitivity": "pytorch_quantizer.api.analysis",
    "mixed_precision": "pytorch_quantizer.api.analysis",
    "SensitivityReport": "pytorch_quantizer.api.analysis",
    "Budget": "pytorch_quantizer.methods.mixed_precision",
    "MixedPrecisionPlan": "pytorch_quantizer.methods.mixed_precision",
}
__all__ = [
    "ActQuantPoint",
    "BitRounding",
    "Budget",
    "Departures",
    "EvalResult",
    "Fidelity",
    "Methods",
    "MixedPrecisionPlan",
    "OnnxExport",
    "Prior",
    "QuantConfig",
    "QuantizationError",
    "QuantizedNetwork",
    "RecipeReport",
    "Rounding",
    "SensitivityReport",
    "Statistics",
    "StatsKind",
    "TensorQuantSpec",
    "WeightKind",
    "evaluate",
    "export_onnx",
    "load",
    "mixed_precision",
    "quantize",
    "save",
    "sensitivity",
    "__version__",
]

if TYPE_CHECKING:
    from pytorch_quantizer.api.analysis import SensitivityReport, mixed_precision, sensitivity
    from pytorch_quantizer.api.evaluation import EvalResult, Fidelity, evaluate
    from pytorch_quantizer.api.functions import OnnxExport, export_onnx, load, quantize, save
    from pytorch_quantizer.api.network import QuantizedNetwork
    from pytorch_quantizer.api.options import Methods, Rounding, Statistics
    from pytorch_quantizer.api.recipe import RecipeReport
    from pytorch_quantizer.errors import QuantizationError
    from pytorch_quantizer.maths.departures import Departures
    from pytorch_quantizer.methods.mixed_precision import Budget, MixedPrecisionPlan
    from pytorch_quantizer.quantizers.config import (
        ActQuantPoint, BitRounding, Prior, QuantConfig, StatsKind, TensorQuantSpec, WeightKind,
    )


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytorch_quantizer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
