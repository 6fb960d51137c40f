"""Entropy and Huffman code length of integer quantization codes.

Shannon entropy H = -sum_k p_k log2 p_k of the code histogram; the average Huffman code length
L = sum_k p_k len_k of an optimal prefix code for the same histogram (H <= L < H + 1).
Layer figures are averaged weighted by element count ("average bit rate").
"""
from __future__ import annotations

import heapq
import itertools

import numpy as np
import torch


def code_histogram(codes: torch.Tensor) -> torch.Tensor:
    """Counts of each integer code value (codes may be negative, e.g. mid-tread)."""
    values = codes.detach().reshape(-1).round().long()
    return torch.bincount(values - values.min()) if values.numel() else torch.zeros(0, dtype=torch.long)


def shannon_entropy(counts: torch.Tensor | np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    probabilities = counts / counts.sum()
    return float(-(probabilities * np.log2(probabilities)).sum())


def huffman_code_lengths(counts: torch.Tensor | np.ndarray) -> np.ndarray:
    """Code length of each symbol (0 for absent ones) of a Huffman code built with heapq;
    a single present symbol gets length 0."""
    counts = np.asarray(counts, dtype=np.float64)
    lengths = np.zeros(len(counts), dtype=np.int64)
    present = np.flatnonzero(counts).tolist()
    if len(present) == 1:
        return lengths  # a constant stream needs no bits (keeps H <= L < H + 1 true)
    tiebreak = itertools.count()
    heap = [(counts[index], next(tiebreak), [index]) for index in present]
    heapq.heapify(heap)
    while len(heap) > 1:
        weight_a, _, symbols_a = heapq.heappop(heap)
        weight_b, _, symbols_b = heapq.heappop(heap)
        for symbol in symbols_a + symbols_b:
            lengths[symbol] += 1
        heapq.heappush(heap, (weight_a + weight_b, next(tiebreak), symbols_a + symbols_b))
    return lengths


def huffman_bits_per_symbol(counts: torch.Tensor | np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() == 0:
        return 0.0
    return float((counts * huffman_code_lengths(counts)).sum() / counts.sum())


def weighted_average(values: dict[str, float], elements: dict[str, int]) -> float:
    """Average of per-layer values weighted by their element counts."""
    total = sum(elements[name] for name in values)
    return sum(values[name] * elements[name] for name in values) / total if total else 0.0
