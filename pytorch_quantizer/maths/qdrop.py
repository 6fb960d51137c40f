"""QDrop's random choice (Wei et al., ICLR 2022) between an activation and its quantized values,
in pure PyTorch: the reference of the ``ptq_kernels::qdrop_select`` kernels, equal to them bit for
bit.

    y_i = x_i  if u_i < p  else  q_i,      u_i = (H(i) >> 8) 2^-24

where i is the element's offset in the dense layout of ``torch.empty_like(x)`` and H the kernels'
counter hash (``kernels/csrc/quant_math.h``): with (k_lo, k_hi) the two words of splitmix64(seed),
H(i) = lowbias32(lowbias32(i_lo ^ k_lo) ^ i_hi ^ k_hi). The draw needs no random tensor and is the
same on every device, so a seed names one set of dropped elements.
"""
from __future__ import annotations

import torch

WORD = 0xFFFFFFFF
SPLITMIX_GAMMA, SPLITMIX_MIX1, SPLITMIX_MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
LOWBIAS_MIX1, LOWBIAS_MIX2 = 0x7FEB352D, 0x846CA68B


def splitmix64(seed: int) -> tuple[int, int]:
    """The low and high 32-bit words of splitmix64(seed) (the kernels' ``rng_key``)."""
    z = (seed + SPLITMIX_GAMMA) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * SPLITMIX_MIX1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * SPLITMIX_MIX2) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 31
    return z & WORD, z >> 32


def lowbias32(words: torch.Tensor) -> torch.Tensor:
    """lowbias32 of 32-bit words held in int64 (products wrap modulo 2^64; their low word is exact)."""
    words = words ^ (words >> 16)
    words = (words * LOWBIAS_MIX1) & WORD
    words = words ^ (words >> 15)
    words = (words * LOWBIAS_MIX2) & WORD
    return words ^ (words >> 16)


def memory_offsets(x: torch.Tensor) -> torch.Tensor:
    """Each element's offset in the dense layout the kernels give their output (``empty_like(x)``)."""
    layout = torch.empty_like(x, device="cpu")
    offsets = torch.arange(x.numel(), dtype=torch.int64)
    return torch.as_strided(offsets, layout.shape, layout.stride()).to(x.device)


def counter_uniform(x: torch.Tensor, seed: int) -> torch.Tensor:
    """u_i in [0, 1) on a 2^-24 grid for every element of ``x`` (float32, x's shape)."""
    key_lo, key_hi = splitmix64(seed)
    offsets = memory_offsets(x)
    hashed = lowbias32((offsets & WORD) ^ key_lo)
    hashed = lowbias32(hashed ^ (offsets >> 32) ^ key_hi)
    return (hashed >> 8).to(torch.float32) * 2.0 ** -24


def qdrop_select(x: torch.Tensor, q: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """x where u < p, else q (float32, laid out like ``empty_like(x)``)."""
    kept = counter_uniform(x, seed) < torch.tensor(p, dtype=torch.float32)
    return torch.where(kept, x.float(), q.float())
