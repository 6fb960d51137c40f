"""Batches of an image-file dataset decoded by a pool of threads of the evaluating process.

Why threads and not DataLoader worker processes: decoding and resizing (PIL) and the tensor
conversion (torch) release the GIL, and threads share the evaluating process's memory. Forked
workers share its heap copy-on-write instead, so every activation written while they live faults
and copies pages; spawned or forkserver workers pay seconds of imports before the first batch. On
the 2-core development machine (EfficientNet-Lite0, 256 photos, batch 64, tuned malloc) forked
workers gave 18.9 images/s, forkserver workers 47.4 after a 7 s start, two threads 41.5 with no
start, and the model alone on preloaded batches 55 (``analysis/bench_loader.py`` measures it).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import Dataset, default_collate

BATCHES_AHEAD = 2


class ThreadedImageBatches:
    """Iterable over ``batches`` (lists of dataset indices, in order) yielding collated
    (images, labels); ``threads`` decode up to ``BATCHES_AHEAD`` batches ahead of the consumer
    (0 threads: decode in the consumer's thread). Pinned memory when CUDA is available."""

    def __init__(self, dataset: Dataset, batches: list[list[int]], threads: int):
        self.dataset = dataset
        self.batch_sampler = batches
        self.threads = threads
        self.pin_memory = torch.cuda.is_available()

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def _collate(self, samples: list):
        batch = default_collate(samples)
        return [part.pin_memory() for part in batch] if self.pin_memory else batch

    def __iter__(self):
        if self.threads == 0:
            for indices in self.batch_sampler:
                yield self._collate([self.dataset[index] for index in indices])
            return
        with ThreadPoolExecutor(self.threads, thread_name_prefix="decode") as pool:
            pending = deque()
            try:
                for indices in self.batch_sampler:
                    pending.append([pool.submit(self.dataset.__getitem__, index) for index in indices])
                    if len(pending) > BATCHES_AHEAD:
                        yield self._collate([future.result() for future in pending.popleft()])
                while pending:
                    yield self._collate([future.result() for future in pending.popleft()])
            finally:
                for futures in pending:
                    for future in futures:
                        future.cancel()
