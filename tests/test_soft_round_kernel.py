"""The ptq_kernels::soft_round / soft_round_backward ops (AdaRound's soft-rounded weight, its summed
penalty and the gradient with respect to the logits in one pass each) against the pure-PyTorch
reference ``maths.soft_rounding`` differentiated by autograd: per tensor and per channel, on
contiguous and channels-last weights, at the clamp and grid edges; their schemas and fake kernels
(torch.library.opcheck), input checks, and the autograd function ``backend.fused_soft_round`` built
on them (``backend.soft_round`` uses it on CUDA, the reference on the CPU).

Like tests/test_kernels.py, the module builds the CPU extension on first use and is skipped as a
whole when that is impossible (no compiler); CUDA tests need a GPU.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_support import LAYOUTS, cuda_ops, in_layout, kernel_ops, needs_cuda, reset_backend  # noqa: F401
from pytorch_quantizer.maths import soft_rounding
from pytorch_quantizer.maths.weight_grid import Grid
from pytorch_quantizer.quantizers import backend

ops = kernel_ops()


def problem(shape, per_channel: bool, seed: int = 0, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor, Grid]:
    """Weights, logits spread over the sigmoid's clamped and open ranges, and a grid that clips some
    weights at both ends (an asymmetric range narrower than the weights')."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator)
    logits = torch.randn(shape, generator=generator) * 4
    channels = shape[0] if per_channel else 1
    low = -1.5 + 0.1 * torch.rand(channels, generator=generator)
    high = 1.2 + 0.1 * torch.rand(channels, generator=generator)
    qmax = torch.full((channels,), 2.0 ** bits - 1)
    scale = (high - low) / qmax
    zero_point = torch.round(-low / scale)
    if not per_channel:
        scale, zero_point, qmax = scale[0], zero_point[0], qmax[0]
    return weight, logits, Grid(scale, zero_point, qmax)


def kernel_result(weight, logits, grid, beta):
    axis = 0 if grid.scale.dim() else -1
    vectors = [v.reshape(-1).expand(weight.shape[0] if axis == 0 else 1).contiguous().float()
               for v in (grid.scale, grid.zero_point, grid.qmax)]
    return ops.soft_round(weight, logits, *vectors, axis, beta), vectors, axis


def reference_gradient(weight, logits, grid, beta, grad_y, grad_penalty):
    reference_logits = logits.detach().clone().requires_grad_(True)
    value, penalty = soft_rounding.soft_round(weight, reference_logits, grid, beta)
    (value * grad_y).sum().add(penalty * grad_penalty).backward()
    return value.detach(), penalty.detach(), reference_logits.grad


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("per_channel", (False, True))
@pytest.mark.parametrize("beta", (0.0, 2.0, 20.0))
def test_kernels_agree_with_the_autograd_reference(layout, per_channel, beta):
    weight, logits, grid = problem((6, 5, 3, 3), per_channel, seed=3)
    weight, logits = in_layout(weight, layout), in_layout(logits, layout)
    grad_y = torch.randn(weight.shape, generator=torch.Generator().manual_seed(9))
    expected_value, expected_penalty, expected_grad = reference_gradient(weight, logits, grid, beta, grad_y, 0.01)
    (value, penalty), vectors, axis = kernel_result(weight, logits, grid, beta)
    assert value.stride() == weight.stride() and penalty.shape == () and penalty.dtype == torch.float32
    torch.testing.assert_close(value, expected_value, rtol=0, atol=1e-6)
    torch.testing.assert_close(penalty, expected_penalty, rtol=1e-5, atol=1e-4)
    grad = ops.soft_round_backward(grad_y, torch.tensor(0.01), weight, logits, *vectors, axis, beta)
    assert grad.stride() == weight.stride()
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), beta=st.floats(2.0, 20.0), per_channel=st.booleans(),
       bits=st.integers(2, 8))
def test_kernels_agree_on_random_problems(seed, beta, per_channel, bits):
    weight, logits, grid = problem((4, 7), per_channel, seed=seed, bits=bits)
    grad_y = torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed + 1))
    expected_value, expected_penalty, expected_grad = reference_gradient(weight, logits, grid, beta, grad_y, 0.3)
    (value, penalty), vectors, axis = kernel_result(weight, logits, grid, beta)
    torch.testing.assert_close(value, expected_value, rtol=0, atol=1e-6)
    torch.testing.assert_close(penalty, expected_penalty, rtol=1e-5, atol=1e-4)
    grad = ops.soft_round_backward(grad_y, torch.tensor(0.3), weight, logits, *vectors, axis, beta)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_edges_follow_autograds_conventions():
    """A logit deep in the clamp passes no gradient; codes clipped at 0 or above qmax pass none from
    the output; a code exactly at qmax passes half (torch.minimum's tie); h = 1/2 has no penalty slope."""
    grid = Grid(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(3.0))
    weight = torch.tensor([0.25, -2.5, 5.5, 2.0, 1.25])
    logits = torch.tensor([20.0, 0.0, 0.0, 0.0, 0.0])   # h = 1 (clamped); h = 1/2 elsewhere
    (value, _), vectors, axis = kernel_result(weight, logits, grid, 2.0)
    grad = ops.soft_round_backward(torch.ones(5), torch.tensor(1.0), weight, logits, *vectors, axis, 2.0)
    _, _, expected = reference_gradient(weight, logits, grid, 2.0, torch.ones(5), 1.0)
    assert value.tolist() == [1.0, 0.0, 3.0, 2.5, 1.5]
    slope = 1.2 * 0.25   # (zeta - gamma) sigmoid'(0)
    assert grad.tolist() == pytest.approx([0.0, 0.0, 0.0, slope, slope])
    torch.testing.assert_close(grad, expected)
    at_top = torch.tensor([2.75])   # floor 2 + h 1/2 = 2.5 = qmax
    tie_grid = Grid(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(2.5))
    (_, _), tie_vectors, _ = kernel_result(at_top, torch.zeros(1), tie_grid, 0.0)
    tie = ops.soft_round_backward(torch.ones(1), torch.tensor(0.0), at_top, torch.zeros(1), *tie_vectors, -1, 0.0)
    _, _, tie_expected = reference_gradient(at_top, torch.zeros(1), tie_grid, 0.0, torch.ones(1), 0.0)
    assert float(tie) == pytest.approx(slope / 2) and torch.equal(tie, tie_expected)


def test_penalty_is_zero_without_beta_and_counted_in_double():
    weight, logits, grid = problem((64, 64, 3, 3), True, seed=5)
    (_, penalty), _, _ = kernel_result(weight, logits, grid, 0.0)
    assert float(penalty) == 0.0
    (_, penalty), _, _ = kernel_result(weight, logits, grid, 2.0)
    soft = soft_rounding.rectified_sigmoid(logits).double()
    exact = float((1 - (2 * soft - 1).abs().pow(2.0)).sum())
    assert float(penalty) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("per_channel", (False, True))
def test_fused_soft_round_is_differentiable_and_matches_the_reference(layout, per_channel):
    weight, logits, grid = problem((6, 5, 3, 3), per_channel, seed=11)
    weight = in_layout(weight, layout)
    grad_y = torch.randn(weight.shape, generator=torch.Generator().manual_seed(2))
    results = {}
    for name, soft_round in (("fused", backend.fused_soft_round), ("reference", soft_rounding.soft_round)):
        learned = in_layout(logits.clone(), layout).requires_grad_(True)
        value, penalty = soft_round(weight, learned, grid, 2.0)
        ((value * grad_y).sum() + 0.01 * penalty).backward()
        results[name] = value.detach(), penalty.detach(), learned.grad
    for fused, reference in zip(results["fused"], results["reference"]):
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)


def test_fused_soft_round_without_the_penalty_used():
    """Only the soft-rounded weight enters the loss: the penalty's gradient arrives as None."""
    weight, logits, grid = problem((3, 4), False, seed=1)
    learned = logits.clone().requires_grad_(True)
    value, _ = backend.fused_soft_round(weight, learned, grid, 0.0)
    value.sum().backward()
    _, _, expected = reference_gradient(weight, logits, grid, 0.0, torch.ones(3, 4), 0.0)
    torch.testing.assert_close(learned.grad, expected)


def test_soft_round_on_the_cpu_is_the_reference():
    weight, logits, grid = problem((3, 4), True, seed=6)
    value, penalty = backend.soft_round(weight, logits, grid, 2.0)
    expected_value, expected_penalty = soft_rounding.soft_round(weight, logits, grid, 2.0)
    assert torch.equal(value, expected_value) and torch.equal(penalty, expected_penalty)


def opcheck_cases(device: str = "cpu"):
    cases = []
    for per_channel, layout in ((False, "contiguous"), (True, "channels_last")):
        weight, logits, grid = problem((4, 3, 2, 2), per_channel, seed=2)
        weight, logits = in_layout(weight, layout).to(device), in_layout(logits, layout).to(device)
        _, vectors, axis = kernel_result(weight.cpu(), logits.cpu(), grid, 2.0)
        vectors = [vector.to(device) for vector in vectors]
        cases.append(("soft_round", (weight, logits, *vectors, axis, 2.0)))
        grad_y = torch.randn(weight.shape, device=device)
        cases.append(("soft_round_backward", (grad_y, torch.tensor(0.5, device=device), weight, logits, *vectors, axis,
                                              2.0)))
    return cases


@pytest.mark.parametrize("case", range(4))
def test_opcheck(case):
    name, arguments = opcheck_cases()[case]
    torch.library.opcheck(getattr(ops, name), arguments)


@pytest.mark.parametrize("bad, message", [
    (lambda w, v, s, z, q: (w, v[:2], s, z, q), "v has shape"),
    (lambda w, v, s, z, q: (w, v.double(), s, z, q), "v must be float32"),
    (lambda w, v, s, z, q: (w, v, s[:1], z, q), "scale"),
])
def test_bad_operands_are_refused(bad, message):
    weight, logits, grid = problem((4, 3), True)
    _, vectors, _ = kernel_result(weight, logits, grid, 2.0)
    with pytest.raises(RuntimeError, match=message):
        ops.soft_round(*bad(weight, logits, *vectors), 0, 2.0)


def test_bad_penalty_gradient_is_refused():
    weight, logits, grid = problem((4, 3), False)
    _, vectors, axis = kernel_result(weight, logits, grid, 2.0)
    with pytest.raises(RuntimeError, match="grad_penalty must be a float32 tensor of one element"):
        ops.soft_round_backward(torch.ones(4, 3), torch.ones(2), weight, logits, *vectors, axis, 2.0)


# ---- CUDA ------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("per_channel", (False, True))
def test_cuda_matches_cpu(cuda_ops, layout, per_channel):
    weight, logits, grid = problem((64, 32, 3, 3), per_channel, seed=4)
    weight, logits = in_layout(weight, layout), in_layout(logits, layout)
    (value, penalty), vectors, axis = kernel_result(weight, logits, grid, 2.0)
    grad_y = torch.randn(weight.shape)
    grad = ops.soft_round_backward(grad_y, torch.tensor(0.01), weight, logits, *vectors, axis, 2.0)
    on_gpu = [t.cuda() for t in (weight, logits, *vectors)]
    cuda_value, cuda_penalty = cuda_ops.soft_round(*on_gpu, axis, 2.0)
    cuda_grad = cuda_ops.soft_round_backward(grad_y.cuda(), torch.tensor(0.01, device="cuda"), *on_gpu, axis, 2.0)
    assert cuda_value.stride() == weight.stride()
    torch.testing.assert_close(cuda_value.cpu(), value, rtol=0, atol=1e-6)
    torch.testing.assert_close(cuda_penalty.cpu(), penalty, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(cuda_grad.cpu(), grad, rtol=1e-5, atol=1e-7)


@needs_cuda
def test_soft_round_on_cuda_is_fused(cuda_ops):
    weight, logits, grid = problem((8, 4, 3, 3), True, seed=7)
    learned = logits.cuda().requires_grad_(True)
    cuda_grid = Grid(grid.scale.cuda(), grid.zero_point.cuda(), grid.qmax.cuda())
    value, penalty = backend.soft_round(weight.cuda(), learned, cuda_grid, 2.0)
    (value.sum() + penalty).backward()
    assert value.grad_fn is not None and "SoftRound" in type(value.grad_fn).__name__
    expected_value, expected_penalty, expected_grad = reference_gradient(weight, logits, grid, 2.0,
                                                                         torch.ones(weight.shape), 1.0)
    torch.testing.assert_close(value.detach().cpu(), expected_value, rtol=0, atol=1e-6)
    torch.testing.assert_close(learned.grad.cpu(), expected_grad, rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("case", range(4))
def test_opcheck_cuda(cuda_ops, case):
    name, arguments = opcheck_cases("cuda")[case]
    torch.library.opcheck(getattr(cuda_ops, name), arguments)
