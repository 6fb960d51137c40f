"""How activation quantization behaves while a learning method trains through the quantized model:
straight-through gradients, and QDrop's random dropping to float (Wei et al. 2022)."""
from __future__ import annotations

from contextlib import contextmanager

import torch


class StraightThrough:
    """Off by default: a hook passes its quantized activation on unchanged. Inside
    ``straight_through(p, seed)`` it passes x + (q(x) - x).detach() (the gradient of x), each element
    kept at x instead with probability p."""

    def __init__(self):
        self._state: tuple[float, torch.Generator] | None = None

    def passed_on(self, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        if self._state is None:
            return quantized
        drop_probability, generator = self._state
        passed = x + (quantized - x).detach()
        if drop_probability <= 0:
            return passed
        kept = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) < drop_probability
        return torch.where(kept, x, passed)

    @contextmanager
    def straight_through(self, drop_probability: float = 0.0, seed: int = 0):
        previous = self._state
        self._state = (drop_probability, torch.Generator().manual_seed(seed))
        try:
            yield
        finally:
            self._state = previous
