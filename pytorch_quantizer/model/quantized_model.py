"""A quantized copy of a model inside a context manager.

On entry: deep copy (unless ``inplace``), BatchNorm folded into the preceding convs, a plan per
Conv/Linear layer from the config and name patterns (``plans``), weights quantized once
(``weights``), activation hooks attached keyed by module name (``activation_hooks``): forward hooks
quantize Conv/Linear outputs (``act_quant_point=output``, the seed's convention: a following ReLU /
ReLU6 is fused as a range starting at 0, ``fused_activations``), or forward pre-hooks quantize the
input of every GEMM (``input``). On exit the hooks are removed and the float (BN-folded) weights and
biases are put back, so the copy is never left half quantized.

Activation statistics come from each batch on the fly, or from ``use_statistics`` (offline,
collected by ``calibration``). Learning methods switch the hooks off (``bypassed``), back to the
float model (``float_model``) or to straight-through gradients (``learning``).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.maths.stats import TensorStats
from pytorch_quantizer.maths.weight_grid import Grid
from pytorch_quantizer.model import activation_hooks, weights
from pytorch_quantizer.model.family_activations import FamilyActivations
from pytorch_quantizer.model.fused_activations import FusedActivations
from pytorch_quantizer.model.graph import fold_batch_norms, trace_graph
from pytorch_quantizer.model.layer_measures import LayerMeasures
from pytorch_quantizer.model.learning_modes import StraightThrough
from pytorch_quantizer.model.plans import LayerPlan, plan_layers
from pytorch_quantizer.quantizers.config import ActQuantPoint, QuantConfig
from pytorch_quantizer.quantizers.quantizer import QuantPlan, plan_quantization


@dataclass
class QuantizedModel:
    """``with QuantizedModel(model, config, example_input) as quantized: quantized.model(x)``.

    State others read: ``model`` (the hooked copy), ``plans``, ``float_params`` ({layer: (float
    weight, float bias)} after BN folding), ``activation_stats`` (fixed statistics or None),
    ``family_activations``, ``weight_roundings`` (learned), the measures, ``bias_scales`` and
    ``grid_overrides`` (``int32_bias``), ``fused`` and ``learning``."""

    source: nn.Module
    config: QuantConfig
    example_input: torch.Tensor
    inplace: bool = False
    measure_error: bool = False
    device: torch.device | None = None   # where the copy runs (default: where ``source`` is)
    model: nn.Module = field(init=False)
    plans: dict[str, LayerPlan] = field(init=False, default_factory=dict)
    activation_stats: dict[str, TensorStats] | None = field(init=False, default=None)
    weight_measures: dict[str, LayerMeasures] = field(init=False, default_factory=dict)
    activation_measures: dict[str, LayerMeasures] = field(init=False, default_factory=dict)
    float_params: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(init=False, default_factory=dict)
    family_activations: FamilyActivations = field(init=False, default_factory=FamilyActivations)
    weight_roundings: dict[str, torch.Tensor] = field(init=False, default_factory=dict)
    bias_scales: dict[str, torch.Tensor] = field(init=False, default_factory=dict)   # int32_bias: s_x s_w per channel
    grid_overrides: dict[str, Grid] = field(init=False, default_factory=dict)   # int32_bias: raised weight scales
    input_producers: dict[str, str] = field(init=False, default_factory=dict)
    learning: StraightThrough = field(init=False, default_factory=StraightThrough)
    floating: set[str] = field(init=False, default_factory=set)   # layers whose activation hooks pass values on
    activation_scales: dict[str, torch.Tensor] = field(init=False, default_factory=dict)   # learned step sizes (LSQ)

    def __post_init__(self):
        self._handles = []
        self._bypass = False
        self._rounding_calls = 0
        self._fixed_plans: dict[str, QuantPlan] = {}
        self.fused: FusedActivations | None = None

    def __enter__(self) -> "QuantizedModel":
        self.model = self.source if self.inplace else copy.deepcopy(self.source)
        if self.device is not None:
            self.model.to(self.device)
        self.model.eval()
        graph = trace_graph(self.model, self.example_input)
        fold_batch_norms(self.model, graph.bn_after_conv)
        self.plans = plan_layers(self.model, self.config, graph)
        self.fused = FusedActivations(self.plans, graph.clamps_after, self.at_output,
                                      self.config.departures.rectified_aciq)
        self.input_producers = graph.input_producers
        for name, plan in self.plans.items():
            module = self.model.get_submodule(name)
            bias = module.bias.detach().clone() if module.bias is not None else None
            self.float_params[name] = (module.weight.detach().clone(), bias)
            if plan.weight is not None:
                weights.quantize_weight(self, name)
        for name in self.activation_plans():
            self.activation_measures[name] = LayerMeasures()
        self._handles = activation_hooks.attach(self)
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._put_back(dict(self.float_params))
        for name, (_, bias) in self.float_params.items():
            if bias is None:  # a bias that activation bias correction added
                self.model.get_submodule(name).bias = None

    @torch.no_grad()
    def _put_back(self, params: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> dict:
        """Put ``params`` (weight, bias or None to leave it) into the layers; returns what was there."""
        previous = {}
        for name, (weight, bias) in params.items():
            module = self.model.get_submodule(name)
            previous[name] = (module.weight.detach().clone(),
                              module.bias.detach().clone() if bias is not None and module.bias is not None else None)
            module.weight.data.copy_(weight)
            if bias is not None and module.bias is not None:
                module.bias.data.copy_(bias)
        return previous

    @property
    def at_output(self) -> bool:
        return self.config.act_quant_point == ActQuantPoint.OUTPUT

    def activation_plans(self) -> dict[str, LayerPlan]:
        return {name: plan for name, plan in self.plans.items() if plan.activation is not None}

    def kept_layers(self) -> set[str]:
        """Layers whose activations are kept at 8 bits over their min / max."""
        return {name for name, plan in self.activation_plans().items() if plan.kept_8bit}

    def rounding_seed(self) -> int | None:
        """None (round to nearest), or with stochastic rounding a fresh seed per quantized tensor,
        derived from the config seed and a call counter (reproducible run to run)."""
        if not self.config.stochastic:
            return None
        self._rounding_calls += 1
        return (self.config.seed * 1_000_003 + self._rounding_calls) % (2**62)

    def use_statistics(self, stats: dict[str, TensorStats] | None) -> None:
        """Quantize activations with these statistics (offline) instead of each batch's (None); with
        ``int32_bias`` the biases go on their accumulator grids, which the fixed ranges define."""
        self.activation_stats = stats
        self._fixed_plans = {}
        if self.config.int32_bias and stats is not None:
            weights.round_biases(self)

    def activation_plan(self, name: str) -> QuantPlan:
        """The layer's activation grid from the fixed (offline) statistics, planned once per layer."""
        if name not in self._fixed_plans:
            stats = self.activation_stats.get(name)
            if stats is None:
                raise QuantizationError(f"layer {name} runs but has no statistics (calibration never reached it); "
                                        "calibrate again with images that run through every layer",
                                        code="layer_without_statistics", detail=name)
            plan = plan_quantization(stats, self.plans[name].activation, self.config,
                                     self.fused.starts_at_zero(name, stats), ceiling=self.fused.ceiling(name))
            learned = self.activation_scales.get(name)
            if learned is not None:   # a step size learned with the rounding (LSQ): the same codes, another step
                scale = learned.to(plan.scale.device, plan.scale.dtype).reshape(plan.scale.shape)
                plan = replace(plan, scale=scale, lo=(0 - plan.zero_point) * scale, hi=(plan.qmax - plan.zero_point) * scale)
            self._fixed_plans[name] = plan
        return self._fixed_plans[name]

    def use_activation_scales(self, scales: dict[str, torch.Tensor]) -> None:
        """Learned activation step sizes replace those of the statistics at these layers."""
        self.activation_scales.update({name: scale.detach().float().cpu() for name, scale in scales.items()})
        for name in scales:
            self._fixed_plans.pop(name, None)
        if self.config.int32_bias and self.activation_stats is not None:
            weights.round_biases(self)

    @property
    def bypassing(self) -> bool:
        return self._bypass

    @contextmanager
    def bypassed(self):
        """Activation quantization off for the block (hooks pass values through)."""
        previous, self._bypass = self._bypass, True
        try:
            yield
        finally:
            self._bypass = previous

    @contextmanager
    def measures_paused(self):
        """The activation figures (codes, errors) of the block's passes are dropped: they are
        calibration passes, not evaluation."""
        saved = copy.deepcopy(self.activation_measures)
        try:
            yield
        finally:
            self.activation_measures = saved

    @contextmanager
    def float_model(self):
        """For the block, the BN-folded float model: float weights (and biases that ``int32_bias``
        rounded) back in place and activation quantization bypassed (the seed collects statistics on it)."""
        float_params = {name: (weight, bias if name in self.bias_scales else None)
                        for name, (weight, bias) in self.float_params.items()}
        quantized = self._put_back(float_params)
        try:
            with self.bypassed():
                yield self.model
        finally:
            self._put_back(quantized)
