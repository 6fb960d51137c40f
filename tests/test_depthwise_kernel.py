"""The ptq_kernels::depthwise_weight_grad op (the weight gradient of a depthwise conv2d) against
PyTorch's own gradient on every window the op takes (stride, padding, dilation, 3x3 and 5x5 filters,
both layouts), the same bits whatever the number of threads, its schema and fake kernel, its input
checks, and ``DepthwiseWeightGradients``: the same forward, PyTorch's gradients, the kernel used.

Like tests/test_kernels.py, the module builds the CPU extension on first use and is skipped as a
whole when that is impossible (no compiler).
"""
import pytest
import torch
from torch import nn

from kernel_support import kernel_ops, reset_backend  # noqa: F401
from pytorch_quantizer.model.depthwise_gradients import DepthwiseWeightGradients
from pytorch_quantizer.quantizers import backend

ops = kernel_ops()

WINDOWS = [  # channels, size, kernel, stride, padding, dilation
    (8, 9, 3, 1, 1, 1), (16, 10, 3, 2, 0, 1), (24, 11, 5, 1, 2, 1), (40, 12, 5, 2, 1, 1),
    (12, 13, 3, 1, 2, 2), (7, 8, 5, 2, 0, 1), (3, 6, 3, 3, 1, 1),
]


def case(channels, size, kernel, stride, padding, dilation, seed=0, channels_last=True):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(5, channels, size, size, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, kernel, kernel, generator=generator)
    out = torch.conv2d(x, weight, None, stride, padding, dilation, channels)
    grad = torch.randn(out.shape, generator=generator).contiguous(memory_format=torch.channels_last)
    return grad, x, [kernel, kernel], [stride, stride], [padding, padding], [dilation, dilation]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_kernel_is_pytorchs_weight_gradient(window, channels_last):
    args = case(*window, channels_last=channels_last)
    expected = backend.reference_depthwise_weight_grad(*args)
    actual = ops.depthwise_weight_grad(*args)
    assert actual.shape == expected.shape == (window[0], 1, window[2], window[2]) and actual.is_contiguous()
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_the_kernel_gives_the_same_bits_on_one_thread_and_on_several():
    args = case(32, 14, 5, 1, 2, 1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.depthwise_weight_grad(*args)
        torch.set_num_threads(max(threads, 2))
        several = ops.depthwise_weight_grad(*args)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, several)


def test_opcheck():
    torch.library.opcheck(ops.depthwise_weight_grad, case(6, 7, 3, 2, 1, 1))


@pytest.mark.parametrize("bad, message", [
    (lambda grad, x, *window: ops.depthwise_weight_grad(grad, x.double(), *window), "float32"),
    (lambda grad, x, *window: ops.depthwise_weight_grad(grad[:, :3], x, *window), "grad has shape"),
    (lambda grad, x, *window: ops.depthwise_weight_grad(grad[:, :, :2], x, *window), "not the conv's output"),
    (lambda grad, x, k, s, p, d: ops.depthwise_weight_grad(grad, x, k, [0, 0], p, d), "invalid window"),
])
def test_bad_inputs_are_named(bad, message):
    with pytest.raises(RuntimeError, match=message):
        bad(*case(8, 9, 3, 2, 1, 1))


@pytest.mark.parametrize("kernel, stride, served", [(5, 1, True), (3, 2, True), (3, 1, False)])
def test_depthwise_convs_take_the_kernels_weight_gradient_inside_the_mode(kernel, stride, served):
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 24, kernel, stride, kernel // 2, groups=24)
    x = torch.randn(4, 24, 15, 15).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    grad = torch.randn_like(conv(x))
    expected = conv(x)
    expected_grads = torch.autograd.grad(expected, [x, conv.weight, conv.bias], grad)
    with DepthwiseWeightGradients():
        actual = conv(x)
    assert torch.equal(actual, expected)
    assert (type(actual.grad_fn).__name__ == "_DepthwiseConv2dBackward") == served
    for value, reference in zip(torch.autograd.grad(actual, [x, conv.weight, conv.bias], grad), expected_grads):
        assert torch.allclose(value, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))


def test_the_reference_backend_keeps_pytorchs_own_gradient():
    conv = nn.Conv2d(8, 8, 5, 1, 2, groups=8)
    backend.set_backend("reference")
    with DepthwiseWeightGradients():
        output = conv(torch.randn(2, 8, 9, 9))
    assert type(output.grad_fn).__name__ != "_DepthwiseConv2dBackward"
