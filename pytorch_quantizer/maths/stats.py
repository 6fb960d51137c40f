"""Tensor statistics per tensor or per channel, as pure functions.

For the (C, N) view of a tensor (one row per channel, or a single row): min, max, mean,
std (population, sqrt(E[x^2] - E[x]^2)), b = E|x - mean| (the maximum-likelihood Laplace
scale) and the fraction p of values > 0. ``TensorStats`` holds 1-D tensors of length C (1 per tensor).

Rectified (non-negative) tensors such as ReLU outputs are modelled as ReLU(Laplace(0, b)) or
ReLU(N(0, sigma)): their positive part is exponential with mean b, or half-normal with RMS sigma,
so the scales of the prior are b = E[x | x > 0] = mean / p and sigma = sqrt(E[x^2 | x > 0]) =
sqrt((std^2 + mean^2) / p). The exact zeros cost nothing on a grid that starts at 0; counting them
in E|x - mean| would shrink b by the sparsity and clip most of the positive values.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from pytorch_quantizer.maths.primitives import channels_first

STAT_NAMES = ("min", "max", "mean", "std", "b", "positive_fraction")


@dataclass(frozen=True)
class TensorStats:
    min: torch.Tensor
    max: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    b: torch.Tensor
    positive_fraction: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def non_negative(self) -> bool:
        """True when every observed value is >= 0 (e.g. a ReLU output): the grid then covers one tail."""
        return bool((self.min >= 0).all())

    @property
    def rectified_b(self) -> torch.Tensor:
        """Laplace scale of a rectified tensor: E[x | x > 0] = mean / p (0 for an all-zero channel)."""
        return self.mean / self.positive_fraction.clamp(min=1e-12)

    @property
    def rectified_std(self) -> torch.Tensor:
        """Gaussian scale of a rectified tensor: sqrt(E[x^2 | x > 0]) = sqrt((std^2 + mean^2) / p)."""
        return ((self.std.square() + self.mean.square()) / self.positive_fraction.clamp(min=1e-12)).sqrt()

    def as_dict(self) -> dict[str, torch.Tensor]:
        values = {name: getattr(self, name) for name in STAT_NAMES}
        values.update({f"extra.{name}": value for name, value in self.extra.items()})
        return values

    @classmethod
    def from_dict(cls, values: dict[str, torch.Tensor]) -> "TensorStats":
        extra = {name[len("extra."):]: value for name, value in values.items() if name.startswith("extra.")}
        return cls(**{name: values[name] for name in STAT_NAMES}, extra=extra)

    def map(self, function) -> "TensorStats":
        return TensorStats(*(function(getattr(self, item.name)) for item in fields(self) if item.name != "extra"),
                           extra={name: function(value) for name, value in self.extra.items()})


def positive_fraction(x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Fraction of values > 0 per channel of ``axis`` (a 1-element vector when axis is None)."""
    positive = x.detach() > 0
    if axis is None:
        return (positive.sum().double() / max(1, x.numel())).float().reshape(1)
    channel_dim = axis % x.dim()
    others = [dim for dim in range(x.dim()) if dim != channel_dim]
    per_channel = max(1, x.numel() // max(1, x.shape[channel_dim]))
    counts = positive.sum(dim=others) if others else positive.long()
    return (counts.double() / per_channel).float()


def compute_stats(x: torch.Tensor, axis: int | None = None) -> TensorStats:
    """Statistics of ``x`` per channel of ``axis`` (or of the whole tensor when axis is None).

    Accumulated in float64 exactly as the fused kernels do (mean = sum / n,
    std = sqrt(max(sum(x^2) / n - mean^2, 0)), b = sum|x - mean| / n), then rounded to float32, so
    both backends give the same statistics and therefore the same clipping and bit allocation.
    """
    rows = channels_first(x.detach(), axis).double()
    count = rows.shape[1]
    mean = rows.sum(dim=1) / count
    variance = torch.clamp(rows.square().sum(dim=1) / count - mean.square(), min=0.0)
    return TensorStats(
        min=rows.amin(dim=1).float(),
        max=rows.amax(dim=1).float(),
        mean=mean.float(),
        std=variance.sqrt().float(),
        b=((rows - mean.unsqueeze(1)).abs().sum(dim=1) / count).float(),
        positive_fraction=positive_fraction(x, axis),
    )
