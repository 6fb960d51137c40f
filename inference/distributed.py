"""Multi-process evaluation under torchrun, on torch.distributed.

``torchrun --nproc_per_node=N inference/inference_sim.py ...`` sets RANK, WORLD_SIZE and LOCAL_RANK.
The evaluated images and the calibration images are split by whole batches (rank r takes batches
r, r + N, r + 2N, ... of the single-process order), so every batch is exactly the batch one process
would see and per-batch statistics do not change. Image counts, correct counts and losses are
summed; statistics accumulators are merged exactly (batch counts and sums add, minima and maxima
compare); activation bias corrections sum their differences; entropy histograms and error sums
add. Only rank 0 prints, logs the mlflow run and writes files. gloo on CPU, nccl on CUDA. One
process needs no torchrun.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from inference.errors import PeerProcessFailed, UserError


@dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, batches: list) -> list:
        """This process's batches: r, r + N, r + 2N, ... Every process must get at least one."""
        if len(batches) < self.world_size:
            raise UserError(f"{len(batches)} batches cannot be split over {self.world_size} processes; "
                            "lower -b or use fewer processes")
        return batches[self.rank::self.world_size]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over processes (identity in one process)."""
        return self._reduce(values, "SUM")

    def maximum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum over processes (identity in one process)."""
        return self._reduce(values, "MAX")

    def _reduce(self, values: torch.Tensor, operation: str) -> torch.Tensor:
        if not self.distributed:
            return values
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        reduced = values.detach().to(device).clone()
        try:
            dist.all_reduce(reduced, op=getattr(dist.ReduceOp, operation))
        except RuntimeError as error:  # gloo's and nccl's (DistBackendError) failures when a peer is gone
            detail = " ".join(str(error).split())[:160]
            raise PeerProcessFailed(f"another process of this run stopped ({detail}); see its error") from None
        return reduced.to(values.device)

    def merge_statistics(self, accumulators: dict) -> None:
        """Merge every process's StatsAccumulator states in place, exactly: counts and sums add,
        extremes take the minimum or the maximum (the same rule as ``StatsAccumulator.merge``)."""
        if not self.distributed:
            return
        from pytorch_quantizer.model.observers import merge_rule

        for name in sorted(accumulators):
            state = accumulators[name].state
            for key in sorted(state):
                state[key] = self._reduce(state[key], merge_rule(key).upper())


def process_info(environ=None) -> ProcessInfo:
    """Rank, world size and local rank from torchrun's environment (one process without it)."""
    environ = os.environ if environ is None else environ
    try:
        info = ProcessInfo(int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)),
                           int(environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UserError("RANK / WORLD_SIZE / LOCAL_RANK are not integers; start several processes with torchrun") from None
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise UserError(f"RANK {info.rank} / WORLD_SIZE {info.world_size} are inconsistent; start with torchrun")
    return info


@contextmanager
def process_group(info: ProcessInfo, device: torch.device):
    """Join the torchrun process group for the block (nothing to do in one process)."""
    if not info.distributed:
        yield
        return
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()
