"""Level sets and closed forms of the other seeds' quantizers (APoT / PoT, XNOR, TWN, DoReFa, N2UQ)."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytorch_quantizer.maths import level_sets, n2uq
from pytorch_quantizer.maths.level_sets import LevelFamily


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("family", list(LevelFamily))
def test_magnitude_sets_have_two_to_the_b_distinct_levels_in_unit_range(family, bits):
    if family == LevelFamily.POT and bits > level_sets.MAX_POT_BITS:
        with pytest.raises(ValueError, match="powers of two need at most 7 bits of magnitude"):
            level_sets.pot_levels(bits)
        return
    levels = level_sets.MAGNITUDE_LEVELS[family](bits)
    assert levels.numel() == 2 ** bits == torch.unique(levels).numel()
    assert levels[0] == 0 and levels[-1] == 1 and bool((levels.diff() > 0).all())


def test_small_sets_have_their_known_values():
    assert level_sets.pot_levels(2).tolist() == [0.0, 0.25, 0.5, 1.0]
    assert level_sets.uniform_levels(2).tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert level_sets.apot_levels(2).tolist() == [0.0, 0.25, 0.5, 1.0]  # {0, 1/8, 1/4, 1/2} / (1/2)
    assert level_sets.apot_additive_sets(3) == [[0.0, 0.5, 0.25, 0.0625], [0.0, 0.125]]
    assert level_sets.apot_levels(3).tolist() == pytest.approx(
        [value / 0.625 for value in (0, 0.0625, 0.125, 0.1875, 0.25, 0.375, 0.5, 0.625)])


def test_the_4_bit_apot_set_equals_the_sums_of_its_two_additive_sets():
    first, second = level_sets.apot_additive_sets(4)
    assert first == [0.0, 2 ** -1, 2 ** -3, 2 ** -5] and second == [0.0, 2 ** -2, 2 ** -4, 2 ** -6]
    sums = sorted(a + b for a, b in itertools.product(first, second))
    assert level_sets.apot_levels(4).tolist() == pytest.approx([value / max(sums) for value in sums])


@pytest.mark.parametrize("family", list(LevelFamily))
@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_weight_sets_are_symmetric_with_b_minus_1_magnitude_bits(family, bits):
    levels = level_sets.weight_levels(family, bits)
    assert levels.numel() == 2 ** bits - 1
    assert torch.equal(levels, -levels.flip(0))
    assert torch.equal(levels[levels >= 0], level_sets.MAGNITUDE_LEVELS[family](bits - 1))
    assert torch.equal(level_sets.activation_levels(family, bits), level_sets.MAGNITUDE_LEVELS[family](bits))
    assert torch.equal(level_sets.activation_levels(family, bits, signed=True), levels)


def test_weight_sets_need_two_bits():
    with pytest.raises(ValueError, match="bits must be an integer >= 2"):
        level_sets.weight_levels(LevelFamily.APOT, 1)


def test_apot_weight_normalisation_has_zero_mean_and_unit_std():
    weight = torch.randn(8, 4, 3, 3) * 0.2 + 0.05
    normalised, mean, std = level_sets.normalize_weights(weight)
    assert abs(normalised.mean().item()) < 1e-6 and normalised.std().item() == pytest.approx(1, abs=1e-6)
    assert torch.allclose(mean + std * normalised, weight, atol=1e-6)


def test_xnor_weights_are_sign_times_the_mean_absolute_value_per_output_channel():
    weight = torch.tensor([[[[0.5, -1.5], [0.0, 2.0]]], [[[-0.1, -0.3], [0.2, 0.2]]]])
    assert level_sets.xnor_weight_scale(weight).tolist() == pytest.approx([1.0, 0.2])
    expected = torch.tensor([[[[1.0, -1.0], [1.0, 1.0]]], [[[-0.2, -0.2], [0.2, 0.2]]]])
    assert torch.allclose(level_sets.binarize_weights(weight), expected)


def test_xnor_activation_scale_is_the_channel_mean_averaged_over_each_receptive_field():
    x = torch.randn(2, 3, 6, 6)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    k = level_sets.xnor_activation_scale(x, conv)
    channel_mean = x.abs().mean(dim=1, keepdim=True)
    padded = torch.nn.functional.pad(channel_mean, (1, 1, 1, 1))
    assert k.shape == (2, 1, 3, 3)
    assert k[1, 0, 1, 2].item() == pytest.approx(padded[1, 0, 2:5, 4:7].mean().item(), rel=1e-6)


def test_twn_threshold_and_scale_follow_the_closed_form():
    weight = torch.tensor([1.0, -2.0, 0.1, -0.2, 3.0, 0.0])
    delta = level_sets.twn_threshold(weight)
    assert delta.item() == pytest.approx(0.7 * 6.3 / 6)
    assert level_sets.twn_scale(weight, delta).item() == pytest.approx((1 + 2 + 3) / 3)
    assert level_sets.ternarize_weights(weight).tolist() == pytest.approx([2, -2, 0, 0, 2, 0])


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_dorefa_weights_follow_the_tanh_equation(bits):
    weight = torch.randn(16, 8) * 0.3
    steps = 2 ** bits - 1
    squashed = torch.tanh(weight)
    unit = squashed / (2 * squashed.abs().max()) + 0.5
    expected = 2 * torch.round(unit * steps) / steps - 1
    mapped = level_sets.dorefa_weights(weight, bits)
    assert torch.allclose(mapped, expected)
    assert mapped.min() >= -1 and mapped.max() <= 1 and torch.unique(mapped).numel() <= steps + 1


def test_dorefa_binary_weights_and_activations():
    weight = torch.tensor([0.5, -1.0, 0.0, 1.5])
    assert level_sets.dorefa_weights(weight, 1).tolist() == pytest.approx([0.75, -0.75, 0.75, 0.75])
    x = torch.tensor([-0.5, 0.1, 0.4, 0.9, 1.7])
    assert level_sets.dorefa_activations(x, 2).tolist() == pytest.approx([0, 0, 1 / 3, 1, 1])


def test_least_squares_scale_is_the_projection():
    weight, mapped = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([1.0, 1.0, -1.0])
    assert level_sets.least_squares_scale(weight, mapped).item() == pytest.approx(4 / 3)
    assert level_sets.least_squares_scale(weight, torch.zeros(3)).item() == 1


def n2uq_params(start=0.0, intervals=(0.5, 1.0, 2.0), offset=0.0, step=1.0, grad=False):
    as_tensor = lambda value: torch.tensor(value, dtype=torch.float64, requires_grad=grad)  # noqa: E731
    return n2uq.N2UQParams(as_tensor(start), as_tensor(list(intervals)), as_tensor(offset), as_tensor(step))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 10, allow_nan=False), min_size=1, max_size=64))
def test_n2uq_forward_emits_only_uniform_levels(values):
    params = n2uq_params(start=-0.5, offset=0.25, step=0.5)
    y = n2uq.n2uq_quantize(torch.tensor(values, dtype=torch.float64), params)
    codes = (y - 0.25) / 0.5
    assert torch.equal(codes, codes.round()) and codes.min() >= 0 and codes.max() <= 3


def test_n2uq_forward_steps_at_the_interval_midpoints():
    params = n2uq_params()  # knots 0, 0.5, 1.5, 3.5: thresholds 0.25, 1.0, 2.5
    assert params.thresholds.tolist() == [0.25, 1.0, 2.5]
    x = torch.tensor([-1.0, 0.24, 0.25, 0.99, 1.0, 2.49, 2.5, 9.0], dtype=torch.float64)
    assert n2uq.forward_levels(x, params).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_n2uq_backward_equals_the_g_ste_formula():
    params = n2uq_params(start=0.0, intervals=(0.5, 1.0, 2.0), offset=0.0, step=0.5, grad=True)
    x = torch.tensor([-0.3, 0.2, 0.9, 2.0, 4.0], dtype=torch.float64, requires_grad=True)
    n2uq.n2uq_quantize(x, params).sum().backward()
    step, a = 0.5, [0.5, 1.0, 2.0]
    # intervals: x=0.2 in 1 ([0, 0.5)), 0.9 in 2 ([0.5, 1.5)), 2.0 in 3 ([1.5, 3.5)); -0.3 and 4.0 outside
    assert x.grad.tolist() == pytest.approx([0, step / a[0], step / a[1], step / a[2], 0])
    expected_intervals = [
        -step * 0.2 / a[0] ** 2 - step / a[1] - step / a[2],
        -step * (0.9 - 0.5) / a[1] ** 2 - step / a[2],
        -step * (2.0 - 1.5) / a[2] ** 2,
    ]
    assert params.intervals.grad.tolist() == pytest.approx(expected_intervals)
    assert params.start.grad.item() == pytest.approx(-step / a[0] - step / a[1] - step / a[2])
    assert params.offset.grad.item() == 5
    ramps = [0, 0.2 / 0.5, 1 + 0.4, 2 + 0.25, 3]
    assert params.step.grad.item() == pytest.approx(sum(ramps))


def test_n2uq_calibration_is_lloyd_max_with_uniform_outputs():
    values = torch.cat([torch.full((100,), 0.0), torch.full((100,), 1.0), torch.full((100,), 3.0),
                        torch.full((100,), 7.0)])
    params = n2uq.calibrate(values, bits=2)
    # centroids 0, 1, 3, 7; grid through 0: step (1 + 6 + 21) / 14 = 2; cells stay {0}, {1}, {3}, {7}
    assert params.offset.item() == 0 and params.step.item() == pytest.approx(2)
    assert params.knots.tolist() == pytest.approx([0, 2, 4, 6])
    assert params.thresholds.tolist() == pytest.approx([1, 3, 5])
    assert n2uq.calibrate(values - 2, bits=2).offset.item() == pytest.approx(-2.7, abs=1e-4)  # polyfit of -2, -1, 1, 5


def test_n2uq_calibration_lowers_the_error_of_the_unconstrained_centroid_grid():
    torch.manual_seed(3)
    values = torch.relu(torch.randn(20000)) ** 2
    params = n2uq.calibrate(values, bits=3)
    centroids = torch.tensor(n2uq.lloyd_max_centroids(values, 8), dtype=torch.float32)
    codes = torch.arange(8.0)
    naive_step = (codes @ centroids) / (codes @ codes)
    naive = n2uq.N2UQParams(centroids[0], centroids.diff(), torch.tensor(0.0), naive_step)
    error = lambda p: (n2uq.forward_levels(values, p) - values).square().mean().item()  # noqa: E731
    assert error(params) < error(naive)
    assert params.thresholds.tolist() == pytest.approx(((codes[1:] - 0.5) * params.step).tolist(), rel=1e-5)
