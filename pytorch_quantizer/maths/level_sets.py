"""Level sets of the non-uniform quantizer families (pure functions, no state).

A level set is a sorted 1-D float tensor of normalised levels; a tensor is quantized to
``alpha * level`` of the nearest level (``backend.quantize_to_levels``), ``alpha`` being the
clipping scale. Magnitude sets lie in [0, 1] with 0 and 1 included.

Powers of two (PoT), b bits: {0} U {2^-i : i = 0 .. 2^b - 2}: 2^b levels.

Additive powers of two (APoT, Li et al. 2020), b bits, base k = 2: n = ceil(b / 2) additive sets
P_0 .. P_{n-1}, each {0} plus 2^{k_i} - 1 distinct powers of two (k_i = 2, the last k_i = 1 when b
is odd); the levels are the sums p_0 + ... + p_{n-1} (one term from each set), divided by their
maximum. The powers 2^-1, 2^-2, ... are dealt out in rounds: in each of the first two rounds every
two-bit set takes the next power in turn; in the third round the one-bit set (odd b) takes the
next power first, then the two-bit sets. For b = 4: P_0 = {0, 2^-1, 2^-3, 2^-5},
P_1 = {0, 2^-2, 2^-4, 2^-6}. Sums of distinct powers of two are distinct, so 2^b levels.

Uniform, b bits: {j / (2^b - 1) : j = 0 .. 2^b - 1}, the baseline in the same code path.

Weights are signed: b - 1 bits of magnitude plus a sign (``signed_levels``: the magnitudes and
their negatives, 2^b - 1 levels); activations after a ReLU are unsigned with b bits.
"""
from __future__ import annotations

import math
from enum import Enum

import torch

TWN_DELTA_FACTOR = 0.7
APOT_BASE_BITS = 2
APOT_ROUNDS = 3
MAX_POT_BITS = 7


class LevelFamily(str, Enum):
    UNIFORM = "uniform"
    POT = "pot"
    APOT = "apot"


def uniform_levels(bits: int) -> torch.Tensor:
    """{j / (2^b - 1)}, j = 0 .. 2^b - 1."""
    _check_bits(bits, 1)
    steps = 2 ** bits - 1
    return torch.arange(steps + 1, dtype=torch.float64).div(steps).float()


def pot_levels(bits: int) -> torch.Tensor:
    """{0} U {2^-i : i = 0 .. 2^b - 2}, sorted (b <= 7: 2^-126 is the smallest float32 normal)."""
    _check_bits(bits, 1)
    if bits > MAX_POT_BITS:
        raise ValueError(f"powers of two need at most {MAX_POT_BITS} bits of magnitude (2^-{2 ** bits - 2} is "
                         f"below float32's range), got {bits}")
    powers = [2.0 ** -i for i in range(2 ** bits - 1)]
    return torch.tensor(sorted([0.0, *powers]), dtype=torch.float64).float()


def apot_additive_sets(bits: int) -> list[list[float]]:
    """The n = ceil(b / 2) additive sets of b-bit APoT (unnormalised; see the module docstring)."""
    _check_bits(bits, 1)
    full_sets, odd = divmod(bits, APOT_BASE_BITS)
    sets: list[list[float]] = [[0.0] for _ in range(full_sets + odd)]
    exponent = 0
    for round_index in range(APOT_ROUNDS):
        takers = list(range(full_sets))
        if odd and round_index == APOT_ROUNDS - 1:
            takers = [full_sets, *takers]
        for taker in takers:
            exponent += 1
            sets[taker].append(2.0 ** -exponent)
    return sets


def apot_levels(bits: int) -> torch.Tensor:
    """Sums of one term from each additive set, divided by their maximum (2^b levels in [0, 1])."""
    sums = [0.0]
    for additive_set in apot_additive_sets(bits):
        sums = [total + term for total in sums for term in additive_set]
    top = max(sums)
    return torch.tensor(sorted(total / top for total in sums), dtype=torch.float64).float()


MAGNITUDE_LEVELS = {LevelFamily.UNIFORM: uniform_levels, LevelFamily.POT: pot_levels, LevelFamily.APOT: apot_levels}


def signed_levels(magnitudes: torch.Tensor) -> torch.Tensor:
    """The magnitudes and their negatives, sorted, zero once."""
    return torch.unique(torch.cat([-magnitudes, magnitudes]))


def weight_levels(family: LevelFamily, bits: int) -> torch.Tensor:
    """Signed weight levels: b - 1 bits of magnitude plus a sign (APoT's weights)."""
    _check_bits(bits, 2)
    return signed_levels(MAGNITUDE_LEVELS[family](bits - 1))


def activation_levels(family: LevelFamily, bits: int, signed: bool = False) -> torch.Tensor:
    """Unsigned b-bit levels for activations after a ReLU; ``signed`` (inputs that go negative):
    b - 1 bits of magnitude plus a sign, like the weights."""
    return weight_levels(family, bits) if signed else MAGNITUDE_LEVELS[family](bits)


def normalize_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """APoT's weight normalisation, per layer: w_n = (w - mean) / std; returns (w_n, mean, std).

    Post-training the layer keeps its scale: the quantized weight is mean + std * Q(w_n)."""
    mean = weight.mean()
    std = weight.std().clamp_min(torch.finfo(weight.dtype).tiny)
    return (weight - mean) / std, mean, std


def xnor_weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """XNOR-Net: alpha_c = mean |W_c| per output channel (dim 0), shape [C]."""
    return weight.abs().flatten(1).mean(dim=1)


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, so every value is one of {-1, +1}."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def binarize_weights(weight: torch.Tensor) -> torch.Tensor:
    """XNOR-Net weights: alpha_c * sign(W), alpha_c = mean |W_c|."""
    scale = xnor_weight_scale(weight).reshape(-1, *([1] * (weight.dim() - 1)))
    return scale * binary_sign(weight)


def xnor_activation_scale(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """XNOR-Net's K: A = mean over channels of |I| (shape [N, 1, H, W]) averaged over each
    receptive field of ``conv`` (its kernel size, stride, padding and dilation), so that
    conv(I, W) ~= conv(sign(I), sign(W)) * K * alpha."""
    channel_mean = x.abs().mean(dim=1, keepdim=True)
    box = torch.full((1, 1, *conv.kernel_size), 1.0 / math.prod(conv.kernel_size), dtype=x.dtype, device=x.device)
    return torch.nn.functional.conv2d(channel_mean, box, stride=conv.stride, padding=conv.padding,
                                      dilation=conv.dilation)


def twn_threshold(weight: torch.Tensor) -> torch.Tensor:
    """TWN: delta = 0.7 * mean |W| (per layer)."""
    return TWN_DELTA_FACTOR * weight.abs().mean()


def twn_scale(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """TWN: alpha = mean of |W| over |W| > delta (0 when no weight exceeds delta)."""
    above = weight.abs() > delta
    return torch.where(above.any(), weight.abs()[above].sum() / above.sum().clamp_min(1), torch.zeros_like(delta))


def ternarize_weights(weight: torch.Tensor) -> torch.Tensor:
    """TWN weights: alpha * sign(W) where |W| > delta, else 0."""
    delta = twn_threshold(weight)
    return twn_scale(weight, delta) * torch.sign(weight) * (weight.abs() > delta)


def quantize_unit(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's quantize_k on [0, 1]: round((2^k - 1) x) / (2^k - 1)."""
    steps = 2 ** bits - 1
    return torch.round(x * steps) / steps


def dorefa_weights(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa weights in [-1, 1]: k = 1: sign(W) * mean |W| (the paper's binary case); else
    2 * quantize_k(tanh(W) / (2 max |tanh(W)|) + 1/2) - 1."""
    _check_bits(bits, 1)
    if bits == 1:
        return binary_sign(weight) * weight.abs().mean()
    squashed = torch.tanh(weight)
    top = squashed.abs().max().clamp_min(torch.finfo(weight.dtype).tiny)
    return 2 * quantize_unit(squashed / (2 * top) + 0.5, bits) - 1


def dorefa_activations(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa activations: quantize_k(clip(x, 0, 1))."""
    _check_bits(bits, 1)
    return quantize_unit(x.clamp(0, 1), bits)


def least_squares_scale(weight: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
    """s minimising ||W - s * M||^2: <W, M> / <M, M> (1 when M is all zero). A family whose
    weights live in [-1, 1] (DoReFa) is put back on the layer's scale this way post-training,
    where no BatchNorm retrains to absorb the scale as in the papers."""
    energy = (mapped * mapped).sum()
    return torch.where(energy > 0, (weight * mapped).sum() / energy.clamp_min(torch.finfo(weight.dtype).tiny),
                       torch.ones_like(energy))


def _check_bits(bits: int, minimum: int) -> None:
    if not isinstance(bits, int) or bits < minimum:
        raise ValueError(f"bits must be an integer >= {minimum}, got {bits!r}")
