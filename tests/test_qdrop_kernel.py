"""The ptq_kernels::qdrop_select op (QDrop's per-element choice between float and quantized values)
against the pure-PyTorch reference (bit for bit, on every layout), the statistics of its draw, its
schema and fake kernel (torch.library.opcheck), input checks, and the straight-through learning
mode built on it: the same values and gradients as the unfused formula with the same draw.

Like tests/test_kernels.py, the module builds the CPU extension on first use and is skipped as a
whole when that is impossible (no compiler); CUDA tests need a GPU.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_support import LAYOUTS, in_layout, cuda_ops, kernel_ops, needs_cuda, reset_backend  # noqa: F401
from pytorch_quantizer.maths import qdrop
from pytorch_quantizer.model.learning_modes import StraightThrough
from pytorch_quantizer.quantizers import backend

ops = kernel_ops()


def pair(shape, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A float tensor and a coarse rounding of it (every element differs from its rounding)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3 + 0.25
    return x, torch.floor(x) - 0.5


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual.view(torch.int32), expected.view(torch.int32)), \
        f"{(actual.view(torch.int32) != expected.view(torch.int32)).sum()} of {actual.numel()} elements differ"


# ---- the draw --------------------------------------------------------------------------------

def python_lowbias32(word: int) -> int:
    """lowbias32 in Python's exact integers (the hash of kernels/csrc/quant_math.h)."""
    word ^= word >> 16
    word = (word * 0x7FEB352D) & 0xFFFFFFFF
    word ^= word >> 15
    word = (word * 0x846CA68B) & 0xFFFFFFFF
    return word ^ (word >> 16)


def test_splitmix_and_lowbias_are_the_published_hashes():
    lo, hi = qdrop.splitmix64(0)
    assert (hi << 32) | lo == 0xE220A8397B1DCDAF   # splitmix64's first output from state 0 (Vigna)
    words = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF]   # products overflow int64 here
    assert qdrop.lowbias32(torch.tensor(words, dtype=torch.int64)).tolist() == [python_lowbias32(w) for w in words]


def test_draw_is_uniform_and_independent_of_the_seed():
    x = torch.empty(200_000)
    first, second = qdrop.counter_uniform(x, 3), qdrop.counter_uniform(x, 4)
    assert 0.0 <= float(first.min()) and float(first.max()) < 1.0
    assert abs(float(first.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / x.numel())
    histogram = torch.histc(first, bins=10, min=0.0, max=1.0)
    assert float(histogram.min()) > 0.97 * x.numel() / 10 and float(histogram.max()) < 1.03 * x.numel() / 10
    assert abs(float(torch.corrcoef(torch.stack([first, second]))[0, 1])) < 0.01


@pytest.mark.parametrize("p", (0.0, 0.25, 0.5, 0.9, 1.0))
def test_fraction_kept_is_p(p):
    x, q = pair((64, 32, 10, 10), seed=1)
    kept = (ops.qdrop_select(x, q, p, 11) == x).double().mean()
    assert abs(float(kept) - p) < 4 * math.sqrt(max(p * (1 - p), 1e-12) / x.numel()) + 1e-12


# ---- parity ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("p, seed", [(0.5, 0), (0.1, 7), (0.9, -3), (0.0, 5), (1.0, 5), (0.5, 2 ** 62)])
def test_matches_reference(p, seed, layout):
    x, q = pair((3, 5, 7, 9), seed=2)
    x = in_layout(x, layout)
    expected = qdrop.qdrop_select(x, q, p, seed)
    actual = ops.qdrop_select(x, q, p, seed)
    assert actual.stride() == x.stride()
    assert_same_bits(actual, expected)


def test_q_in_another_layout_and_non_dense_x():
    x, q = pair((4, 6, 5, 5), seed=3)
    channels_last = x.to(memory_format=torch.channels_last)
    assert_same_bits(ops.qdrop_select(channels_last, q, 0.5, 9), qdrop.qdrop_select(channels_last, q, 0.5, 9))
    strided = x[:, ::2]
    assert_same_bits(ops.qdrop_select(strided, q[:, ::2], 0.5, 9), qdrop.qdrop_select(strided, q[:, ::2], 0.5, 9))


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), p=st.floats(0.0, 1.0),
       seed=st.integers(-2 ** 63, 2 ** 63 - 1))
def test_matches_reference_property(shape, p, seed):
    x, q = pair(shape, seed=len(shape))
    assert_same_bits(ops.qdrop_select(x, q, p, seed), qdrop.qdrop_select(x, q, p, seed))


def test_offsets_beyond_32_bits_use_the_high_word():
    offsets = torch.tensor([5, 5 + 2 ** 32], dtype=torch.int64)
    key_lo, key_hi = qdrop.splitmix64(1)
    low = qdrop.lowbias32((offsets & qdrop.WORD) ^ key_lo)
    hashed = qdrop.lowbias32(low ^ (offsets >> 32) ^ key_hi)
    assert int(hashed[0]) != int(hashed[1])


def opcheck_cases(device: str = "cpu"):
    x, q = pair((2, 3, 4, 5), seed=4)
    x, q = x.to(device), q.to(device)
    return [(x, q, 0.5, 1), (x.to(memory_format=torch.channels_last), q, 0.3, 2), (x[:, ::2], q[:, ::2], 0.7, 3),
            (x[:0], q[:0], 0.5, 4)]


@pytest.mark.parametrize("case", range(4))
def test_opcheck(case):
    torch.library.opcheck(ops.qdrop_select, opcheck_cases()[case])


@pytest.mark.parametrize("bad, message", [
    (lambda x, q: ops.qdrop_select(x.double(), q, 0.5, 0), "x and q must be float32"),
    (lambda x, q: ops.qdrop_select(x, q[:1], 0.5, 0), "q has shape"),
    (lambda x, q: ops.qdrop_select(x, q, 1.5, 0), r"p = 1.5 is not a probability in \[0, 1\]"),
    (lambda x, q: ops.qdrop_select(x, q, -0.1, 0), "is not a probability"),
])
def test_bad_inputs_are_rejected(bad, message):
    with pytest.raises(RuntimeError, match=message):
        bad(*pair((2, 3, 4)))


@pytest.mark.parametrize("choice", ("kernels", "reference"))
def test_backend_gives_the_reference_in_the_input_dtype(choice):
    x, q = pair((4, 6, 3, 3), seed=5)
    backend.set_backend(choice)
    chosen = backend.qdrop_select(x.double(), q.double(), 0.4, 12)
    assert chosen.dtype == torch.float64 and torch.equal(chosen.float(), qdrop.qdrop_select(x, q, 0.4, 12))


# ---- the learning mode -----------------------------------------------------------------------

def unfused(x, values, kept):
    """The formula the fused pass replaces: x where kept, else values carrying x's gradient."""
    return torch.where(kept, x, x + (values - x).detach())


def seeds_drawn(seed: int, calls: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [int(torch.randint(2 ** 62, (), generator=generator)) for _ in range(calls)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("drop", (0.0, 0.5))
def test_straight_through_values_and_gradients(drop, layout):
    x, q = pair((2, 4, 3, 3), seed=6)
    x = in_layout(x, layout).requires_grad_(True)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    mode = StraightThrough()
    with mode.straight_through(drop, seed=21):
        fused = mode.passed_on(x, q)
    (fused * weights).sum().backward()
    reference_x = x.detach().clone().requires_grad_(True)
    kept = (qdrop.counter_uniform(x.detach(), seeds_drawn(21, 1)[0]) < drop)
    expected = unfused(reference_x, q, kept)
    (expected * weights).sum().backward()
    assert torch.equal(fused.detach(), torch.where(kept, x.detach(), q))
    assert torch.equal(x.grad, reference_x.grad) and torch.equal(x.grad, weights)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_learned_values_split_their_gradient_by_the_draw(layout):
    x, _ = pair((2, 4, 3, 3), seed=7)
    x = in_layout(x, layout).requires_grad_(True)
    scale = torch.tensor(0.7, requires_grad=True)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    mode = StraightThrough()
    with mode.straight_through(0.5, seed=4):
        chosen = mode.learned(x, torch.round(x / scale) * scale)
        (chosen * weights.contiguous()).sum().backward()
    kept = qdrop.counter_uniform(x.detach(), seeds_drawn(4, 1)[0]) < 0.5
    reference_x = x.detach().clone().requires_grad_(True)
    reference_scale = scale.detach().clone().requires_grad_(True)
    expected = torch.where(kept, reference_x, torch.round(reference_x / reference_scale) * reference_scale)
    (expected * weights).sum().backward()
    assert torch.equal(chosen.detach(), expected.detach())
    assert torch.allclose(x.grad, reference_x.grad) and torch.allclose(scale.grad, reference_scale.grad)
    assert 0 < int(kept.sum()) < kept.numel()


@pytest.mark.parametrize("drop", (0.0, 0.5))
def test_an_in_place_activation_may_follow(drop):
    x = torch.tensor([-1.0, 0.4, 1.2, 3.0, 8.0]).requires_grad_(True)
    mode = StraightThrough()
    with mode.straight_through(drop, seed=1):
        passed = torch.nn.functional.relu6(mode.passed_on(x, torch.round(x.detach())), inplace=True)
    passed.sum().backward()
    kept = qdrop.counter_uniform(x.detach(), seeds_drawn(1, 1)[0]) < drop
    chosen = torch.where(kept, x.detach(), torch.round(x.detach()))
    assert torch.equal(passed.detach(), chosen.clamp(0, 6))
    assert torch.equal(x.grad, ((chosen > 0) & (chosen < 6)).float())


def test_outside_learning_the_quantized_values_pass_unchanged():
    x, q = pair((2, 3))
    assert StraightThrough().passed_on(x, q) is q


# ---- CUDA ------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_matches_cpu(cuda_ops, layout):
    x, q = pair((8, 16, 13, 11), seed=8)
    x = in_layout(x, layout)
    expected = ops.qdrop_select(x, q, 0.5, 123)
    actual = cuda_ops.qdrop_select(x.cuda(), q.cuda(), 0.5, 123)
    assert actual.stride() == x.stride()
    assert_same_bits(actual.cpu(), expected)


@needs_cuda
@pytest.mark.parametrize("case", range(4))
def test_opcheck_cuda(cuda_ops, case):
    torch.library.opcheck(cuda_ops.qdrop_select, opcheck_cases("cuda")[case])
