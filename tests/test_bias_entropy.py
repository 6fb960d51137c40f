"""Weight bias/variance correction, entropy and Huffman figures, k-means weights."""
import math

import numpy as np
import torch
from hypothesis import given, settings, strategies as st

from pytorch_quantizer.maths.bias_correction import correct_weights
from pytorch_quantizer.maths.entropy import huffman_bits_per_symbol, shannon_entropy, weighted_average
from pytorch_quantizer.maths.kmeans import kmeans_quantize
from pytorch_quantizer.maths.primitives import channels_first, fake_quantize_range


def quantized_conv_weight():
    weight = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(0)) * torch.logspace(-2, 0, 32).reshape(-1, 1, 1, 1)
    rows = channels_first(weight, 0)
    quantized = fake_quantize_range(weight, rows.amin(1) * 0.6, rows.amax(1) * 0.6, 4, axis=0)
    return weight, quantized


def test_mean_correction_restores_per_channel_means():
    weight, quantized = quantized_conv_weight()
    before = (channels_first(quantized, 0).mean(1) - channels_first(weight, 0).mean(1)).abs().max()
    corrected = correct_weights(weight, quantized, mean=True)
    after = (channels_first(corrected, 0).mean(1) - channels_first(weight, 0).mean(1)).abs().max()
    assert float(before) > 1e-4 and float(after) < 1e-6


def test_variance_correction_restores_per_channel_std():
    weight, quantized = quantized_conv_weight()
    corrected = correct_weights(weight, quantized, mean=True, variance=True)
    ratio = channels_first(corrected, 0).std(1, unbiased=False) / channels_first(weight, 0).std(1, unbiased=False)
    assert float((ratio - 1).abs().max()) < 1e-5
    assert float((channels_first(corrected, 0).mean(1) - channels_first(weight, 0).mean(1)).abs().max()) < 1e-6


def test_uniform_16_level_code_has_4_bits_of_entropy_and_huffman_length():
    counts = np.full(16, 1000)
    assert shannon_entropy(counts) == 4.0
    assert huffman_bits_per_symbol(counts) == 4.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=300).filter(lambda counts: sum(counts) > 0))
def test_huffman_length_is_within_one_bit_above_entropy(counts):
    entropy = shannon_entropy(counts)
    huffman = huffman_bits_per_symbol(counts)
    assert entropy - 1e-9 <= huffman < entropy + 1
    if sum(1 for count in counts if count) == 1:
        assert huffman == 0.0


def test_weighted_average_uses_element_counts():
    assert math.isclose(weighted_average({"a": 2.0, "b": 4.0}, {"a": 3, "b": 1}), 2.5)


def test_kmeans_weights_take_at_most_2_to_the_bits_values():
    weight = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    per_tensor, codes = kmeans_quantize(weight, 3, per_channel=False)
    assert len(torch.unique(per_tensor)) == 8 and int(codes.max()) == 7
    per_channel, _ = kmeans_quantize(weight, 2, per_channel=True)
    assert all(len(torch.unique(row)) <= 4 for row in per_channel.reshape(8, -1))
    assert float((per_channel - weight).square().mean()) < float(weight.square().mean()) * 0.2
