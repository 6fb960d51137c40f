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
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from torch.utils.data import Dataset, default_collate

from inference.image_files import BadImageFile

BATCHES_AHEAD = 2


class ThreadedImageBatches:
    """Iterable over ``batches`` (lists of dataset indices, in order) yielding collated
    (images, labels); ``threads`` decode up to ``BATCHES_AHEAD`` batches ahead of the consumer
    (0 threads: decode in the consumer's thread). Pinned memory when CUDA is available.

    A file the dataset cannot decode (``BadImageFile``) stops the iteration with that error, or with
    ``skip_bad_images`` is left out of its batch (a batch left empty is not yielded) and its path
    appended to ``skipped``: the files skipped so far by the latest pass, in batch order.
    """

    def __init__(self, dataset: Dataset, batches: list[list[int]], threads: int, skip_bad_images: bool = False):
        self.dataset = dataset
        self.batch_sampler = batches
        self.threads = threads
        self.skip_bad_images = skip_bad_images
        self.skipped: list[str] = []
        self.pin_memory = torch.cuda.is_available()

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def _collate(self, samples: list):
        batch = default_collate(samples)
        return [part.pin_memory() for part in batch] if self.pin_memory else batch

    def _batch(self, samples: Iterable[Callable]):
        """Yield the collated results of the ``samples`` calls, less the bad image files when they
        are skipped (nothing when none is left)."""
        kept = []
        for sample in samples:
            try:
                kept.append(sample())
            except BadImageFile as error:
                if not self.skip_bad_images:
                    raise
                self.skipped.append(str(error.path))
        if kept:
            yield self._collate(kept)

    def __iter__(self):
        self.skipped = []
        if self.threads == 0:
            for indices in self.batch_sampler:
                yield from self._batch(partial(self.dataset.__getitem__, index) for index in indices)
            return
        with ThreadPoolExecutor(self.threads, thread_name_prefix="decode") as pool:
            pending = deque()
            try:
                for indices in self.batch_sampler:
                    pending.append([pool.submit(self.dataset.__getitem__, index) for index in indices])
                    if len(pending) > BATCHES_AHEAD:
                        yield from self._batch(future.result for future in pending.popleft())
                while pending:
                    yield from self._batch(future.result for future in pending.popleft())
            finally:
                for futures in pending:
                    for future in futures:
                        future.cancel()
