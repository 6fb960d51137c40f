"""Depthwise convolutions that take their weight gradient from ``ptq_kernels::depthwise_weight_grad``
while weights are learned on the CPU.

oneDNN computes a depthwise conv's weight gradient 4 to 10 times slower than the conv itself on 5x5
filters (about a sixth of a block-reconstruction step of EfficientNet-Lite0 at batch 32); the
kernel takes about a third of that time. Inside ``DepthwiseWeightGradients()`` every
``conv2d(x, w, groups=channels)`` with one filter per channel, a weight that requires gradients and
a CPU float32 input runs forward as before and backward as

    dx = PyTorch's input gradient,   dW = depthwise_weight_grad(dy, x),   db = sum of dy over n, h, w

except 3x3 filters at stride 1, where oneDNN's own gradient measured as fast or faster (Lite0's
3x3 stride-1 maps, 32 to 1152 channels). The values equal PyTorch's up to the order of the sums.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from pytorch_quantizer.quantizers import backend


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class _DepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.window, ctx.has_bias = (stride, padding, dilation), bias is not None
        return torch.conv2d(x, weight, bias, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.window
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, list(stride), list(padding),
                                                         list(dilation), False, [0, 0], x.shape[1],
                                                         [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_weight = backend.depthwise_weight_grad(grad, x, weight.shape[2:], stride, padding, dilation)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None


def kernel_serves_window(kernel_size: tuple[int, ...], stride: tuple[int, int]) -> bool:
    """Every depthwise window but 3x3 at stride 1 (module docstring)."""
    return not (tuple(kernel_size) == (3, 3) and tuple(stride) == (1, 1))


def _depthwise_call(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """The arguments of ``_DepthwiseConv2d`` for a conv2d call it serves, else None."""
    if isinstance(padding, str) or not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    depthwise = groups == x.shape[1] == weight.shape[0] and weight.shape[1] == 1
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if not depthwise or not kernel_serves_window(weight.shape[2:], stride) \
            or not (torch.is_grad_enabled() and weight.requires_grad):
        return None
    return (x, weight, bias, stride, padding, dilation) if backend.depthwise_kernel_serves(x) else None


class DepthwiseWeightGradients(TorchFunctionMode):
    """While open, depthwise conv2d calls take the kernel's weight gradient (module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d:
            call = _depthwise_call(*args, **kwargs)
            if call is not None:
                return _DepthwiseConv2d.apply(*call)
        return func(*args, **kwargs)
