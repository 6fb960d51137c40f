"""Structure found by running the model once: which BatchNorm reads which conv's output, and
which ReLU / ReLU6 (or ``ChannelClamp``, equalization's per-channel ReLU6) reads which conv (or
folded BN) output. Found by tensor identity in hooks, so
it follows the real data flow, not module registration order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

GEMM_LAYERS = (nn.Conv2d, nn.Linear)


class ChannelClamp(nn.Module):
    """clamp(x, lower_c, upper_c) per channel (dim 1): a ReLU / ReLU6 after equalization rescaled
    and absorption shifted its channels."""

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor):
        super().__init__()
        self.register_buffer("lower", lower.detach().clone().float())
        self.register_buffer("upper", upper.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.clamp(x, self.lower.reshape(shape).to(x.dtype), self.upper.reshape(shape).to(x.dtype))

    def extra_repr(self) -> str:
        return f"channels={self.lower.numel()}"


ACTIVATIONS = (nn.ReLU, nn.ReLU6, ChannelClamp)


@dataclass(frozen=True)
class ModelGraph:
    bn_after_conv: dict[str, str]       # batch norm name -> conv name
    activation_after: dict[str, type]   # conv name -> ReLU, ReLU6 or ChannelClamp class applied to its (BN-folded) output
    input_shapes: dict[str, tuple[int, ...]]    # Conv/Linear name -> shape of its input
    output_shapes: dict[str, tuple[int, ...]]   # Conv/Linear name -> shape of its output
    clamps_after: dict[str, ChannelClamp] = field(default_factory=dict)  # conv name -> its ChannelClamp
    # Conv/Linear name -> the Conv/Linear whose output (after its BN and ReLU / ReLU6, if any) it reads as is
    input_producers: dict[str, str] = field(default_factory=dict)


def has_spatial_extent(shape: tuple[int, ...]) -> bool:
    """A feature map with more than one position (N, C, H, W with H > 1 or W > 1)."""
    return len(shape) > 3 and (shape[2] > 1 or shape[3] > 1)


@torch.no_grad()
def trace_graph(model: nn.Module, example_input: torch.Tensor) -> ModelGraph:
    """Run ``model`` once on ``example_input`` and record conv -> BN and conv(/BN) -> ReLU edges and
    the input and output shapes of every Conv/Linear layer."""
    producers: dict[int, str] = {}   # id of an output tensor -> conv that (with its BN) produced it
    alive: list[torch.Tensor] = []   # keeps recorded tensors alive so that their ids are not reused
    bn_after_conv: dict[str, str] = {}
    activation_after: dict[str, type] = {}
    input_shapes: dict[str, tuple[int, ...]] = {}
    output_shapes: dict[str, tuple[int, ...]] = {}

    input_producers: dict[str, str] = {}

    def conv_output(name):
        def hook(module, args, output):
            if id(args[0]) in producers:
                input_producers.setdefault(name, producers[id(args[0])])
            producers[id(output)] = name
            alive.append(output)
            input_shapes.setdefault(name, tuple(args[0].shape))
            output_shapes.setdefault(name, tuple(output.shape))
        return hook

    def bn_input(name):
        def hook(module, args):
            if id(args[0]) in producers:
                bn_after_conv[name] = producers[id(args[0])]
        return hook

    def bn_output(name):
        def hook(module, args, output):
            if name in bn_after_conv:
                producers[id(output)] = bn_after_conv[name]
                alive.append(output)
        return hook

    clamps_after: dict[str, ChannelClamp] = {}

    def activation_input(module, args):
        if id(args[0]) in producers:
            conv = producers[id(args[0])]
            activation_after.setdefault(conv, type(module))
            if isinstance(module, ChannelClamp):
                clamps_after.setdefault(conv, module)

    def activation_output(module, args, output):
        if id(args[0]) in producers and not isinstance(module, ChannelClamp):
            producers[id(output)] = producers[id(args[0])]
            alive.append(output)

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, GEMM_LAYERS):
            handles.append(module.register_forward_hook(conv_output(name)))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(bn_input(name)))
            handles.append(module.register_forward_hook(bn_output(name)))
        elif isinstance(module, ACTIVATIONS):
            handles.append(module.register_forward_pre_hook(activation_input))
            handles.append(module.register_forward_hook(activation_output))
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return ModelGraph(bn_after_conv, activation_after, input_shapes, output_shapes, clamps_after, input_producers)


def set_submodule(model: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, replacement)


@torch.no_grad()
def fold_batch_norms(model: nn.Module, bn_after_conv: dict[str, str]) -> None:
    """Fold each BN into its conv (in place), the BN becoming Identity:

        g = gamma / sqrt(var + eps);  W' = W * g (per output channel);  b' = (b - mean) * g + beta
    """
    for bn_name, conv_name in bn_after_conv.items():
        bn = model.get_submodule(bn_name)
        conv = model.get_submodule(conv_name)
        gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.copy_(conv.weight * gain.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        folded = (bias - bn.running_mean) * gain + bn.bias
        conv.bias = nn.Parameter(folded.detach().clone())
        set_submodule(model, bn_name, nn.Identity())
