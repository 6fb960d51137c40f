"""Running figures of one quantized tensor kind of one layer: the histogram of its integer codes
(entropy and Huffman bits), its element count and its squared error against the float tensor."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pytorch_quantizer.quantizers import backend
from pytorch_quantizer.maths.entropy import huffman_bits_per_symbol, shannon_entropy

CODE_OFFSET = 1 << 16  # codes lie in [-2^16, 2^16): GEMMLOWP ones up to 2^16 - 1, mid-tread ones signed


@dataclass
class LayerMeasures:
    """Running figures of one layer and tensor kind: code histogram, element count, squared error."""

    histogram: torch.Tensor | None = None
    elements: int = 0
    squared_error: float = 0.0
    signal_energy: float = 0.0
    mean_bits: float = float("nan")
    clip_mean: float = float("nan")
    error_measured: bool = False

    def add_codes(self, codes: torch.Tensor) -> None:
        counts = backend.code_histogram(codes, -CODE_OFFSET, 2 * CODE_OFFSET).cpu()
        self.histogram = counts if self.histogram is None else self.histogram + counts

    def merge(self, sum_over_processes) -> None:
        """Add the histogram, element count and error sums of every process (``sum_over_processes``
        is an all-reduce sum such as ``ProcessInfo.sum``); the counts add exactly."""
        if self.histogram is not None:
            self.histogram = sum_over_processes(self.histogram)
        totals = sum_over_processes(torch.tensor([self.squared_error, self.signal_energy], dtype=torch.float64))
        self.squared_error, self.signal_energy = (float(value) for value in totals)
        self.elements = int(sum_over_processes(torch.tensor(self.elements, dtype=torch.int64)))

    def add_error(self, reference: torch.Tensor, quantized: torch.Tensor) -> None:
        self.error_measured = True
        self.squared_error += float((quantized.float() - reference.float()).square().sum())
        self.signal_energy += float(reference.float().square().sum())

    @property
    def mse(self) -> float:
        return self.squared_error / self.elements if self.elements and self.error_measured else float("nan")

    @property
    def sqnr_db(self) -> float:
        if not self.elements or not self.error_measured:
            return float("nan")
        if self.squared_error == 0:
            return float("inf")
        return 10 * math.log10(max(self.signal_energy, 1e-30) / self.squared_error)

    @property
    def entropy(self) -> float:
        return shannon_entropy(self.histogram.numpy()) if self.histogram is not None else float("nan")

    @property
    def huffman(self) -> float:
        return huffman_bits_per_symbol(self.histogram.numpy()) if self.histogram is not None else float("nan")


def value_codes(values: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Integer codes of quantized values: the rank of each value among the distinct values of its
    tensor (of its output channel when ``per_channel``). A relabelling of the levels in use, so the
    entropy of the codes is that of the levels."""
    rows = values.detach().reshape(values.shape[0] if per_channel else 1, -1)
    codes = torch.empty_like(rows)
    for index, row in enumerate(rows):
        codes[index] = torch.unique(row, return_inverse=True)[1].to(rows.dtype)
    return codes.reshape(values.shape)
