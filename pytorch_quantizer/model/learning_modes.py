"""How activation quantization behaves while a learning method trains through the quantized model:
straight-through gradients, QDrop's random dropping to float (Wei et al. 2022), and activation step
sizes learned with LSQ (``maths.step_size``) as BRECQ and QDrop learn them."""
from __future__ import annotations

from contextlib import contextmanager

import torch


class StraightThrough:
    """Off by default: a hook passes its quantized activation on unchanged. Inside
    ``straight_through(p, seed)`` it passes x + (q(x) - x).detach() (the gradient of x), each element
    kept at x instead with probability p; a layer with a step size in ``scales`` (set by the learner
    for its block) quantizes with it, differentiably (``learned``)."""

    def __init__(self):
        self._state: tuple[float, torch.Generator] | None = None
        self.scales: dict[str, torch.Tensor] = {}

    def learnable_scale(self, name: str) -> torch.Tensor | None:
        return self.scales.get(name) if self._state is not None else None

    def _dropped(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        drop_probability, generator = self._state
        if drop_probability <= 0:
            return values
        kept = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) < drop_probability
        return torch.where(kept, x, values)

    def passed_on(self, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        if self._state is None:
            return quantized
        return self._dropped(x, x + (quantized - x).detach())

    def learned(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``values`` that carry their own gradients (a learned step size), QDrop applied."""
        return self._dropped(x, values)

    @contextmanager
    def straight_through(self, drop_probability: float = 0.0, seed: int = 0):
        previous = self._state
        self._state = (drop_probability, torch.Generator().manual_seed(seed))
        try:
            yield
        finally:
            self._state = previous
