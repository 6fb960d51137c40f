"""Short quantization-aware fine-tuning of a post-training quantized model (the other seeds' kinds).

The BN-folded float weights train under quantizers that round in the forward pass and pass
gradients straight through (STE) in the backward pass:
- uniform / pot / apot: w_hat = mean + std * alpha * ste(clip(w_n / alpha, -1, 1)), w_n the
  normalised weight, ste(u) = u forward-rounded to the nearest level; alpha is learnable (APoT), its
  gradient sign(w_n) outside the clipping range and Q(u) - u inside, as in the APoT paper;
  activations alike on [0, 1] (or [-1, 1] where they go negative), alpha learnable.
- binary (XNOR): alpha_c * sign(W) with the identity gradient; activations sign(x) with gradient
  1{|x| <= 1} and the output scaled by K.
- ternary (TWN), dorefa: their maps with the rounding / thresholding passed straight through.
- n2uq: the thresholds (start, interval lengths) and the output grid learn through G-STE
  (``n2uq.n2uq_quantize``), for weights and activations.
The layers kept at 8 bits (first and last, as the papers keep them) train in float and are
quantized to 8 bits again afterwards. Every quantizer starts from its post-training calibration.
After training the weights are fixed at their quantized values and the learned activation
quantizers become the level plans evaluation uses, so evaluation runs the trained quantizers
exactly.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from pytorch_quantizer.quantizers import families
from pytorch_quantizer.maths import level_sets, n2uq, primitives
from pytorch_quantizer.quantizers.config import WeightKind
from pytorch_quantizer.quantizers.families import LevelPlan
from pytorch_quantizer.model.weights import record_trained_weight, requantize_weight

QAT_KINDS = tuple(kind for kind in WeightKind if not kind.grid)


def ste(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """``rounded`` forward, the identity gradient backward."""
    return x + (rounded - x).detach()


def nearest_levels(u: torch.Tensor, levels: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """The level of each element: levels[#{j : u >= thresholds_j}] (ties to the upper level)."""
    return levels[torch.searchsorted(thresholds, u.detach().contiguous(), right=True)]


class LevelQuantizer(nn.Module):
    """alpha * ste(clip(u / alpha, levels[0], 1)) per tensor (or per output channel of weights)."""

    def __init__(self, levels: torch.Tensor, alpha: torch.Tensor, normalize: bool):
        super().__init__()
        self.register_buffer("levels", levels.float())
        self.register_buffer("thresholds", primitives.midpoint_thresholds(levels))
        self.alpha = nn.Parameter(alpha.detach().float().clone())
        self.normalize = normalize

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.abs().clamp_min(1e-8).reshape(-1, *([1] * (x.dim() - 1)) if self.alpha.dim() else ())
        u = torch.maximum(torch.minimum(x / alpha, self.levels[-1]), self.levels[0])
        return alpha * ste(u, nearest_levels(u, self.levels, self.thresholds))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return self.scaled(x)
        mean, std = x.mean(), x.std().clamp_min(1e-12)
        return mean + std * self.scaled((x - mean) / std)

    def plan(self) -> LevelPlan:
        return families.levels_plan(self.levels, self.alpha.detach().abs().clamp_min(1e-8))


class N2UQQuantizer(nn.Module):
    """Learnable N2UQ thresholds and output grid (G-STE), parameterised relative to the output step
    (log step, log interval lengths and start / offset in steps) so that an optimizer step moves
    them by a fraction of their size whatever the tensor's scale."""

    def __init__(self, params: n2uq.N2UQParams):
        super().__init__()
        step = params.step.detach().float().clamp_min(n2uq.MIN_INTERVAL)
        self.log_step = nn.Parameter(step.log().clone())
        self.start_steps = nn.Parameter((params.start.detach().float() / step).clone())
        self.log_interval_steps = nn.Parameter((params.intervals.detach().float() / step).clamp_min(1e-6).log())
        self.offset_steps = nn.Parameter((params.offset.detach().float() / step).clone())

    def params(self) -> n2uq.N2UQParams:
        step = self.log_step.exp()
        return n2uq.N2UQParams(self.start_steps * step, self.log_interval_steps.exp() * step, self.offset_steps * step,
                               step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return n2uq.n2uq_quantize(x, self.params())

    def plan(self) -> LevelPlan:
        return families.n2uq_plan(self.params())

    @classmethod
    def from_plan(cls, plan: LevelPlan) -> "N2UQQuantizer":
        """The calibrated plan's knots are its output levels (``n2uq.calibrate``)."""
        knots = plan.scale * plan.values
        return cls(n2uq.N2UQParams(knots[0], knots.diff(), knots[0], plan.scale.reshape(())))


class ClosedFormWeights(nn.Module):
    """binary / ternary / dorefa weights, their maps forward and the identity gradient backward
    (DoReFa's tanh stays differentiable: only its rounding is passed straight through)."""

    def __init__(self, kind: WeightKind, bits: int):
        super().__init__()
        self.kind, self.bits = kind, bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.kind == WeightKind.BINARY:
            return ste(weight, level_sets.binarize_weights(weight.detach()))
        if self.kind == WeightKind.TERNARY:
            return ste(weight, level_sets.ternarize_weights(weight.detach()))
        if self.bits == 1:
            return ste(weight, level_sets.dorefa_weights(weight.detach(), 1))
        squashed = torch.tanh(weight)
        unit = squashed / (2 * squashed.abs().max().detach()) + 0.5
        steps = 2 ** self.bits - 1
        mapped = 2 * ste(unit, torch.round(unit * steps) / steps) - 1
        return level_sets.least_squares_scale(weight.detach(), mapped.detach()) * mapped


def weight_quantizer(weight: torch.Tensor, kind: WeightKind, bits: int, per_channel: bool) -> nn.Module:
    """The trainable quantizer of one layer's weight, started at its post-training calibration."""
    if kind in families.LEVEL_KINDS:
        normalized, _, _ = level_sets.normalize_weights(weight)
        levels = level_sets.weight_levels(families.LEVEL_KINDS[kind], bits)
        rows = normalized.flatten(1) if per_channel else normalized.reshape(1, -1)
        alpha = families.mse_alpha(rows, levels)
        return LevelQuantizer(levels, alpha if per_channel else alpha.reshape(()), normalize=True)
    if kind == WeightKind.N2UQ:
        return N2UQQuantizer(n2uq.calibrate(weight, bits))
    return ClosedFormWeights(kind, bits)


class ActivationQuantizer(nn.Module):
    """The trainable quantizer of one layer's input: a level / N2UQ module, DoReFa's clip and
    rounding with STE, or XNOR's sign (its K scales the GEMM output)."""

    def __init__(self, kind: WeightKind, bits: int, plan: LevelPlan | None):
        super().__init__()
        self.kind, self.bits = kind, bits
        self.inner = None
        if kind in families.LEVEL_KINDS:
            self.inner = LevelQuantizer(plan.values, plan.scale.reshape(()), normalize=False)
        elif kind == WeightKind.N2UQ:
            self.inner = N2UQQuantizer.from_plan(plan)
        self.xnor_scale: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        if self.inner is not None:
            return self.inner(x)
        if self.kind == WeightKind.DOREFA:
            clipped = x.clamp(0, 1)
            return ste(clipped, level_sets.quantize_unit(clipped.detach(), self.bits))
        signs, self.xnor_scale = families.xnor_input(x.detach(), module)
        inside = (x.abs() <= 1).to(x.dtype)
        return ste(x * inside, signs)  # forward sign(x), gradient 1{|x| <= 1}

    def plan(self) -> LevelPlan | None:
        return self.inner.plan() if self.inner is not None else None


@dataclass
class QatOutcome:
    losses: list[float] = field(default_factory=list)
    epoch_accuracy: list[float] = field(default_factory=list)


@contextmanager
def training_hooks(model: nn.Module, quantizers: dict[str, ActivationQuantizer]):
    """Pre-hooks quantizing each layer's input, and XNOR's output scaling (removed on exit)."""
    handles = []
    for name, quantizer in quantizers.items():
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(
            lambda module, args, quantizer=quantizer: (quantizer(args[0], module), *args[1:])))
        if quantizer.kind == WeightKind.BINARY:
            handles.append(module.register_forward_hook(
                lambda module, args, output, quantizer=quantizer: families.xnor_output(
                    output, quantizer.xnor_scale, module)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def fine_tune(quantized, batches, epochs: int, lr: float, device: torch.device, progress=None) -> QatOutcome:
    """Train ``quantized`` (a ``QuantizedModel`` whose family activations are calibrated)
    for ``epochs`` passes over ``batches`` with Adam and cross-entropy; ``progress(iterable, epoch)``
    wraps each epoch's batches (a tqdm bar) and gets ``set_postfix`` calls. Afterwards the model's
    weights are the trained quantized ones and its activation plans the learned quantizers."""
    model = quantized.model
    layers = {name: plan for name, plan in quantized.plans.items()}
    for name, (weight, _) in quantized.float_params.items():
        model.get_submodule(name).weight.data.copy_(weight)
    weight_quantizers = {}
    for name, plan in layers.items():
        if plan.weight is not None and plan.weight.kind in QAT_KINDS:
            module = model.get_submodule(name)
            weight_quantizers[name] = weight_quantizer(module.weight.detach(), plan.weight.kind, plan.weight.bits,
                                                       plan.weight.per_channel)
            parametrize.register_parametrization(module, "weight", weight_quantizers[name])
    activation_quantizers = {name: ActivationQuantizer(plan.activation.kind, plan.activation.bits,
                                                       quantized.family_activations.plans.get(name)).to(device)
                             for name, plan in layers.items()
                             if plan.activation is not None and plan.activation.kind in QAT_KINDS}
    parameters = [parameter for parameter in model.parameters()]
    parameters += [parameter for quantizer in activation_quantizers.values() for parameter in quantizer.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    outcome = QatOutcome()
    model.train()
    try:
        with quantized.bypassed(), training_hooks(model, activation_quantizers), torch.enable_grad():
            for epoch in range(epochs):
                correct = seen = 0
                bar = progress(batches, epoch) if progress is not None else batches
                for inputs, labels in bar:
                    inputs, labels = inputs.to(device), labels.to(device)
                    logits = model(inputs)
                    loss = nn.functional.cross_entropy(logits, labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    outcome.losses.append(float(loss.detach()))
                    correct += int((logits.argmax(dim=1) == labels).sum())
                    seen += labels.numel()
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", acc=f"{100 * correct / seen:.1f}")
                outcome.epoch_accuracy.append(100.0 * correct / max(seen, 1))
    finally:
        model.eval()
        settle(quantized, weight_quantizers, activation_quantizers)
    return outcome


@torch.no_grad()
def settle(quantized, weight_quantizers: dict[str, nn.Module], activation_quantizers: dict[str, ActivationQuantizer]):
    """Fix the trained weights at their quantized values (the float ones kept as the model's float
    parameters), re-quantize the 8-bit layers, and hand the learned activation quantizers over as plans."""
    model = quantized.model
    for name in quantized.float_params:
        module = model.get_submodule(name)
        if name in weight_quantizers:
            float_weight = module.parametrizations.weight.original.detach().clone()
            quantized_weight = module.weight.detach().clone()
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            module.weight.data.copy_(quantized_weight)
            record_trained_weight(quantized, name, float_weight, quantized_weight)
        else:
            requantize_weight(quantized, name)
    quantized.family_activations.use({name: plan for name, quantizer in activation_quantizers.items()
                                if (plan := quantizer.plan()) is not None})
