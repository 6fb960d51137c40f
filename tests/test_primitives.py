"""GEMMLOWP fake quantization equals PyTorch's reference ops; stochastic rounding; mid-tread grids."""
import torch
from hypothesis import given, settings, strategies as st

from pytorch_quantizer.maths import primitives


def tensors(min_dims=1, max_dims=4):
    shape = st.lists(st.integers(1, 6), min_size=min_dims, max_size=max_dims)
    return st.tuples(shape, st.integers(0, 2**31 - 1), st.floats(0.01, 100.0))


def sample(shape, seed, spread):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * spread


@settings(max_examples=150, deadline=None)
@given(tensors(), st.sampled_from([4, 8]), st.floats(-3.0, 0.0), st.floats(0.0, 3.0))
def test_per_tensor_equals_torch_fake_quantize(data, bits, lo_factor, hi_factor):
    shape, seed, spread = data
    x = sample(shape, seed, spread)
    lo, hi = torch.tensor(lo_factor * spread), torch.tensor(hi_factor * spread + 1e-3)
    scale, zero_point, qmax = primitives.gemmlowp_params(lo, hi, bits)
    ours = primitives.fake_quantize(x, scale, zero_point, qmax)
    theirs = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), 0, int(qmax))
    assert torch.equal(ours, theirs)


@settings(max_examples=150, deadline=None)
@given(tensors(min_dims=2), st.sampled_from([4, 8]), st.data())
def test_per_channel_equals_torch_fake_quantize(data, bits, draw):
    shape, seed, spread = data
    x = sample(shape, seed, spread)
    axis = draw.draw(st.integers(0, x.dim() - 1))
    stats_rows = primitives.channels_first(x, axis)
    lo, hi = stats_rows.amin(dim=1), stats_rows.amax(dim=1) + 1e-3
    scale, zero_point, qmax = primitives.gemmlowp_params(lo, hi, bits)
    ours = primitives.fake_quantize(x, scale, zero_point, qmax, axis=axis)
    theirs = torch.fake_quantize_per_channel_affine(x, scale, zero_point.int(), axis, 0, int(qmax[0]))
    assert torch.equal(ours, theirs)


def test_zero_is_exactly_representable_for_any_range():
    for lo, hi in ((-1.3, 2.7), (0.2, 5.0), (-4.0, -0.5), (-0.001, 1000.0)):
        scale, zero_point, qmax = primitives.gemmlowp_params(torch.tensor(lo), torch.tensor(hi), 4)
        zero = primitives.fake_quantize(torch.zeros(3), scale, zero_point, qmax)
        assert torch.equal(zero, torch.zeros(3))


def test_non_negative_range_uses_all_levels_for_positive_values():
    scale, zero_point, qmax = primitives.gemmlowp_params(torch.tensor(0.0), torch.tensor(15.0), 4)
    assert float(zero_point) == 0 and float(scale) == 1.0
    x = torch.arange(0, 16, dtype=torch.float32)
    assert torch.equal(primitives.fake_quantize(x, scale, zero_point, qmax), x)


def test_per_channel_bit_widths_give_each_channel_its_levels():
    x = torch.linspace(0, 1, 1000).repeat(3, 1)
    bits = torch.tensor([2.0, 4.0, 8.0])
    out = primitives.fake_quantize_range(x, torch.zeros(3), torch.ones(3), bits, axis=0)
    assert [len(torch.unique(row)) for row in out] == [4, 16, 256]


def test_power_of_two_scale_is_a_power_of_two_not_below_the_exact_scale():
    scale, _, _ = primitives.gemmlowp_params(torch.tensor(-1.0), torch.tensor(2.0), 4, power_of_two=True)
    exact = 3.0 / 15
    assert float(scale) == 0.25 and float(scale) >= exact


def test_stochastic_rounding_is_unbiased_and_reproducible():
    x = torch.rand(1_000_000) * 10
    scale, zero_point, qmax = primitives.gemmlowp_params(torch.tensor(0.0), torch.tensor(10.0), 4)
    first = primitives.fake_quantize(x, scale, zero_point, qmax, generator=torch.Generator().manual_seed(7))
    again = primitives.fake_quantize(x, scale, zero_point, qmax, generator=torch.Generator().manual_seed(7))
    nearest = primitives.fake_quantize(x, scale, zero_point, qmax)
    assert torch.equal(first, again)
    assert abs(float((first - x).mean())) < 2e-3 * float(scale)
    assert float((first - x).abs().mean()) > float((nearest - x).abs().mean())


def test_mid_tread_grid_is_symmetric_with_fractional_bins():
    x = torch.linspace(-3, 3, 10001).repeat(2, 1)
    center, alpha = torch.zeros(2), torch.tensor([2.0, 2.0])
    bins = torch.tensor([7.9, 16.0])
    out = primitives.fake_quantize_mid_tread(x, center, alpha, bins, axis=0)
    levels = [torch.unique(row) for row in out]
    assert [len(row) for row in levels] == [7, 15]
    for row in levels:
        assert torch.allclose(row, -row.flip(0)) and float(row.max()) == 2.0 and 0.0 in row
    single = primitives.fake_quantize_mid_tread(x, torch.full((2,), 0.5), alpha, torch.tensor([2.0, 1.0]), axis=0)
    assert torch.equal(single, torch.full_like(x, 0.5))
