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
