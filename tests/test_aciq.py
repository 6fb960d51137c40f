"""ACIQ constants, clipping methods on synthetic data, bit and bin allocation."""
import math

import pytest
import torch

from pytorch_quantizer.maths import aciq, allocation
from pytorch_quantizer.maths.clipping import get_clipping, list_clipping
from pytorch_quantizer.maths.departures import Departures
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.maths.primitives import fake_quantize_range
from pytorch_quantizer.maths.stats import compute_stats

LAPLACE = [1.8628, 2.8307, 3.8972, 5.0286, 6.2048, 7.4131, 8.6456, 9.8968]
GAUSSIAN = [1.2399, 1.7106, 2.1516, 2.5591, 2.9362, 3.2869, 3.6151, 3.9240]
IMPROVED = Departures.all()


@pytest.mark.parametrize("prior, expected", [("laplace", LAPLACE), ("gaus", GAUSSIAN)])
def test_constants_are_the_numerical_minima(prior, expected):
    for bits, value in enumerate(expected, start=1):
        assert abs(aciq.optimal_ratio(prior, bits) - value) < 1e-3
        assert abs(float(aciq.optimal_ratios(prior, torch.tensor([float(bits)]))[0]) - value) < 1e-3


def test_fractional_bits_interpolate_between_integer_constants():
    value = float(aciq.optimal_ratios("laplace", torch.tensor([4.5]))[0])
    assert LAPLACE[3] < value < LAPLACE[4]
    assert abs(value - aciq.optimal_ratio("laplace", 4.5)) < 1e-3


def clipped_mse(x, name, bits=4):
    stats = compute_stats(x)
    method = get_clipping(name)
    if method.needs_values:
        lo, hi = method.measure(x.reshape(1, -1), torch.tensor([float(bits)]), stats.non_negative)
    else:
        lo, hi = method.clip_range(stats, torch.tensor([float(bits)]), stats.non_negative, IMPROVED)
    return float((fake_quantize_range(x, lo[0], hi[0], bits) - x).square().mean())


@pytest.fixture(scope="module")
def laplace_samples():
    torch.manual_seed(0)
    return torch.distributions.Laplace(0.0, 1.0).sample((1_000_000,))


def test_laplace_clipping_beats_minmax_and_2std_and_matches_the_formula(laplace_samples):
    laplace = clipped_mse(laplace_samples, "laplace")
    assert laplace < clipped_mse(laplace_samples, "no")
    assert laplace < clipped_mse(laplace_samples, "2std")
    b = float((laplace_samples - laplace_samples.mean()).abs().mean())
    alpha = aciq.optimal_ratio("laplace", 4) * b
    on_gemmlowp_grid = float(aciq.laplace_mse_gemmlowp(alpha, b, 4))
    assert abs(laplace - on_gemmlowp_grid) / on_gemmlowp_grid < 0.10
    # the paper's rounding term assumes 2^M steps; GEMMLOWP has 2^M - 1: (16 / 15)^2 more rounding noise
    paper = float(aciq.laplace_mse(alpha, b, 4))
    assert 1.0 < laplace / paper < 1.15


def test_gaussian_clipping_beats_minmax_on_gaussian_samples():
    samples = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    assert clipped_mse(samples, "gaus") < clipped_mse(samples, "no")


@pytest.mark.parametrize("name", ["mse", "mix", "pct", "kld"])
def test_value_based_methods_beat_minmax_on_heavy_tails(laplace_samples, name):
    subset = laplace_samples[:200_000]
    assert clipped_mse(subset, name) < clipped_mse(subset, "no")


def test_mse_search_is_at_least_as_good_as_laplace(laplace_samples):
    subset = laplace_samples[:200_000]
    assert clipped_mse(subset, "mse") <= clipped_mse(subset, "laplace") * 1.01


def test_registry_lists_methods_and_rejects_unknown_names():
    assert {"no", "laplace", "gaus", "kld", "mix", "pct", "mse", "Kstd"} <= set(list_clipping())
    assert get_clipping("2.5std").name == "2.5std"
    with pytest.raises(QuantizationError, match="unknown clipping method '2xstd'"):
        get_clipping("2xstd")


def test_non_negative_tensor_uses_the_next_bit_constant():
    x = torch.distributions.Exponential(1.0).sample((100_000,))
    stats = compute_stats(x)
    lo, hi = get_clipping("laplace").clip_range(stats, torch.tensor([4.0]), True, IMPROVED)
    assert float(lo) == 0.0
    assert math.isclose(float(hi), aciq.optimal_ratio("laplace", 5) * float(x.mean()), rel_tol=1e-5)
    lo, hi = get_clipping("laplace").clip_range(stats, torch.tensor([4.0]), True)  # the seed: mean + 6.2 b
    assert float(lo) == 0.0
    assert math.isclose(float(hi), float(stats.mean) + 6.2 * float(stats.b), rel_tol=1e-6)


def test_seed_table_is_the_exact_ratios_to_two_decimals():
    for bits in range(1, 9):
        for prior, exact in (("laplace", LAPLACE), ("gaus", GAUSSIAN)):
            seed = float(aciq.seed_ratios(prior, torch.tensor([float(bits)]), False)[0])
            assert abs(exact[bits - 1] - seed) < 0.01  # two decimals (3.89 for 3.8972, 1.24 for 1.2399)


@pytest.mark.parametrize("zeros", [0.5, 0.9, 0.98])
def test_rectified_laplace_scale_ignores_the_zeros_and_clips_near_the_optimum(zeros):
    """ReLU of a Laplace(-m, 1) whose positive part is a unit exponential: the fitted scale is 1 at any
    sparsity, and the clip has an MSE within 5 % of the best clip of a fine search."""
    torch.manual_seed(3)
    shift = -math.log(2 * (1 - zeros))
    x = torch.relu(torch.distributions.Laplace(-shift, 1.0).sample((1_000_000,)))
    stats = compute_stats(x)
    assert abs(float(stats.positive_fraction) - (1 - zeros)) < 0.005
    assert abs(float(stats.rectified_b) - 1.0) < 0.02
    bits = torch.tensor([4.0])
    lo, hi = get_clipping("laplace").clip_range(stats, bits, True, IMPROVED)
    aciq_mse = float((fake_quantize_range(x, lo[0], hi[0], 4) - x).square().mean())
    searched = min(float((fake_quantize_range(x, torch.tensor(0.0), torch.tensor(a), 4) - x).square().mean())
                   for a in torch.linspace(1.0, float(x.max()), 200).tolist())
    assert aciq_mse < searched * 1.05


@pytest.mark.parametrize("target", [2.0, 3.0, 4.0, 4.5, 3.3])
@pytest.mark.parametrize("rounding", ["round", "ceil"])
def test_bit_allocation_hits_the_target_and_is_monotone(target, rounding):
    alpha = torch.rand(64, generator=torch.Generator().manual_seed(1)) ** 3 * 10 + 1e-3
    bits = allocation.allocate_bits(alpha, target, rounding)
    assert abs(float(bits.mean()) - target) <= 0.05
    order = torch.argsort(alpha)
    assert bool((bits[order][1:] >= bits[order][:-1]).all())
    assert float(bits.min()) >= 0 and float(bits.max()) <= 8


def test_bit_allocation_lowers_total_mse_of_channels_with_different_scales():
    generator = torch.Generator().manual_seed(2)
    scales = torch.logspace(-1, 1, 32)
    channels = torch.randn(32, 20_000, generator=generator) * scales.unsqueeze(1)
    stats = compute_stats(channels, axis=0)
    method = get_clipping("gaus")

    def total_mse(bits):
        lo, hi = method.clip_range(stats, bits, False, IMPROVED)
        return float((fake_quantize_range(channels, lo, hi, bits, axis=0) - channels).square().sum())

    allocated = allocation.allocate_bits(stats.std, 4.0)
    assert float(allocated.mean()) == 4.0
    assert total_mse(allocated) < 0.7 * total_mse(torch.full((32,), 4.0))


def test_bin_allocation_keeps_the_quota_with_fractional_targets():
    alpha = torch.rand(50, generator=torch.Generator().manual_seed(3)) + 0.1
    bins = allocation.allocate_bins(alpha, 5.3)
    assert math.isclose(float(bins.sum()), 50 * 2**5.3, rel_tol=1e-5)
    assert bool((bins[torch.argsort(alpha)].diff() >= 0).all())


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("non_negative", [False, True])
def test_binned_mse_agrees_with_the_mse_of_every_value(laplace_samples, bits, non_negative):
    """The histogram's error of every candidate range within 0.1 % of the one computed value by
    value (``quantization_mse``), and the same candidate chosen."""
    from pytorch_quantizer.maths.clipping import (binned_quantization_mse, binned_values, histogram_bins,
                                                  quantization_mse, range_within_data)

    rows = laplace_samples[:400_000].reshape(1, -1) + 0.3
    rows = rows.clamp(0.0, 6.0) if non_negative else rows
    mean = (rows.sum(dim=1, dtype=torch.float64) / rows.shape[1]).float()
    spread = rows.amax(dim=1) if non_negative else (rows - mean).abs().amax(dim=1)
    width = torch.tensor([float(bits)])
    binned = binned_values(rows, histogram_bins(width, 1))
    exact, histogram = [], []
    for fraction in torch.arange(1, 101) / 100:
        lo, hi = range_within_data(rows.amin(dim=1), rows.amax(dim=1), mean, fraction * spread, non_negative)
        exact.append(float(quantization_mse(rows, lo, hi, width)))
        histogram.append(float(binned_quantization_mse(binned, lo, hi, width)))
    exact, histogram = torch.tensor(exact), torch.tensor(histogram)
    assert ((histogram - exact).abs() / exact).max() < 1e-3
    assert int(histogram.argmin()) == int(exact.argmin())


def test_binned_values_of_short_rows_are_the_values_themselves():
    from pytorch_quantizer.maths.clipping import binned_values

    rows = torch.randn(5, 25, generator=torch.Generator().manual_seed(3))
    counts, sums, squares = binned_values(rows, 4096)
    assert torch.equal(counts, torch.ones(5, 25, dtype=torch.float64)) and torch.equal(sums, rows.double())
    assert torch.equal(squares, rows.double().square())


@pytest.mark.parametrize("name", ["mse", "kld", "pct", "mix"])
def test_measured_clipping_at_a_fused_relu6_measures_what_the_activation_lets_through(name):
    """A pre-activation output with a fused ReLU6: the grid starts at 0, so the measured range starts
    there, and its error on the ReLU6's output is below that of the range measured on the signed
    pre-activation (the grid then spent levels on values the ReLU6 discards)."""
    from pytorch_quantizer.model.observers import ObservedLayer, observe
    from pytorch_quantizer.quantizers.config import QuantConfig, TensorQuantSpec
    from pytorch_quantizer.quantizers.quantizer import plan_quantization

    x = torch.distributions.Laplace(-0.5, 2.0).sample((32, 8, 16, 16))
    spec = TensorQuantSpec(4, per_channel=False, clipping=name)
    passed = x.clamp(0.0, 6.0)
    errors = {}
    for fused_range in (None, (0.0, 6.0)):
        stats = observe(x, ObservedLayer(None, name, 4, fused_range=fused_range))
        plan = plan_quantization(stats, spec, QuantConfig(activations=spec), True, ceiling=6.0)
        quantized = fake_quantize_range(x, plan.lo, plan.hi, 4).clamp(0.0, 6.0)
        errors[fused_range] = float((quantized - passed).square().mean())
        if fused_range is not None:
            assert float(stats.extra[f"{name}.lo"]) == 0.0 and 0.0 < float(plan.hi) <= 6.0
    assert errors[(0.0, 6.0)] < errors[None]
