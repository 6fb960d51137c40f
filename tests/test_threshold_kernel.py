"""The ptq_kernels::threshold_quant op (level-set quantization) against the pure-PyTorch reference
(bit for bit), its special values, schema and fake kernel (torch.library.opcheck), input checks and
the backend wrappers.

Like tests/test_kernels.py, the module builds the CPU extension on first use and is skipped as a
whole when that is impossible (no compiler); CUDA tests need a GPU.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_support import AXES, LAYOUTS, in_layout, cuda_ops, kernel_ops, needs_cuda, reset_backend  # noqa: F401
from kernels import build
from pytorch_quantizer.quantizers import backend
from pytorch_quantizer.maths import primitives

ops = kernel_ops()
NAN, INF = float("nan"), float("inf")


def op_axis(axis: int | None) -> int:
    return -1 if axis is None else axis


def sample(shape, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual.view(torch.int32), expected.view(torch.int32)), \
        f"{(actual.view(torch.int32) != expected.view(torch.int32)).sum()} of {actual.numel()} elements differ"


def level_set(levels: int, seed: int = 0, midpoints: bool = True, repeats: bool = False):
    """Sorted thresholds and values of a K-level set: nearest-level (midpoint thresholds of sorted
    levels), or arbitrary sorted thresholds (some repeated) with unsorted values."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.sort(torch.randn(levels, generator=generator) * 2).values
    if repeats and levels > 3:
        points[1:levels // 2] = points[1]  # equal thresholds: the levels between them are never chosen
    if midpoints:
        return primitives.midpoint_thresholds(points), points
    return points[:-1].contiguous(), torch.randn(levels, generator=generator) * 3


def scales_for(x: torch.Tensor, axis: int | None, seed: int = 0) -> torch.Tensor:
    """Positive scales near the data's spread (per tensor: one element)."""
    channels = 1 if axis is None else x.shape[axis]
    return torch.rand(channels, generator=torch.Generator().manual_seed(seed)) * 1.5 + 0.25


# ---- parity ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("levels, midpoints, repeats", [
    (1, True, False), (2, True, False), (5, True, False), (16, False, True), (256, True, False), (256, False, False)])
def test_matches_reference(levels, midpoints, repeats, axis, layout):
    x = sample((4, 6, 5, 7), seed=levels)
    thresholds, values = level_set(levels, seed=levels, midpoints=midpoints, repeats=repeats)
    scale = scales_for(x, axis, seed=levels)
    expected = primitives.threshold_quantize(x, scale, thresholds, values, axis)
    xl = in_layout(x, layout)
    actual = ops.threshold_quant(xl, scale, thresholds, values, op_axis(axis))
    assert actual.stride() == xl.stride()
    assert_same_bits(actual, expected)


@pytest.mark.parametrize("shape, axis", [
    ((3, 70000), 0),          # long runs split across parallel tasks
    ((2, 3, 40, 5), 2),       # short runs (inner 5): row loop
    ((64, 3000), 1),          # channel is the fastest dim of a contiguous tensor
    ((257, 33, 3), None),     # per tensor over several parallel tasks
    ((5, 1, 4), 1),           # a single channel
    ((3, 0, 4), 1),           # empty
])
def test_layout_paths_match_reference(shape, axis):
    x = sample(shape, seed=len(shape))
    thresholds, values = level_set(9, seed=1)
    scale = scales_for(x, axis)
    expected = primitives.threshold_quantize(x, scale, thresholds, values, axis)
    assert_same_bits(ops.threshold_quant(x, scale, thresholds, values, op_axis(axis)), expected)


def test_non_dense_input_gives_dense_output():
    x = sample((4, 12, 6, 6))[:, ::2, :, 1:]
    thresholds, values = level_set(7)
    scale = scales_for(x, 1)
    actual = ops.threshold_quant(x, scale, thresholds, values, 1)
    assert actual.is_contiguous()
    assert_same_bits(actual, primitives.threshold_quantize(x, scale, thresholds, values, 1))


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), data=st.data())
def test_matches_reference_property(shape, data):
    axis = data.draw(st.sampled_from([None, *range(len(shape))]))
    levels = data.draw(st.integers(1, 40))
    seed = data.draw(st.integers(0, 10**6))
    thresholds, values = level_set(levels, seed, midpoints=data.draw(st.booleans()), repeats=data.draw(st.booleans()))
    spread = data.draw(st.sampled_from([1e-3, 1.0, 1e4]))
    x = sample(shape, seed=seed, scale=spread)
    scale = scales_for(x, axis, seed) * data.draw(st.sampled_from([1e-3, 1.0, 1e3]))
    if levels > 1 and data.draw(st.booleans()):  # some elements exactly on a threshold (power-of-two scale)
        scale = torch.full_like(scale, 0.5)
        flat = x.view(-1)
        flat[::3] = thresholds[torch.arange(flat[::3].numel()) % thresholds.numel()] * 0.5
    expected = primitives.threshold_quantize(x, scale, thresholds, values, axis)
    assert_same_bits(ops.threshold_quant(x, scale, thresholds, values, op_axis(axis)), expected)


# ---- semantics -------------------------------------------------------------------------------

def test_ties_go_to_the_upper_level():
    levels = torch.tensor([-1.0, 0.0, 1.0, 3.0])
    thresholds = primitives.midpoint_thresholds(levels)
    assert torch.equal(thresholds, torch.tensor([-0.5, 0.5, 2.0]))
    scale = torch.tensor([0.5])  # a power of two: u = x / s is exact
    x = torch.tensor([-0.25, 0.25, 1.0, -0.2500001, 0.2499999, 0.9999999])
    expected = torch.tensor([0.0, 0.5, 1.5, -0.5, 0.0, 0.5])
    assert torch.equal(ops.threshold_quant(x, scale, thresholds, levels, -1), expected)
    assert torch.equal(primitives.threshold_quantize(x, scale, thresholds, levels), expected)
    assert torch.equal(torch.searchsorted(thresholds, x / 0.5, right=True), torch.tensor([1, 2, 3, 0, 1, 2]))


def test_nearest_level_with_midpoint_thresholds():
    backend.set_backend("kernels")
    x = sample((8, 500), seed=4)
    levels = torch.tensor([1.5, -2.0, 0.0, 0.25, -0.5, 4.0])  # unsorted: quantize_to_levels sorts them
    scale = torch.rand(8, generator=torch.Generator().manual_seed(5)) + 0.5
    y = backend.quantize_to_levels(x, scale, levels, axis=0)
    u = (x / scale[:, None]).double()
    chosen = (y / scale[:, None]).double()
    nearest = (u[..., None] - levels.double()).abs().amin(dim=-1)
    assert torch.isin(chosen.float(), levels).all()
    assert ((u - chosen).abs() <= nearest + 1e-6).all()


def test_nan_propagates_and_infinities_saturate():
    thresholds, values = torch.tensor([-1.0, 1.0]), torch.tensor([-2.0, 0.0, 2.0])
    x = torch.tensor([[NAN, INF, -INF, 0.5], [1.0, NAN, 3.0, -3.0]])
    scale = torch.tensor([2.0, NAN])
    actual = ops.threshold_quant(x, scale, thresholds, values, 0)
    expected = torch.tensor([[NAN, 4.0, -4.0, 0.0], [NAN, NAN, NAN, NAN]])
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)
    assert_same_bits(actual, primitives.threshold_quantize(x, scale, thresholds, values, 0))


def test_zero_scale_gives_zero():
    thresholds, values = torch.tensor([0.5]), torch.tensor([1.0, 3.0])
    x = torch.tensor([[0.0, -0.0, 2.0, -INF, INF, NAN], [0.0, 1.0, -1.0, 5.0, -5.0, 0.25]])
    scale = torch.tensor([0.0, 1.0])
    actual = ops.threshold_quant(x, scale, thresholds, values, 0)
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, NAN], [1.0, 3.0, 1.0, 3.0, 1.0, 1.0]])
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)
    assert not torch.signbit(actual[0, :5]).any()
    assert_same_bits(actual, primitives.threshold_quantize(x, scale, thresholds, values, 0))


def test_one_level_and_repeated_thresholds():
    x = sample((3, 50))
    one = ops.threshold_quant(x, torch.tensor([2.0]), torch.empty(0), torch.tensor([0.75]), -1)
    assert torch.equal(one, torch.full_like(x, 1.5))
    thresholds, values = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([-1.0, 5.0, 6.0, 1.0])
    both = ops.threshold_quant(x, torch.tensor([1.0]), thresholds, values, -1)
    assert torch.equal(both, torch.where(x >= 0, 1.0, -1.0))


def test_midpoint_thresholds():
    assert torch.equal(primitives.midpoint_thresholds(torch.tensor([0.0, 1.0, 4.0])), torch.tensor([0.5, 2.5]))
    assert primitives.midpoint_thresholds(torch.tensor([7.0])).numel() == 0
    big = primitives.midpoint_thresholds(torch.tensor([3.0e38, 3.2e38]))
    assert torch.isfinite(big).all() and big.dtype == torch.float32


# ---- op contracts ----------------------------------------------------------------------------

def opcheck_cases(device: str = "cpu"):
    x = sample((2, 6, 4, 5)).to(device)
    thresholds, values = (t.to(device) for t in level_set(8))
    per_channel = scales_for(x, 1).to(device)
    per_tensor = torch.tensor([0.7], device=device)
    return [
        (x.to(memory_format=torch.channels_last), per_channel, thresholds, values, 1),
        (x, per_tensor, thresholds, values, -1),
        (x[:, ::2], per_channel[::2], thresholds, values, 1),
        (x, per_tensor, thresholds[:0], values[:1], -1),
        (x, scales_for(x, 3).to(device), thresholds, values, 3),
    ]


@pytest.mark.parametrize("case", range(5))
def test_opcheck(case):
    torch.library.opcheck(ops.threshold_quant, opcheck_cases()[case])


@pytest.mark.parametrize("bad, message", [
    (lambda x, s, t, v: ops.threshold_quant(x.double(), s, t, v, 1), "x must be float32"),
    (lambda x, s, t, v: ops.threshold_quant(x, s.double(), t, v, 1), "scale must be float32"),
    (lambda x, s, t, v: ops.threshold_quant(x, s, t.double(), v, 1), "thresholds must be float32"),
    (lambda x, s, t, v: ops.threshold_quant(x, s, t, v.int(), 1), "values must be float32"),
    (lambda x, s, t, v: ops.threshold_quant(x, s, t.reshape(1, -1), v, 1), "thresholds must be 1-d"),
    (lambda x, s, t, v: ops.threshold_quant(x, s, t, v.reshape(2, 2), 1), "values must be 1-d"),
    (lambda x, s, t, v: ops.threshold_quant(x, s, t, v[:3], 1), "K levels need K - 1 thresholds"),
    (lambda x, s, t, v: ops.threshold_quant(x, s[:3], t, v, 1), "scale has 3 elements but axis 1 has 6 channels"),
    (lambda x, s, t, v: ops.threshold_quant(x, s, t, v, -1), "per tensor"),
    (lambda x, s, t, v: ops.threshold_quant(x, s, t, v, 4), "out of range"),
    (lambda x, s, t, v: ops.threshold_quant(x, s, t.flip(0), v, 1), r"sorted ascending, but thresholds\[1\]"),
    (lambda x, s, t, v: ops.threshold_quant(x, s, torch.tensor([0.0, NAN, 1.0]), v, 1), r"thresholds\[1\] is NaN"),
    (lambda x, s, t, v: ops.threshold_quant(x, s, torch.zeros(70000), torch.zeros(70001), 1), "at most 65536"),
])
def test_bad_inputs_are_rejected(bad, message):
    thresholds, values = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([-2.0, -0.5, 1.0, 3.0])
    with pytest.raises(RuntimeError, match=message):
        bad(sample((2, 6, 3, 3)), torch.ones(6), thresholds, values)


def test_reference_rejects_bad_tables():
    x = sample((2, 6))
    with pytest.raises(ValueError, match="sorted ascending"):
        primitives.threshold_quantize(x, torch.ones(1), torch.tensor([1.0, 0.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="K - 1 thresholds"):
        primitives.threshold_quantize(x, torch.ones(1), torch.tensor([0.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="1-d"):
        primitives.threshold_quantize(x, torch.ones(1), torch.zeros(1, 1), torch.zeros(2))


# ---- backend ---------------------------------------------------------------------------------

def backend_cases():
    x = sample((4, 6, 5, 5), seed=8).double()
    thresholds, values = level_set(12, seed=8)
    return x, thresholds, values, scales_for(x, 1, seed=8)


def test_backend_dispatches_to_kernels_with_reference_results(monkeypatch):
    x, thresholds, values, scale = backend_cases()
    expected = primitives.threshold_quantize(x, scale, thresholds, values, 1)
    expected_scalar = primitives.threshold_quantize(x, torch.tensor(0.8), thresholds, values, 1)
    levels = torch.tensor([0.5, -1.0, 2.0, 0.0])
    sorted_levels = torch.sort(levels).values
    expected_levels = primitives.threshold_quantize(x, scale, primitives.midpoint_thresholds(sorted_levels),
                                                    sorted_levels, 1)
    backend.set_backend("kernels")
    monkeypatch.setattr(primitives, "threshold_quantize", _not_called)
    actual = backend.threshold_quantize(x, scale, thresholds, values, axis=-3)
    assert actual.dtype == torch.float64 and torch.equal(actual, expected)
    scalar = backend.threshold_quantize(x, torch.tensor(0.8), thresholds.tolist(), values.tolist(), axis=1)
    assert torch.equal(scalar, expected_scalar)
    assert torch.equal(backend.quantize_to_levels(x, scale, levels, axis=1), expected_levels)


@pytest.mark.parametrize("fallback", ("reference", "auto"))
def test_backend_falls_back_to_the_reference(fallback, monkeypatch):
    x, thresholds, values, scale = backend_cases()
    backend.set_backend("kernels")
    fast = backend.threshold_quantize(x, scale, thresholds, values, 1)
    fast_levels = backend.quantize_to_levels(x, scale, values, 1)
    if fallback == "auto":
        monkeypatch.setattr(build, "load_cpu", lambda: False)  # as if the kernels were not built
    backend.set_backend(fallback)
    calls = []
    monkeypatch.setattr(primitives, "threshold_quantize", _counting(primitives.threshold_quantize, calls))
    slow = backend.threshold_quantize(x, scale, thresholds, values, 1)
    slow_levels = backend.quantize_to_levels(x, scale, values, 1)
    assert backend.active_backend() == "reference" and len(calls) == 2
    assert slow.dtype == torch.float64 and torch.equal(slow, fast) and torch.equal(slow_levels, fast_levels)


def _not_called(*args, **kwargs):
    raise AssertionError("the reference ran although the kernels are available")


def _counting(function, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)
    return wrapper


# ---- CUDA ------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("levels", (1, 16, 3000))  # 3000 levels do not fit in shared memory
def test_cuda_matches_cpu(cuda_ops, levels, axis, layout):
    x = sample((8, 16, 9, 7), seed=11)
    x.view(-1)[::17] = NAN
    thresholds, values = level_set(levels, seed=levels, midpoints=levels != 16, repeats=True)
    scale = scales_for(x, axis)
    scale[::4] = 0.0
    xl = in_layout(x, layout)
    expected = ops.threshold_quant(xl, scale, thresholds, values, op_axis(axis))
    actual = cuda_ops.threshold_quant(xl.cuda(), scale.cuda(), thresholds.cuda(), values.cuda(), op_axis(axis))
    assert actual.stride() == expected.stride()
    torch.testing.assert_close(actual.cpu(), expected, rtol=0, atol=0, equal_nan=True)
    finite = ~torch.isnan(expected)
    assert_same_bits(actual.cpu()[finite], expected[finite])


@needs_cuda
@pytest.mark.parametrize("case", range(5))
def test_opcheck_cuda(cuda_ops, case):
    torch.library.opcheck(cuda_ops.threshold_quant, opcheck_cases("cuda")[case])


@needs_cuda
def test_cuda_rejects_tables_on_another_device(cuda_ops):
    x = sample((2, 6)).cuda()
    with pytest.raises(RuntimeError, match="thresholds is on cpu but x is on cuda"):
        cuda_ops.threshold_quant(x, torch.ones(1, device="cuda"), torch.tensor([0.0]),
                                 torch.zeros(2, device="cuda"), -1)
    with pytest.raises(RuntimeError, match="sorted ascending"):
        cuda_ops.threshold_quant(x, torch.ones(1, device="cuda"), torch.tensor([1.0, 0.0], device="cuda"),
                                 torch.zeros(3, device="cuda"), -1)
