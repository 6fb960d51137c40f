"""Cross-layer equalization and high-bias absorption (Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", ICCV 2019): a data-free float transform made before
quantization.

Chains ``conv1 -> [BN] -> [ReLU | ReLU6] -> conv2`` (conv2 the only reader of each tensor on the way;
depthwise and grouped convs included) are found on a ``torch.fx`` trace. BN is folded. For output
channel i of conv1 with weight range r1_i = max|W1[i]| and the matching input channel of conv2 with
range r2_i = max|W2[:, i]|:

    s_i = sqrt(r1_i / r2_i);   W1[i] /= s_i,  b1[i] /= s_i;   W2[:, i] *= s_i

after which both ranges are sqrt(r1_i r2_i). ReLU commutes with a positive scale; ReLU6 does not,
so the chain's activation becomes a ``ChannelClamp`` whose ceiling moves with the channel
(6 / s_i): the float function is unchanged. Sweeps repeat over all chains (a depthwise conv sits
in two) until the scales settle.

High-bias absorption: with the pre-activation of channel i distributed as N(beta_i, gamma_i) (the
folded BN's shift and scale, in the equalized units), c_i = max(0, beta_i - 3 |gamma_i|) leaves
conv1 and enters conv2's bias through its weights:

    b1[i] -= c_i;   ceiling_i -= c_i;   b2[o] += sum_{i, kernel} W2[o, i] c_i

exact wherever the pre-activation is at least c_i (and away from conv2's zero padding), which the
BN statistics make true for all but about 0.1 % of values; it shrinks the range conv2's input is
quantized over.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from pytorch_quantizer.model.graph import ACTIVATIONS, ChannelClamp, fold_batch_norms

SETTLED = 1e-6      # sweeps stop when no scale moves by more than this (relative)
MAX_SWEEPS = 100
ABSORBED_STDS = 3.0


class _LayerTracer(fx.Tracer):
    """Convs, linears, BNs and ReLU / ReLU6 stay single nodes (also subclasses from other packages,
    such as EfficientNet-Lite's same-padding conv)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, *ACTIVATIONS)) or super().is_leaf_module(
            module, qualified_name)


@dataclass
class Chain:
    """conv1 (output channels) -> conv2 (input channels), through ``clamp`` (None: nothing between);
    ``shift`` / ``spread``: the folded BN's beta / |gamma| per channel in the current units."""

    first: str
    second: str
    clamp: str | None
    shift: torch.Tensor | None
    spread: torch.Tensor | None


@dataclass(frozen=True)
class EqualizationReport:
    chains: int
    sweeps: int
    absorbed_channels: int
    clamps: tuple[str, ...]


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _module(traced: fx.GraphModule, node: fx.Node | None, kinds: tuple[type, ...]) -> nn.Module | None:
    if node is None or node.op != "call_module":
        return None
    module = traced.get_submodule(node.target)
    return module if isinstance(module, kinds) else None


def trace_layers(model: nn.Module) -> fx.GraphModule:
    """``model`` as an fx GraphModule with the same parameter names; raises ValueError when it cannot
    be traced (data-dependent control flow)."""
    try:
        return fx.GraphModule(model, _LayerTracer().trace(model))
    except Exception as error:  # fx raises many kinds (TraceError, TypeError, ...)
        raise ValueError(f"the model cannot be traced by torch.fx ({type(error).__name__}: {error})") from error


def _find_chains(traced: fx.GraphModule) -> list[tuple[fx.Node, fx.Node | None, fx.Node | None, fx.Node]]:
    """(conv1, bn, activation, conv2) nodes where every tensor on the way has one reader."""
    chains = []
    for node in traced.graph.nodes:
        first = _module(traced, node, (nn.Conv2d,))
        if first is None:
            continue
        current, bn, activation = _single_user(node), None, None
        if _module(traced, current, (nn.BatchNorm2d,)) is not None:
            bn, current = current, _single_user(current)
        if _module(traced, current, (nn.ReLU, nn.ReLU6)) is not None:
            activation, current = current, _single_user(current)
        second = _module(traced, current, (nn.Conv2d,))
        if second is not None and current.args[0] is (activation or bn or node) and second.in_channels == first.out_channels:
            chains.append((node, bn, activation, current))
    return chains


def _fold(traced: fx.GraphModule, conv_name: str, bn_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the BN into the conv (the BN node becomes a pass-through); returns its (beta, |gamma|)."""
    bn = traced.get_submodule(bn_name)
    shift, spread = bn.bias.detach().clone(), bn.weight.detach().abs().clone()
    fold_batch_norms(traced, {bn_name: conv_name})
    return shift, spread


def _input_channel_view(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """conv2's weight as (groups, out/groups, in/groups, kernel): input channel g * in/groups + j is [g, :, j]."""
    out_channels, in_per_group = weight.shape[:2]
    return weight.reshape(groups, out_channels // groups, in_per_group, -1)


def input_channel_ranges(conv: nn.Conv2d) -> torch.Tensor:
    """max |W[:, i]| for each input channel i (over the output channels of its group and the kernel)."""
    view = _input_channel_view(conv.weight.detach(), conv.groups)
    return view.abs().amax(dim=(1, 3)).reshape(-1)


def output_channel_ranges(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().abs().reshape(conv.weight.shape[0], -1).amax(dim=1)


def equalization_scales(first_ranges: torch.Tensor, second_ranges: torch.Tensor) -> torch.Tensor:
    """s_i = sqrt(r1_i / r2_i); 1 where either range is zero (nothing to balance)."""
    usable = (first_ranges > 0) & (second_ranges > 0)
    scales = torch.ones_like(first_ranges)
    scales[usable] = torch.sqrt(first_ranges[usable] / second_ranges[usable])
    return scales


@torch.no_grad()
def _rescale(first: nn.Conv2d, second: nn.Conv2d, scales: torch.Tensor) -> None:
    first.weight.div_(scales.reshape(-1, *([1] * (first.weight.dim() - 1))))
    if first.bias is not None:
        first.bias.div_(scales)
    view = _input_channel_view(second.weight, second.groups)
    view.mul_(scales.reshape(second.groups, 1, -1, 1))


@torch.no_grad()
def _absorb(first: nn.Conv2d, second: nn.Conv2d, clamp: ChannelClamp, chain: Chain) -> int:
    absorbed = torch.clamp(chain.shift - ABSORBED_STDS * chain.spread, min=0.0)
    if not bool((absorbed > 0).any()):
        return 0
    first.bias.sub_(absorbed)
    clamp.upper.sub_(absorbed)
    view = _input_channel_view(second.weight, second.groups)
    added = torch.einsum("goik,gi->go", view, absorbed.reshape(second.groups, -1)).reshape(-1)
    if second.bias is None:
        second.bias = nn.Parameter(added.clone())
    else:
        second.bias.add_(added)
    return int((absorbed > 0).sum())


def _pointwise(conv: nn.Conv2d) -> bool:
    """A 1x1 conv without padding: a constant added to its input reaches every output position alike
    (a padded conv sees zeros at the border, where the absorbed constant would be missing)."""
    padding = getattr(conv, "static_padding", None)
    padded = padding is not None and not isinstance(padding, nn.Identity)
    return all(size == 1 for size in conv.kernel_size) and conv.padding in ((0, 0), "valid") and not padded


def _install_clamps(traced: fx.GraphModule, found) -> list[Chain]:
    """Fold each chain's BN and give each chain with a ReLU / ReLU6 its own ChannelClamp node
    (activation modules may be shared by several layers, EfficientNet-Lite's are)."""
    chains = []
    for first_node, bn_node, activation_node, second_node in found:
        first = traced.get_submodule(first_node.target)
        shift = spread = None
        if bn_node is not None:
            shift, spread = _fold(traced, first_node.target, bn_node.target)
        clamp_name = None
        if activation_node is not None:
            activation = traced.get_submodule(activation_node.target)
            ceiling = 6.0 if isinstance(activation, nn.ReLU6) else math.inf
            channels = first.out_channels
            clamp_name = f"{first_node.target}_equalized_clamp"
            traced.add_submodule(clamp_name, ChannelClamp(torch.zeros(channels), torch.full((channels,), ceiling)))
            activation_node.target = clamp_name
        if first.bias is None:
            first.bias = nn.Parameter(torch.zeros(first.out_channels, device=first.weight.device))
        chains.append(Chain(first_node.target, second_node.target, clamp_name, shift, spread))
    traced.recompile()
    return chains


@torch.no_grad()
def equalize(model: nn.Module, absorb_high_bias: bool = True) -> tuple[fx.GraphModule, EqualizationReport]:
    """An equalized float copy of ``model`` (its BNs on the chains folded, the rest untouched) and what
    was done. Raises ValueError when the model cannot be traced."""
    import copy

    traced = trace_layers(copy.deepcopy(model).eval())
    chains = _install_clamps(traced, _find_chains(traced))
    sweeps = 0
    for sweeps in range(1, MAX_SWEEPS + 1):
        largest_move = 0.0
        for chain in chains:
            first, second = traced.get_submodule(chain.first), traced.get_submodule(chain.second)
            scales = equalization_scales(output_channel_ranges(first), input_channel_ranges(second))
            _rescale(first, second, scales)
            if chain.clamp is not None:
                traced.get_submodule(chain.clamp).upper.div_(scales.to(torch.float32))
            if chain.shift is not None:
                chain.shift, chain.spread = chain.shift / scales, chain.spread / scales
            largest_move = max(largest_move, float((scales - 1).abs().max()) if scales.numel() else 0.0)
        if largest_move <= SETTLED:
            break
    absorbed = 0
    if absorb_high_bias:
        for chain in chains:
            if chain.clamp is not None and chain.shift is not None and _pointwise(traced.get_submodule(chain.second)):
                absorbed += _absorb(traced.get_submodule(chain.first), traced.get_submodule(chain.second),
                                    traced.get_submodule(chain.clamp), chain)
    clamps = tuple(chain.clamp for chain in chains if chain.clamp is not None)
    return traced, EqualizationReport(len(chains), sweeps, absorbed, clamps)

