"""How activation quantization behaves while a learning method trains through the quantized model:
straight-through gradients, QDrop's random dropping to float (Wei et al. 2022), and activation step
sizes learned with LSQ (``maths.step_size``) as BRECQ and QDrop learn them.

The dropping is one fused pass (``backend.qdrop_select``): each element's draw comes from a hash of
(seed, its memory offset), so there is no random tensor or mask to make, keep or copy, and a
backward pass that needs the mask draws it again from the same seed."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from pytorch_quantizer.quantizers import backend


class _DroppedStraightThrough(torch.autograd.Function):
    """y = x where u < p else q (q quantized without gradients); dy/dx = 1 for every element: a kept
    element is x itself and a quantized one passes its gradient straight through. q comes held in a
    tuple, not as an input: with p = 0 it is then the output itself, with no copy, and not a view
    that a following in-place activation (ReLU6(inplace=True)) could not modify."""

    @staticmethod
    def forward(ctx, x, held, drop_probability, seed):
        (quantized,) = held
        return quantized if drop_probability <= 0 else backend.qdrop_select(x, quantized, drop_probability, seed)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


class _Dropped(torch.autograd.Function):
    """y = x where u < p else v, for values v with gradients of their own: dy/dx is 1 where the
    element was kept and dy/dv 1 where it was not (the draw repeated from the seed)."""

    @staticmethod
    def forward(ctx, x, values, drop_probability, seed):
        chosen = backend.qdrop_select(x, values, drop_probability, seed)
        ctx.drop, ctx.layout = (drop_probability, seed), chosen.stride()
        return chosen

    @staticmethod
    def backward(ctx, grad):
        if grad.stride() != ctx.layout:  # the draw follows memory offsets: lay grad out as the forward was
            grad = torch.empty_strided(grad.shape, ctx.layout, dtype=grad.dtype, device=grad.device).copy_(grad)
        kept = backend.qdrop_select(grad, torch.zeros_like(grad), *ctx.drop)
        return kept, grad - kept, None, None


class StraightThrough:
    """Off by default: a hook passes its quantized activation on unchanged. Inside
    ``straight_through(p, seed)`` it passes q(x) forward with the gradient of x (straight through),
    each element kept at x instead with probability p; a layer with a step size in ``scales`` (set by
    the learner for its block) quantizes with it, differentiably (``learned``). Every call draws its
    own seed from ``seed``, so the dropped elements differ from layer to layer and step to step."""

    def __init__(self):
        self._state: tuple[float, torch.Generator] | None = None
        self.scales: dict[str, torch.Tensor] = {}

    def learnable_scale(self, name: str) -> torch.Tensor | None:
        return self.scales.get(name) if self._state is not None else None

    def _next_seed(self) -> int:
        return int(torch.randint(2 ** 62, (), generator=self._state[1]))

    def passed_on(self, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        if self._state is None:
            return quantized
        drop_probability = self._state[0]
        seed = self._next_seed() if drop_probability > 0 else 0
        return _DroppedStraightThrough.apply(x, (quantized.detach(),), drop_probability, seed)

    def learned(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``values`` that carry their own gradients (a learned step size), QDrop applied."""
        drop_probability = self._state[0]
        if drop_probability <= 0:
            return values
        return _Dropped.apply(x, values, drop_probability, self._next_seed())

    @contextmanager
    def straight_through(self, drop_probability: float = 0.0, seed: int = 0):
        previous = self._state
        self._state = (drop_probability, torch.Generator().manual_seed(seed))
        try:
            yield self
        finally:
            self._state = previous

    def reseed(self, seed: int) -> None:
        """Draw the following seeds from ``seed`` (inside ``straight_through``): a step computed
        group by group gives each group's pass its own, whichever process computes it."""
        if self._state is not None:
            self._state = (self._state[0], torch.Generator().manual_seed(seed))
