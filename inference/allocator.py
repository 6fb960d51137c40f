"""glibc malloc settings for CPU inference, applied by re-executing the CLI once.

glibc serves every allocation above its mmap threshold (at most 32 MiB when adjusted dynamically)
with a fresh ``mmap`` and unmaps it on free. An ImageNet CNN at batch 256 allocates activations of
hundreds of MiB per layer, so every forward pass faults in and zeroes gigabytes of new pages: on the
2-core development machine EfficientNet-Lite0 spent 85 s of system time against 24 s of user time
for 512 images. Raising the mmap and trim thresholds lets freed blocks be reused instead (measured
there: 8.4 -> 36.6 images/s at batch 256, 15.5 -> 46.1 at batch 32; ``analysis/bench_loader.py``).

The thresholds are read from the environment when the process starts, so they are set by
re-executing the same command once, before any heavy import. Values the user has set are kept;
``PTQ_KEEP_MALLOC=1`` turns the re-execution off.
"""
from __future__ import annotations

import os
import sys

TUNED_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 32),  # blocks up to 4 GiB come from the reusable heap
    "MALLOC_TRIM_THRESHOLD_": str(1 << 36),  # freed heap memory is kept for the next batch
}
OPT_OUT = "PTQ_KEEP_MALLOC"


def tuned_environment(environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, or None when nothing is to change."""
    if environ.get(OPT_OUT) == "1" or not sys.platform.startswith("linux"):
        return None
    missing = {key: value for key, value in TUNED_MALLOC.items() if key not in environ}
    if not missing:
        return None
    return {**environ, **missing}


def reexecute_with_tuned_malloc() -> None:
    """Replace this process by the same command line (interpreter options included) with
    ``TUNED_MALLOC`` in its environment; the new process finds the variables set and returns."""
    environment = tuned_environment(dict(os.environ))
    if environment is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
