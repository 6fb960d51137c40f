"""Learning steps whose gradient does not depend on how many processes compute it.

The calibration images come in batches; batch k belongs to group k mod G. A step's gradient is

    g = (...((g_0 + g_1) + g_2) + ... + g_(G-1)),     g_j = d L_j / d theta,
    L_j = sum over the step's images of group j of the channel-summed squared error / (B * positions)

(B the step's batch), each g_j from one forward and backward of group j's images alone, then summed
in group order. Under torchrun with P processes (G a multiple of P) process p holds exactly the
batches of the groups j = p mod P (batch k is on process k mod P), so it computes their g_j; one
all-reduce of the stacked g_j is exact, since every group's slice is non-zero on one process only
(adding zeros rounds nothing). Every process then sums the same g_j in the same order: the step,
and so the learned rounding, is that of one process computing the same G groups, bit for bit
(each g_j computed with the same number of threads). Summing instead each process's share of one
batch's gradient would differ from one process in the last bits, which the chained blocks amplify
(0.2 % of fmnist_resnet20's roundings after 60 steps).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch


@dataclass(frozen=True)
class DataShare:
    """This process's share of the calibration images: ``positions``, the index of each of its
    images in the order of one process over all ``total`` of them; ``groups``, the group of each of
    the ``total`` images (``group_count`` groups); ``sum`` adds a tensor over the processes (the
    identity for one process)."""

    positions: torch.Tensor
    total: int
    groups: torch.Tensor
    group_count: int
    sum: Callable[[torch.Tensor], torch.Tensor]

    @cached_property
    def local_of(self) -> torch.Tensor:
        """{global index: local index}, -1 where another process holds the image (made once)."""
        local = torch.full((self.total,), -1, dtype=torch.long)
        local[self.positions] = torch.arange(len(self.positions))
        return local


def batch_groups(batch_sizes: list[int] | torch.Tensor, group_count: int) -> torch.Tensor:
    """The group of every image of batches of ``batch_sizes``: batch k's images are in group k mod G."""
    sizes = torch.as_tensor(batch_sizes, dtype=torch.int64)
    return torch.repeat_interleave(torch.arange(len(sizes)) % group_count, sizes)


def group_seed(seed: int, step: int, group: int) -> int:
    """The seed of the random draws (QDrop's) of one group's pass in one step: the same whichever
    process computes the group."""
    return int(np.random.SeedSequence([seed, step, group]).generate_state(1, np.uint64)[0] >> 2)


def grouped_gradients(loss_of: Callable[[torch.Tensor], torch.Tensor], chosen: torch.Tensor, share: DataShare,
                      differentiated: list[torch.Tensor], before_group: Callable[[int], None] = lambda group: None
                      ) -> tuple[list[torch.Tensor], float]:
    """The step's gradients of the data loss with respect to ``differentiated`` and its loss, summed
    group by group in order over every process's images (module docstring). ``loss_of(local
    indices)`` is the loss of those of this process's images; ``before_group(j)`` runs before group
    j's pass."""
    held, groups = share.local_of[chosen], share.groups[chosen]
    sizes = [tensor.numel() for tensor in differentiated]
    stacked = torch.zeros(share.group_count, sum(sizes) + 1, dtype=torch.float32)
    for group in range(share.group_count):
        mine = held[(held >= 0) & (groups == group)]
        if not len(mine):
            continue
        before_group(group)
        loss = loss_of(mine)
        gradients = torch.autograd.grad(loss, differentiated, allow_unused=True)
        stacked[group, :-1] = torch.cat([(gradient if gradient is not None else torch.zeros_like(tensor)).reshape(-1)
                                        for gradient, tensor in zip(gradients, differentiated)])
        stacked[group, -1] = loss.detach()
    stacked = share.sum(stacked)
    summed = stacked[0].clone()
    for group in range(1, share.group_count):
        summed += stacked[group]
    pieces = torch.split(summed[:-1], sizes)
    return [piece.view_as(tensor) for piece, tensor in zip(pieces, differentiated)], float(summed[-1])
