"""The CLI's progress bars: tqdm over a loop's batches, layers or blocks, drawn by rank 0 only."""
from __future__ import annotations

from collections.abc import Callable, Iterable

UNITS = {"reconstruct": "block", "adaround": "layer"}


def progress_bars(show: bool) -> Callable[[Iterable, str], Iterable]:
    """``bar(iterable, description)``: a tqdm bar, or the iterable as is when ``show`` is False."""
    def bar(iterable: Iterable, description: str) -> Iterable:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, pipes, the one error line)
        return tqdm(iterable, desc=description, unit=UNITS.get(description, "batch"),
                    disable=None if show else True, leave=False)
    return bar
