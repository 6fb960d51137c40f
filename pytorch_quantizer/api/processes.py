"""The processes a recipe is split over (``torch.distributed``), seen through the one protocol the
recipe needs, and each process's share of the calibration data in learned rounding."""
from __future__ import annotations

from typing import Protocol

import torch

from pytorch_quantizer.model.observers import StatsAccumulator


class Processes(Protocol):
    """The processes a run is split over (``torch.distributed``); ``OneProcess`` without it. Each
    process is given its share of the calibration batches by whole batches in turn: batch k of the
    order of one process is on process k mod ``world_size`` (the CLI's loaders do so)."""

    @property
    def distributed(self) -> bool: ...

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def sum(self, values: torch.Tensor) -> torch.Tensor: ...

    def merge_statistics(self, accumulators: dict[str, StatsAccumulator]) -> None: ...


class OneProcess:
    distributed, rank, world_size = False, 0, 1

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def merge_statistics(self, accumulators: dict[str, StatsAccumulator]) -> None:
        return None


def data_share(batch_sizes: list[int], processes: Processes, groups: int):
    """This process's ``DataShare`` of batches split in turn over the processes (``Processes``): the
    global position of each of its images, from every process's batch sizes, and the group of every
    image (batch k in group k mod ``groups``, a multiple of the process count, so that each group's
    batches are on one process)."""
    from pytorch_quantizer.errors import QuantizationError
    from pytorch_quantizer.methods.grouped_steps import DataShare, batch_groups

    if groups < 1 or groups % processes.world_size:
        raise QuantizationError(f"Methods.rounding_groups {groups} is not a multiple of the {processes.world_size} "
                                "processes: use a multiple of the process count", code="rounding_groups",
                                field="rounding_groups")
    counts = processes.sum(torch.zeros(processes.world_size, dtype=torch.int64).index_fill_(
        0, torch.tensor([processes.rank]), len(batch_sizes)))
    sizes = torch.zeros(int(counts.sum()), dtype=torch.int64)
    mine = torch.arange(len(batch_sizes)) * processes.world_size + processes.rank
    sizes[mine] = torch.tensor(batch_sizes, dtype=torch.int64)
    sizes = processes.sum(sizes)
    starts = torch.cumsum(sizes, 0) - sizes
    positions = torch.cat([torch.arange(int(starts[index]), int(starts[index] + size))
                           for index, size in zip(mine.tolist(), batch_sizes)])
    return DataShare(positions, int(sizes.sum()), batch_groups(sizes, groups), groups, processes.sum)
