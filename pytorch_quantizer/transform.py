"""Model transformation: a quantized copy of a model inside a context manager.

On entry: deep copy (unless ``inplace``), BatchNorm folded into the preceding convs, a plan per
Conv/Linear layer from the config and name patterns, weights quantized once (with bias/variance
correction), activation hooks attached keyed by module name: forward hooks quantize Conv/Linear
outputs (``act_quant_point=output``, the seed's convention: a following ReLU / ReLU6 is fused as a
range starting at 0, and the statistics are those of the pre-activation output), or forward
pre-hooks quantize the input of every GEMM (``input``). On exit the hooks are removed.

Activation statistics come from each batch on the fly, or from ``use_statistics`` (offline). With
offline statistics and ``bias_correct_activations`` (not ``bca_folded``), every Conv output is
corrected online as the seed does (``bias_correction.correct_positive_outputs``).
"""
from __future__ import annotations

import copy
import fnmatch
import math
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from pytorch_quantizer import adaround, families, primitives
from pytorch_quantizer.bias_correction import correct_positive_outputs, correct_weights
from pytorch_quantizer.config import ActQuantPoint, QuantConfig, TensorQuantSpec, WeightKind
from pytorch_quantizer.entropy import weighted_average
from pytorch_quantizer.errors import InputError
from pytorch_quantizer.family_activations import FamilyActivations
from pytorch_quantizer.graph import GEMM_LAYERS, ChannelClamp, ModelGraph, fold_batch_norms, has_spatial_extent, trace_graph
from pytorch_quantizer.int32_bias import accumulator_bias
from pytorch_quantizer.kmeans import kmeans_quantize
from pytorch_quantizer.layer_measures import LayerMeasures, value_codes
from pytorch_quantizer.observers import ObservedLayer, StatsAccumulator, observe, observing
from pytorch_quantizer.quantizer import QuantPlan, apply_plan, plan_quantization
from pytorch_quantizer.stats import TensorStats

ACTIVATION_AXIS = 1
RELU6_CEILING = 6.0


@dataclass(frozen=True)
class LayerPlan:
    name: str
    layer_type: str
    activation: TensorQuantSpec | None
    weight: TensorQuantSpec | None
    fused_activation: type | None = None
    kept_8bit: bool = False
    per_tensor_only: bool = False   # kept at 8 bits, or an activation without spatial extent


def observed_layer(spec: TensorQuantSpec, axis: int, image_averaged_range: bool = False) -> ObservedLayer:
    """What to observe for a tensor quantized per ``spec`` (channel ``axis`` when per channel)."""
    return ObservedLayer(axis if spec.per_channel else None, spec.clipping, spec.bits, image_averaged_range)


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def kept_at(spec: TensorQuantSpec | None, bits: int, min_max_per_tensor: bool = False) -> TensorQuantSpec | None:
    """``spec`` at ``bits`` without allocation (unchanged when already that wide); with
    ``min_max_per_tensor`` over the tensor's min / max, as the seed quantizes its classifier output."""
    if spec is None:
        return None
    if spec.bits < bits or spec.bit_allocation or spec.bin_allocation or not spec.kind.grid:
        spec = spec.at_bits(max(bits, spec.bits))
    return replace(spec, per_channel=False, clipping="no") if min_max_per_tensor else spec


def per_tensor(spec: TensorQuantSpec | None) -> TensorQuantSpec | None:
    """``spec`` per tensor (allocation, which is per channel, dropped)."""
    if spec is None or not spec.per_channel:
        return spec
    return replace(spec, per_channel=False, bit_allocation=False, bin_allocation=False, allocation_target=None)


def plan_layers(model: nn.Module, config: QuantConfig, graph: ModelGraph) -> dict[str, LayerPlan]:
    """One plan per Conv2d/Linear: float where ``keep_fp`` matches, 8 bits where ``keep_8bit`` does.
    Activations without spatial extent (Linear, 1x1 feature maps) are quantized per tensor even when
    activations are per channel, as the seed does."""
    at_output = config.act_quant_point == ActQuantPoint.OUTPUT
    shapes = graph.output_shapes if at_output else graph.input_shapes
    plans = {}
    for name, module in model.named_modules():
        if not isinstance(module, GEMM_LAYERS):
            continue
        activation, weight = config.activations, config.weights
        kept = not matches(name, config.keep_fp) and matches(name, config.keep_8bit)
        if matches(name, config.keep_fp):
            activation = weight = None
        elif kept:
            activation, weight = kept_at(activation, 8, min_max_per_tensor=True), kept_at(weight, 8)
        flat = not has_spatial_extent(shapes.get(name, ()))
        if flat:
            activation = per_tensor(activation)
        fused_activation = graph.activation_after.get(name) if at_output else None
        plans[name] = LayerPlan(name, type(module).__name__, activation, weight, fused_activation, kept, kept or flat)
    check_patterns_match(list(plans), config)
    return plans


def check_patterns_match(layer_names: list[str], config: QuantConfig) -> None:
    """A keep-8bit / keep-fp pattern that matches no layer is a typo: the run would not be the one asked for."""
    for flag, patterns in (("--keep-8bit", config.keep_8bit), ("--keep-fp", config.keep_fp)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in layer_names):
                examples = ", ".join(layer_names[:2] + ["...", layer_names[-1]]) if layer_names else "none"
                raise InputError(f"{flag} {pattern} matches no Conv2d / Linear layer of the model (its layers: "
                                 f"{examples}); pass a layer name or an fnmatch pattern such as 'layer1.*'")
    if layer_names and all(matches(name, config.keep_fp) for name in layer_names):
        raise InputError(f"--keep-fp {' '.join(config.keep_fp)} leaves every Conv2d / Linear layer in float, so nothing "
                         "is quantized; narrow the patterns, or drop --qtype / -qw for an FP32 run")


@dataclass
class QuantizedModel:
    """``with QuantizedModel(model, config, example_input) as quantized: quantized.model(x)``."""

    source: nn.Module
    config: QuantConfig
    example_input: torch.Tensor
    inplace: bool = False
    measure_error: bool = False
    model: nn.Module = field(init=False)
    plans: dict[str, LayerPlan] = field(init=False, default_factory=dict)
    activation_stats: dict[str, TensorStats] | None = field(init=False, default=None)
    weight_measures: dict[str, LayerMeasures] = field(init=False, default_factory=dict)
    activation_measures: dict[str, LayerMeasures] = field(init=False, default_factory=dict)
    float_params: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(init=False, default_factory=dict)
    family_activations: FamilyActivations = field(init=False, default_factory=FamilyActivations)
    weight_roundings: dict[str, torch.Tensor] = field(init=False, default_factory=dict)  # learned (adaround)

    def __post_init__(self):
        self._handles = []
        self._fused_clamps: dict[str, ChannelClamp] = {}
        self._straight_through: tuple[float, torch.Generator] | None = None
        self._bypass = False
        self._rounding_calls = 0
        self._fixed_plans: dict[str, QuantPlan] = {}
        self._input_producers: dict[str, str] = {}
        self.bias_scales: dict[str, torch.Tensor] = {}   # int32_bias: layer -> s_x s_w per output channel
        self._grid_overrides: dict[str, adaround.Grid] = {}   # int32_bias: weight grids with raised scales

    def __enter__(self) -> "QuantizedModel":
        self.model = self.source if self.inplace else copy.deepcopy(self.source)
        self.model.eval()
        graph = trace_graph(self.model, self.example_input)
        fold_batch_norms(self.model, graph.bn_after_conv)
        self.plans = plan_layers(self.model, self.config, graph)
        self._fused_clamps = graph.clamps_after
        self._input_producers = graph.input_producers
        for name, plan in self.plans.items():
            module = self.model.get_submodule(name)
            bias = module.bias.detach().clone() if module.bias is not None else None
            self.float_params[name] = (module.weight.detach().clone(), bias)
            if plan.weight is not None:
                self.quantize_weight(name, module, plan.weight)
        for name, plan in self.activation_plans().items():
            module = self.model.get_submodule(name)
            self.activation_measures[name] = LayerMeasures()
            if self.at_output:
                self._handles.append(module.register_forward_hook(self.output_hook(name)))
            else:
                self._handles.append(module.register_forward_pre_hook(self.input_hook(name)))
            if not plan.activation.kind.grid and self.family_activations.add_layer(name, plan.activation):
                self._handles.append(module.register_forward_hook(self.xnor_output_hook(name)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def at_output(self) -> bool:
        return self.config.act_quant_point == ActQuantPoint.OUTPUT

    def activation_plans(self) -> dict[str, LayerPlan]:
        return {name: plan for name, plan in self.plans.items() if plan.activation is not None}

    def rounding_seed(self) -> int | None:
        """None (round to nearest), or with stochastic rounding a fresh seed per quantized tensor,
        derived from the config seed and a call counter (reproducible run to run)."""
        if not self.config.stochastic:
            return None
        self._rounding_calls += 1
        return (self.config.seed * 1_000_003 + self._rounding_calls) % (2**62)

    # --- weights -------------------------------------------------------------------------

    @torch.no_grad()
    def quantize_weight(self, name: str, module: nn.Module, spec: TensorQuantSpec) -> None:
        weight = module.weight.detach()
        measures = LayerMeasures(elements=weight.numel())
        if spec.kind == WeightKind.KMEANS:
            values, codes = kmeans_quantize(weight, spec.bits, spec.per_channel, self.config.seed)
            measures.mean_bits = float(spec.bits)
        elif not spec.kind.grid:
            values, codes = families.quantize_weight(weight, spec.kind, spec.bits, spec.per_channel)
            measures.mean_bits = float(spec.bits)
        else:
            plan = plan_quantization(observe(weight, observed_layer(spec, 0)), spec, self.config, False, weights=True)
            up = self.weight_roundings.get(name)
            if up is None:
                outcome = apply_plan(weight, plan, 0, seed=self.rounding_seed(), want_codes=True)
                values, codes = outcome.values, outcome.codes
            else:
                grid = adaround.Grid(plan.scale, plan.zero_point, plan.qmax)
                codes = adaround.rounded_codes(weight, grid, up.to(weight.device))
                values = adaround.rounded_weight(weight, grid, up.to(weight.device))
            measures.mean_bits = float(plan.bits.float().mean())
            measures.clip_mean = float(((plan.hi - plan.lo) / 2).mean())
        if self.config.bias_correct_weights or self.config.variance_correct_weights:
            values = correct_weights(weight, values, self.config.bias_correct_weights, self.config.variance_correct_weights)
        measures.add_codes(codes)
        measures.add_error(weight, values)
        self.weight_measures[name] = measures
        module.weight.data.copy_(values)

    def weight_grid(self, name: str) -> "adaround.Grid | None":
        """The GEMMLOWP grid of the layer's weight (from its float weight, with ``int32_bias``'s raised
        scales), None where its weight is float, of another kind, or on mid-tread bins."""
        spec = self.plans[name].weight
        if spec is None or spec.kind != WeightKind.INT:
            return None
        if name in self._grid_overrides:
            return self._grid_overrides[name]
        weight = self.float_params[name][0]
        plan = plan_quantization(observe(weight, observed_layer(spec, 0)), spec, self.config, False, weights=True)
        return None if plan.mid_tread else adaround.Grid(plan.scale, plan.zero_point, plan.qmax)

    @torch.no_grad()
    def use_weight_rounding(self, name: str, up: torch.Tensor) -> None:
        """Quantize the layer's weight again with a learned rounding (``adaround``: 1 rounds up)."""
        self.weight_roundings[name] = up.detach().float()
        module = self.model.get_submodule(name)
        module.weight.data.copy_(self.float_params[name][0])
        self.quantize_weight(name, module, self.plans[name].weight)
        if self.config.int32_bias and self.activation_stats is not None:
            self.round_biases()

    @torch.no_grad()
    def record_trained_weight(self, name: str, float_weight: torch.Tensor, quantized_weight: torch.Tensor) -> None:
        """A weight set by training (``qat``): the float one becomes the layer's float parameter."""
        module = self.model.get_submodule(name)
        bias = module.bias.detach().clone() if module.bias is not None else None
        self.float_params[name] = (float_weight, bias)
        if self.plans[name].weight is None:
            return
        spec = self.plans[name].weight
        measures = LayerMeasures(elements=float_weight.numel(), mean_bits=float(spec.bits))
        measures.add_codes(value_codes(quantized_weight, spec.per_channel))
        measures.add_error(float_weight, quantized_weight)
        self.weight_measures[name] = measures

    @torch.no_grad()
    def requantize_weight(self, name: str) -> None:
        """The layer's current (trained) float weight becomes its float parameter and is quantized per its plan."""
        module = self.model.get_submodule(name)
        bias = module.bias.detach().clone() if module.bias is not None else None
        self.float_params[name] = (module.weight.detach().clone(), bias)
        if self.plans[name].weight is not None:
            self.quantize_weight(name, module, self.plans[name].weight)

    # --- activations ---------------------------------------------------------------------

    def observed_layers(self, per_channel: bool | None = None, image_averaged_range: bool = False
                        ) -> dict[str, ObservedLayer]:
        """What statistics collection must observe for this plan (per layer axis, clipping, bits);
        ``per_channel`` overrides the plan's granularity (a statistics file of the other kind) except
        at layers kept at 8 bits or without spatial extent, which are per tensor in both;
        ``image_averaged_range``: min / max averaged over each batch's images (the seed's -sba),
        except at layers kept at 8 bits (the seed's classifier takes the batch's)."""
        layers = {name: observed_layer(plan.activation, ACTIVATION_AXIS, image_averaged_range and not plan.kept_8bit)
                  for name, plan in self.activation_plans().items()}
        if per_channel is None:
            return layers
        axis = ACTIVATION_AXIS if per_channel else None
        fixed = {name for name, plan in self.plans.items() if plan.per_tensor_only}
        return {name: layer if name in fixed else replace(layer, axis=axis) for name, layer in layers.items()}

    def kept_layers(self) -> set[str]:
        """Layers whose activations are kept at 8 bits over their min / max."""
        return {name for name, plan in self.activation_plans().items() if plan.kept_8bit}

    def use_statistics(self, stats: dict[str, TensorStats] | None) -> None:
        """Quantize activations with these statistics (offline) instead of each batch's (None); with
        ``int32_bias`` the biases go on their accumulator grids, which the fixed ranges define."""
        self.activation_stats = stats
        self._fixed_plans = {}
        if self.config.int32_bias and stats is not None:
            self.round_biases()

    def input_grid_scale(self, name: str) -> torch.Tensor | None:
        """The scale of the per-tensor grid that the layer's input lies on exactly, if any: its own
        input quantization (GEMM inputs), or the output quantization of the layer it reads (outputs),
        which a following ReLU / ReLU6 leaves on the grid where the grid starts at 0 (zero point 0)
        and an equalized per-channel clamp does not."""
        source = name if not self.at_output else self._input_producers.get(name)
        plan = self.plans.get(source) if source is not None else None
        if plan is None or plan.activation is None or not plan.activation.kind.grid or plan.activation.per_channel:
            return None
        grid = self.activation_plan(source)
        if grid.mid_tread:
            return None
        fused = plan.fused_activation if self.at_output else None
        if fused is ChannelClamp or (fused is not None and float(grid.zero_point) != 0):
            return None
        return grid.scale.float().reshape(())

    @torch.no_grad()
    def round_biases(self) -> None:
        """Each bias on its accumulator grid (``int32_bias.accumulator_bias``) where the layer's input
        lies on a grid; a raised weight scale re-quantizes its channels and serves ``weight_grid``."""
        self.bias_scales, self._grid_overrides = {}, {}
        for name in self.plans:
            module = self.model.get_submodule(name)
            grid, float_bias = self.weight_grid(name), self.float_params[name][1]
            input_scale = self.input_grid_scale(name) if grid is not None and float_bias is not None else None
            placed = accumulator_bias(float_bias, input_scale, grid) if input_scale is not None else None
            if placed is None:
                continue
            module.bias.data.copy_(placed.values)
            self.bias_scales[name] = placed.scale
            if bool(placed.raised.any()):
                self._grid_overrides[name] = placed.grid
                channels = placed.raised
                module.weight.data[channels] = primitives.fake_quantize(
                    self.float_params[name][0][channels], placed.grid.scale[channels],
                    placed.grid.zero_point[channels], placed.grid.qmax.expand(channels.shape[0])[channels], 0)

    def fused_output(self, name: str, output: torch.Tensor) -> torch.Tensor:
        fused = self.plans[name].fused_activation
        if fused is nn.ReLU:
            return torch.relu(output)
        if fused is nn.ReLU6:
            return torch.clamp(output, 0.0, 6.0)
        if fused is ChannelClamp:
            return self._fused_clamps[name](output)
        return output

    def observed_value(self, name: str, output: torch.Tensor) -> torch.Tensor:
        """What is observed and quantized at a layer output: the pre-activation output (the seed's),
        or with ``rectified_aciq`` the output of the fused ReLU / ReLU6."""
        return self.fused_output(name, output) if self.config.departures.rectified_aciq else output

    def starts_at_zero(self, name: str, stats: TensorStats) -> bool:
        """At outputs, where a ReLU / ReLU6 is fused (the seed's half range); at inputs, where the
        statistics show no negative value."""
        return self.plans[name].fused_activation is not None if self.at_output else stats.non_negative

    def ceiling(self, name: str) -> float | None:
        """A fused ReLU6 is fused whole: the range ends at 6 (the seed's models have only ReLU, whose
        fusion is the range starting at 0); equalization's per-channel ReLU6 at its highest ceiling."""
        fused = self.plans[name].fused_activation
        if fused is ChannelClamp:
            highest = float(self._fused_clamps[name].upper.max())
            return highest if math.isfinite(highest) else None
        return RELU6_CEILING if fused is nn.ReLU6 else None

    def image_averaged_online(self, name: str) -> bool:
        """The seed's per-batch range of a per-tensor activation without clipping: each image's
        min / max averaged over the batch (not at the 8-bit classifier; the departure ``batch_range``
        takes the batch's)."""
        plan = self.plans[name]
        spec = plan.activation
        return not (self.config.departures.batch_range or spec.per_channel or spec.clipping != "no" or plan.kept_8bit)

    @torch.no_grad()
    def quantize_family_activation(self, name: str, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """The other seeds' kinds (``family_activations``): XNOR's sign or a level plan."""
        spec = self.plans[name].activation
        values, codes = self.family_activations.quantize(name, spec, x, module, self.config.measure_entropy)
        measures = self.activation_measures[name]
        measures.elements += x.numel()
        measures.mean_bits = float(spec.bits)
        if codes is not None:
            measures.add_codes(codes)
        if self.measure_error:
            measures.add_error(x, values)
        return values.to(x.dtype)

    def xnor_output_hook(self, name: str):
        def hook(module, args, output):
            if self._bypass:
                return None
            return self.family_activations.xnor_output(name, output, module)
        return hook

    def activation_plan(self, name: str) -> QuantPlan:
        """The layer's activation grid from the fixed (offline) statistics, planned once per layer."""
        if name not in self._fixed_plans:
            stats = self.activation_stats.get(name)
            if stats is None:
                raise InputError(f"layer {name} runs but has no statistics (calibration never reached it); "
                                 "collect them again with -sm collect (same model and flags)")
            self._fixed_plans[name] = plan_quantization(stats, self.plans[name].activation, self.config,
                                                        self.starts_at_zero(name, stats), ceiling=self.ceiling(name))
        return self._fixed_plans[name]

    def fused_activation_module(self, name: str) -> nn.Module | None:
        """The ReLU / ReLU6 / ChannelClamp fused at the layer's output, as a module (None without one)."""
        fused = self.plans[name].fused_activation
        return self._fused_clamps[name] if fused is ChannelClamp else (fused() if fused is not None else None)

    @torch.no_grad()
    def quantize_activation(self, name: str, x: torch.Tensor) -> torch.Tensor:
        spec = self.plans[name].activation
        if self.activation_stats is not None:
            plan = self.activation_plan(name)
        else:
            stats = observe(x, observed_layer(spec, ACTIVATION_AXIS, self.image_averaged_online(name)))
            plan = plan_quantization(stats, spec, self.config, self.starts_at_zero(name, stats),
                                     ceiling=self.ceiling(name))
        outcome = apply_plan(x, plan, ACTIVATION_AXIS, seed=self.rounding_seed(), want_codes=self.config.measure_entropy)
        measures = self.activation_measures[name]
        measures.elements += x.numel()
        if self.measure_error or outcome.codes is not None:
            measures.mean_bits = float(outcome.bits.float().mean())
            measures.clip_mean = float(((outcome.hi - outcome.lo) / 2).mean())
        if outcome.codes is not None:
            measures.add_codes(outcome.codes)
        if self.measure_error:
            measures.add_error(x, outcome.values)
        return outcome.values

    def input_hook(self, name: str):
        def hook(module, args):
            if self._bypass:
                return None
            if not self.plans[name].activation.kind.grid:
                quantized = self.quantize_family_activation(name, args[0], module)
            else:
                quantized = self.quantize_activation(name, args[0])
            return (self._passed_on(args[0], quantized),) + tuple(args[1:])
        return hook

    @property
    def corrects_outputs_online(self) -> bool:
        """The seed's -bca: with offline statistics, each Conv output corrected per batch."""
        config = self.config
        return (config.bias_correct_activations and not config.departures.bca_folded
                and self.activation_stats is not None)

    def output_hook(self, name: str):
        def hook(module, args, output):
            if self._bypass:
                return None
            quantized = self.quantize_activation(name, self.observed_value(name, output))
            if self.corrects_outputs_online and isinstance(module, nn.Conv2d):
                quantized = correct_positive_outputs(self.fused_output(name, output), quantized)
            return self._passed_on(output, quantized)
        return hook

    def _passed_on(self, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        """The quantized activation, or inside ``straight_through`` x + (q(x) - x) with the gradient of
        x, each element kept at x instead with the QDrop probability."""
        if self._straight_through is None:
            return quantized
        drop_probability, generator = self._straight_through
        passed = x + (quantized - x).detach()
        if drop_probability <= 0:
            return passed
        kept = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) < drop_probability
        return torch.where(kept, x, passed)

    @contextmanager
    def straight_through(self, drop_probability: float = 0.0, seed: int = 0):
        """For the block, activation quantization lets gradients through (straight-through) and drops
        to float per element with ``drop_probability`` (QDrop, Wei et al. 2022), for learning."""
        previous = self._straight_through
        self._straight_through = (drop_probability, torch.Generator().manual_seed(seed))
        try:
            yield
        finally:
            self._straight_through = previous

    # --- statistics collection ------------------------------------------------------------

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
        """For the block, the BN-folded float model: float weights back in place and activation
        quantization bypassed (the seed collects statistics on it)."""
        quantized, rounded_biases = {}, {}
        for name, (weight, bias) in self.float_params.items():
            module = self.model.get_submodule(name)
            quantized[name] = module.weight.detach().clone()
            module.weight.data.copy_(weight)
            if name in self.bias_scales:
                rounded_biases[name] = module.bias.detach().clone()
                module.bias.data.copy_(bias)
        try:
            with self.bypassed():
                yield self.model
        finally:
            for name, weight in quantized.items():
                self.model.get_submodule(name).weight.data.copy_(weight)
            for name, bias in rounded_biases.items():
                self.model.get_submodule(name).bias.data.copy_(bias)

    def collect_statistics(self, batches, device: torch.device, also_other_granularity: bool = False,
                           image_averaged_range: bool = False
                           ) -> dict[str, StatsAccumulator] | tuple[dict[str, StatsAccumulator], dict[str, StatsAccumulator]]:
        """Run ``batches`` through the float model (the seed's; through the quantized one with
        on-the-fly statistics with the departure ``calibrate_quantized``) and observe each layer's
        activations where they would be quantized, before quantization.

        Returns {layer: StatsAccumulator} of the plan's granularity; with ``also_other_granularity``
        a pair (the plan's, the other one's: per tensor for a per-channel plan and vice versa),
        observed in the same pass. ``image_averaged_range``: the seed's -sba."""
        previous = self.activation_stats
        self.activation_stats = None
        per_channel = any(layer.axis is not None for layer in self.observed_layers().values())
        variants = [self.observed_layers(None, image_averaged_range)]
        if also_other_granularity:
            variants.append(self.observed_layers(not per_channel, image_averaged_range))
        model = nullcontext() if self.config.departures.calibrate_quantized else self.float_model()
        try:
            with ExitStack() as stack:
                stack.enter_context(model)
                collected = [stack.enter_context(observing(self.model, layers, self.at_output, self.observed_value))
                             for layers in variants]
                with torch.inference_mode():
                    for inputs, _ in batches:
                        self.model(inputs.to(device))
        finally:
            self.activation_stats = previous
        return tuple(collected) if also_other_granularity else collected[0]

    # --- results ------------------------------------------------------------------------

    def merge_activation_measures(self, sum_over_processes) -> None:
        """Combine the activation figures of processes that evaluated other batches (weights are the
        same in every process and are not summed)."""
        for name in sorted(self.activation_measures):
            self.activation_measures[name].merge(sum_over_processes)

    def entropy_summary(self) -> dict[str, float]:
        """Per-layer entropy / Huffman bits and their element-weighted averages."""
        summary = {}
        for kind, measures in (("act", self.activation_measures), ("weight", self.weight_measures)):
            measured = {name: m for name, m in measures.items() if m.histogram is not None and m.elements}
            if not measured:
                continue
            entropies = {name: m.entropy for name, m in measured.items()}
            huffman = {name: m.huffman for name, m in measured.items()}
            elements = {name: m.elements for name, m in measured.items()}
            summary[f"avg.entropy.{kind}"] = weighted_average(entropies, elements)
            summary[f"avg.huffman.{kind}"] = weighted_average(huffman, elements)
            for name in measured:
                summary[f"entropy.{kind}.{name}"] = entropies[name]
        return summary

    def layer_report(self) -> list[dict]:
        rows = []
        for name, plan in self.plans.items():
            for kind, spec, measures in (("weight", plan.weight, self.weight_measures.get(name)),
                                         ("activation", plan.activation, self.activation_measures.get(name))):
                if spec is None or measures is None:
                    continue
                rows.append({"layer": name, "type": plan.layer_type, "tensor": kind, "bits": measures.mean_bits,
                             "clipping": spec.clipping, "clip_value": measures.clip_mean, "mse": measures.mse,
                             "sqnr_db": measures.sqnr_db, "entropy": measures.entropy, "huffman": measures.huffman,
                             "elements": measures.elements})
        return rows
