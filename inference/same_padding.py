"""TensorFlow's 'SAME' padding of the EfficientNet-Lite models (``efficientnet_lite_pytorch`` pads
with a ``ZeroPad2d`` before each conv), done with fewer passes over the feature maps: the same values
bit for bit, forward and backward.

Symmetric padding (the stride-1 depthwise convs) moves into the convolution; asymmetric padding (the
stride-2 convs: one more zero row and column after the map than before it) is written by
``BorderZeroPad2d``, which copies the map into place and zeroes only the border, where
``ZeroPad2d`` fills the whole padded map with zeros and then copies the map over it."""
from __future__ import annotations

import torch
from torch import nn


class _BorderZeroPad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
        left, right, top, bottom = padding
        height, width = x.shape[-2:]
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        padded = torch.empty((*x.shape[:-2], top + height + bottom, left + width + right), dtype=x.dtype,
                             device=x.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        padded[..., top:top + height, left:left + width].copy_(x)
        for rows, columns in ((slice(0, top), slice(None)), (slice(top + height, None), slice(None)),
                              (slice(top, top + height), slice(0, left)),
                              (slice(top, top + height), slice(left + width, None))):
            padded[..., rows, columns].zero_()
        ctx.window = (top, height, left, width)
        return padded

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        top, height, left, width = ctx.window
        return grad[..., top:top + height, left:left + width], None


class BorderZeroPad2d(nn.ZeroPad2d):
    """``ZeroPad2d`` that zeroes only the border it adds (``_BorderZeroPad``); exports as ``ZeroPad2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or x.dim() != 4:
            return super().forward(x)
        return _BorderZeroPad.apply(x, tuple(self.padding))


def padding_in_convolutions(model: nn.Module) -> nn.Module:
    """Each conv's ``static_padding``: symmetric padding done by the convolution itself (no padded
    copy of the feature map: a fill and a copy forward, a copy backward, about a sixth of a block-
    reconstruction step on Lite0's early blocks), asymmetric padding by ``BorderZeroPad2d`` (no fill
    of the whole padded map: a seventh of the learning step of Lite0's second block)."""
    for module in model.modules():
        padding = getattr(module, "static_padding", None)
        if isinstance(module, nn.Conv2d) and isinstance(padding, nn.ZeroPad2d) and module.padding == (0, 0):
            left, right, top, bottom = padding.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
            elif min(padding.padding) >= 0:
                module.static_padding = BorderZeroPad2d(padding.padding)
    return model
