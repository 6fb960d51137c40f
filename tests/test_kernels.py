"""The ptq_kernels ops against the pure-PyTorch reference (bit for bit where deterministic),
their schemas and fake kernels (torch.library.opcheck), stochastic rounding, and the backend switch.

The module builds the CPU extension on first use (about 15 s, then cached in kernels/build/) and
is skipped as a whole when that is impossible (no compiler); CUDA tests need a GPU.
"""
import logging
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_support import AXES, LAYOUTS, in_layout, cuda_ops, kernel_ops, needs_cuda, reset_backend  # noqa: F401
from kernels import build
from pytorch_quantizer.quantizers import backend
from pytorch_quantizer.maths import primitives
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.maths.stats import compute_stats

ops = kernel_ops()


def op_axis(axis: int | None) -> int:
    return -1 if axis is None else axis


def gemmlowp_case(x: torch.Tensor, axis: int | None, bits, half_range: bool = False, power_of_two: bool = False):
    """Parameters from a range a little narrower than the data, so that some values saturate."""
    rows = primitives.channels_first(x, axis)
    lo = torch.zeros(rows.shape[0]) if half_range else rows.amin(dim=1) * 0.8
    scale, zero_point, qmax = primitives.gemmlowp_params(lo, rows.amax(dim=1) * 0.8, bits, power_of_two)
    if axis is None:
        return scale.reshape(()), zero_point.reshape(()), qmax.reshape(())
    return scale, zero_point, qmax


def mid_tread_case(x: torch.Tensor, axis: int | None, generator: torch.Generator):
    """Fractional bin counts (K = 0 included), a zero alpha, centres at the channel means."""
    rows = primitives.channels_first(x, axis)
    channels = rows.shape[0]
    bins = torch.tensor([0.5, 1.0, 2.5, 3.7, 5.3, 9.99, 17.9, 255.5])[torch.arange(channels) % 8]
    alpha = rows.abs().amax(dim=1) * torch.rand(channels, generator=generator) * 0.9
    alpha[::5] = 0.0
    center = rows.mean(dim=1)
    if axis is None:
        return center.reshape(()), alpha.reshape(()), bins.reshape(())
    return center, alpha, bins


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual.view(torch.int32), expected.view(torch.int32)), \
        f"{(actual != expected).sum()} of {actual.numel()} elements differ"


def sample(shape, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


# ---- GEMMLOWP parity -------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("bits", range(2, 9))
def test_fake_quant_matches_reference(bits, axis, layout):
    x = sample((4, 6, 5, 7), seed=bits)
    scale, zero_point, qmax = gemmlowp_case(x, axis, bits)
    expected = primitives.fake_quantize(x, scale, zero_point, qmax, axis)
    xl = in_layout(x, layout)
    actual = ops.fake_quant(xl, scale, zero_point, qmax, op_axis(axis), 0, False)
    assert actual.stride() == xl.stride()
    assert_same_bits(actual, expected)
    codes = ops.quant_codes(xl, scale, zero_point, qmax, op_axis(axis), 0, False)
    assert torch.equal(codes, primitives.quantize_codes(x, scale, zero_point, qmax, axis))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("axis", (0, 1, 2, 3))
def test_bit_allocation_half_range_and_power_of_two(axis, layout):
    x = sample((3, 8, 6, 5), seed=axis).relu()
    channels = x.shape[axis]
    bits = torch.randint(0, 9, (channels,), generator=torch.Generator().manual_seed(axis))
    for half_range, power_of_two in ((False, False), (True, False), (True, True)):
        scale, zero_point, qmax = gemmlowp_case(x, axis, bits, half_range, power_of_two)
        expected = primitives.fake_quantize(x, scale, zero_point, qmax, axis)
        assert_same_bits(ops.fake_quant(in_layout(x, layout), scale, zero_point, qmax, axis, 0, False), expected)


@pytest.mark.parametrize("scale", [0.25, 0.3])
def test_ties_round_to_even_and_special_values(scale):
    """Halfway values: with s = 0.3, round(x / s) differs from round(x * (1/s)) for about 1 in 10."""
    scale = torch.tensor(scale)
    x = (torch.arange(-1000, 1000, dtype=torch.float32) + 0.5) * scale
    x = torch.cat([x, torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0])])
    zero_point, qmax = torch.tensor(2048.0), torch.tensor(4095.0)
    expected = primitives.fake_quantize(x, scale, zero_point, qmax)
    torch.testing.assert_close(ops.fake_quant(x, scale, zero_point, qmax, -1, 0, False), expected,
                               rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("shape, axis", [
    ((3, 70000), 0),          # long runs split across parallel tasks
    ((2, 3, 40, 5), 2),       # short runs (inner 5): row loop
    ((64, 3000), 1),          # channel is the fastest dim of a contiguous tensor
    ((257, 33, 3), None),     # per tensor over several parallel tasks
])
def test_layout_paths_match_reference(shape, axis):
    x = sample(shape, seed=len(shape))
    scale, zero_point, qmax = gemmlowp_case(x, axis, 4)
    expected = primitives.fake_quantize(x, scale, zero_point, qmax, axis)
    assert_same_bits(ops.fake_quant(x, scale, zero_point, qmax, op_axis(axis), 0, False), expected)


def test_non_dense_input_gives_dense_output():
    x = sample((4, 12, 6, 6))[:, ::2, :, 1:]
    scale, zero_point, qmax = gemmlowp_case(x, 1, 3)
    actual = ops.fake_quant(x, scale, zero_point, qmax, 1, 0, False)
    assert actual.is_contiguous()
    assert_same_bits(actual, primitives.fake_quantize(x, scale, zero_point, qmax, 1))


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), data=st.data())
def test_fake_quant_matches_reference_property(shape, data):
    axis = data.draw(st.sampled_from([None, *range(len(shape))]))
    bits = data.draw(st.integers(1, 8))
    spread = data.draw(st.sampled_from([1e-3, 1.0, 1e4]))
    x = sample(shape, seed=data.draw(st.integers(0, 10**6)), scale=spread)
    scale, zero_point, qmax = gemmlowp_case(x, axis, bits, half_range=data.draw(st.booleans()))
    expected = primitives.fake_quantize(x, scale, zero_point, qmax, axis)
    assert_same_bits(ops.fake_quant(x, scale, zero_point, qmax, op_axis(axis), 0, False), expected)


# ---- mid-tread parity ------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("axis", AXES)
def test_mid_tread_matches_reference(axis, layout):
    x = sample((4, 16, 5, 8), seed=7)
    center, alpha, bins = mid_tread_case(x, axis, torch.Generator().manual_seed(1))
    expected_codes, _ = primitives.mid_tread_codes(x, center, alpha, bins, axis)
    expected = primitives.fake_quantize_mid_tread(x, center, alpha, bins, axis)
    xl = in_layout(x, layout)
    assert_same_bits(ops.fake_quant_mid_tread(xl, center, alpha, bins, op_axis(axis), 0, False), expected)
    assert torch.equal(ops.mid_tread_codes(xl, center, alpha, bins, op_axis(axis), 0, False), expected_codes)


# ---- statistics and histograms ---------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("axis", AXES)
def test_stats_match_reference(axis, layout):
    x = sample((8, 24, 9, 11), seed=3, scale=0.5) + 3.0
    expected = compute_stats(x, axis)
    backend.set_backend("kernels")
    actual = backend.compute_stats(in_layout(x, layout), axis)
    for name in ("min", "max"):
        assert torch.equal(getattr(actual, name), getattr(expected, name))
    for name in ("mean", "std", "b"):
        torch.testing.assert_close(getattr(actual, name), getattr(expected, name), rtol=1e-5, atol=0)


def test_stats_do_not_depend_on_thread_count():
    x = sample((16, 32, 40, 40), seed=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ops.channel_stats(x, 1)
        torch.set_num_threads(max(2, threads))
        multi = ops.channel_stats(x, 1)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(single, multi))


def test_stats_propagate_nan():
    x = sample((3, 4, 50))
    x[1, 2, 7] = float("nan")
    minimum, maximum, total, _ = ops.channel_stats(x, 1)
    assert torch.isnan(minimum[2]) and torch.isnan(maximum[2]) and torch.isnan(total[2])
    assert not torch.isnan(minimum[[0, 1, 3]]).any()


@pytest.mark.parametrize("axis", AXES)
def test_code_histogram_matches_reference(axis):
    x = sample((6, 10, 7, 9), seed=5)
    center, alpha, bins = mid_tread_case(x, axis, torch.Generator().manual_seed(2))
    codes = primitives.mid_tread_codes(x, center, alpha, bins, axis)[0]
    for low, num_bins in ((-127, 255), (-3, 4)):  # all codes, and a window that leaves some out
        expected = backend.reference_code_histogram(codes, low, num_bins, axis)
        assert torch.equal(ops.code_histogram(in_layout(codes, "channels_last"), low, num_bins, op_axis(axis)), expected)
    if axis is None:
        assert backend.reference_code_histogram(codes, -127, 255).sum() == codes.numel()


# ---- stochastic rounding ---------------------------------------------------------------------

def test_stochastic_rounding_is_unbiased():
    n = 1_000_000
    scale, zero_point, qmax = torch.tensor(0.5), torch.tensor(8.0), torch.tensor(15.0)
    x = torch.full((n,), 1.3 * 0.5)  # v = 1.3: codes 9 (70 %) or 10 (30 %) around z + 1.3
    codes = ops.quant_codes(x, scale, zero_point, qmax, -1, 123, True)
    assert set(codes.unique().tolist()) == {9.0, 10.0}
    assert abs(codes.double().mean().item() - 9.3) < 2.5e-3  # 5 sigma, sigma = sqrt(0.21 / n)
    y = sample((n,), seed=6, scale=1.0).clamp(-3.5, 3.5)
    error = ops.fake_quant(y, scale, zero_point, qmax, -1, 7, True) - y
    bound = 5 * (0.5 * 0.5) / n ** 0.5  # 5 sigma: |error| < s = 0.5, so its variance is at most s^2 / 4
    assert abs(error.double().mean().item()) < bound
    center, alpha, bins = torch.tensor(0.0), torch.tensor(3.5), torch.tensor(15.0)
    error = ops.fake_quant_mid_tread(y, center, alpha, bins, -1, 8, True) - y
    assert abs(error.double().mean().item()) < bound  # step = alpha / K = 0.5


def test_stochastic_rounding_is_reproducible_per_seed():
    x = sample((64, 32, 7, 7), seed=9)
    scale, zero_point, qmax = gemmlowp_case(x, 1, 4)
    first = ops.fake_quant(x, scale, zero_point, qmax, 1, 11, True)
    assert torch.equal(first, ops.fake_quant(x, scale, zero_point, qmax, 1, 11, True))
    other = ops.fake_quant(x, scale, zero_point, qmax, 1, 12, True)
    assert (first != other).float().mean() > 0.2
    nearest = ops.fake_quant(x, scale, zero_point, qmax, 1, 0, False)
    assert ((first - nearest).abs() <= scale.reshape(1, -1, 1, 1) * 1.0001).all()


# ---- op contracts ----------------------------------------------------------------------------

def opcheck_cases(device: str = "cpu"):
    x = sample((2, 6, 4, 5)).to(device)
    per_channel = [t.to(device) for t in gemmlowp_case(x.cpu(), 1, 4)]
    per_tensor = [t.reshape(1).to(device) for t in gemmlowp_case(x.cpu(), None, 4)]
    mid = [t.to(device) for t in mid_tread_case(x.cpu(), 1, torch.Generator().manual_seed(0))]
    x_last = x.to(memory_format=torch.channels_last)
    codes = ops.mid_tread_codes(x, *mid, 1, 0, False)
    return [
        (ops.fake_quant, (x_last, *per_channel, 1, 3, True)),
        (ops.fake_quant, (x, *per_tensor, -1, 0, False)),
        (ops.quant_codes, (x, *per_channel, 1, 0, False)),
        (ops.fake_quant_mid_tread, (x_last, *mid, 1, 0, False)),
        (ops.mid_tread_codes, (x, *mid, 1, 5, True)),
        (ops.code_histogram, (codes, -127, 255, 1)),
        (ops.channel_stats, (x_last, 1)),
        (ops.channel_stats, (x, -1)),
        (ops.channel_mean_abs_dev, (x, torch.zeros(6, device=device), 1)),
    ]


@pytest.mark.parametrize("case", range(9))
def test_opcheck(case):
    op, args = opcheck_cases()[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("bad, message", [
    (lambda x, s: ops.fake_quant(x.double(), s, s, s, 1, 0, False), "float32"),
    (lambda x, s: ops.fake_quant(x, s[:3], s, s, 1, 0, False), "channels"),
    (lambda x, s: ops.fake_quant(x, s, s, s, 4, 0, False), "out of range"),
    (lambda x, s: ops.fake_quant(x, s, s, s, -1, 0, False), "per tensor"),
    (lambda x, s: ops.channel_mean_abs_dev(x, s[:2], 1), "channels"),
])
def test_bad_inputs_are_rejected(bad, message):
    with pytest.raises(RuntimeError, match=message):
        bad(sample((2, 6, 3, 3)), torch.ones(6))


# ---- backend ---------------------------------------------------------------------------------

def test_backend_dispatches_to_kernels_with_reference_results():
    backend.set_backend("kernels")
    assert backend.active_backend() == "kernels"
    x = sample((4, 6, 5, 5)).double()
    scale, zero_point, qmax = gemmlowp_case(x.float(), 1, 3)
    expected = primitives.fake_quantize(x, scale, zero_point, qmax, 1)
    actual = backend.fake_quantize(x, scale, zero_point, qmax, axis=-3)
    assert actual.dtype == torch.float64 and torch.equal(actual, expected)
    center, alpha, bins = mid_tread_case(x.float(), 1, torch.Generator().manual_seed(3))
    codes, step = backend.mid_tread_codes(x, center, alpha, bins, 1)
    expected_codes, expected_step = primitives.mid_tread_codes(x, center, alpha, bins, 1)
    assert torch.equal(codes, expected_codes) and torch.equal(step, expected_step)
    assert torch.equal(backend.fake_quantize_mid_tread(x, center, alpha, bins, 1),
                       primitives.fake_quantize_mid_tread(x, center, alpha, bins, 1))
    seeded = backend.quantize_codes(x, scale, zero_point, qmax, 1, generator_seed=5)
    assert torch.equal(seeded, backend.quantize_codes(x, scale, zero_point, qmax, 1, generator_seed=5))


def test_backend_reference_and_auto_fallback(monkeypatch, caplog):
    backend.set_backend("reference")
    assert backend.active_backend() == "reference"
    monkeypatch.setattr(build, "load_cpu", lambda: False)
    backend.set_backend("auto")
    with caplog.at_level(logging.WARNING, logger="pytorch_quantizer.quantizers.backend"):
        x = sample((2, 3, 4))
        for _ in range(3):
            backend.compute_stats(x, 1)
        assert backend.active_backend() == "reference"
    assert len([r for r in caplog.records if "unavailable" in r.message]) == 1
    backend.set_backend("kernels")
    with pytest.raises(QuantizationError, match="kernels/build.py"):
        backend.active_backend()
    with pytest.raises(QuantizationError, match="unknown backend"):
        backend.set_backend("fast")


def test_importing_the_backend_loads_nothing():
    script = ("import sys, torch, pytorch_quantizer.quantizers.backend; "
              "assert not torch.ops.loaded_libraries and 'kernels.build' not in sys.modules")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=build.KERNELS_DIR.parent)


# ---- CUDA ------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("axis", AXES)
def test_cuda_matches_cpu(cuda_ops, axis, layout):
    x = sample((8, 16, 9, 7), seed=11)
    scale, zero_point, qmax = gemmlowp_case(x, axis, 5)
    gpu = [t.cuda() for t in (scale, zero_point, qmax)]
    xl, xg = in_layout(x, layout), in_layout(x, layout).cuda()
    for stochastic in (False, True):
        expected = ops.fake_quant(xl, scale, zero_point, qmax, op_axis(axis), 3, stochastic)
        actual = ops.fake_quant(xg, *gpu, op_axis(axis), 3, stochastic)
        assert actual.stride() == expected.stride()
        assert_same_bits(actual.cpu(), expected)
    center, alpha, bins = mid_tread_case(x, axis, torch.Generator().manual_seed(4))
    expected = ops.fake_quant_mid_tread(xl, center, alpha, bins, op_axis(axis), 0, False)
    actual = ops.fake_quant_mid_tread(xg, center.cuda(), alpha.cuda(), bins.cuda(), op_axis(axis), 0, False)
    assert_same_bits(actual.cpu(), expected)
    codes = ops.mid_tread_codes(xl, center, alpha, bins, op_axis(axis), 0, False)
    assert torch.equal(ops.code_histogram(codes.cuda(), -127, 255, op_axis(axis)).cpu(),
                       ops.code_histogram(codes, -127, 255, op_axis(axis)))
    for a, b in zip(ops.channel_stats(xg, op_axis(axis)), ops.channel_stats(xl, op_axis(axis))):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-9)


@needs_cuda
@pytest.mark.parametrize("case", range(9))
def test_opcheck_cuda(cuda_ops, case):
    op, args = opcheck_cases("cuda")[case]
    torch.library.opcheck(op, args)
