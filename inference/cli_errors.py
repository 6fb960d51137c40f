"""The CLI's error boundary: which failures are the user's to fix (one stderr line, exit 2) and
which are bugs of the tool (the traceback stays, exit 1). Decided by the exception's cause:

- ``QuantizationError`` (bad flags, unreadable or inconsistent files, data, the tracking store);
- interrupts: Ctrl-C (KeyboardInterrupt) and SIGTERM / SIGHUP (``Terminated``);
- memory exhausted (host or GPU): lower the batch size;
- the operating system refusing a write: disk full, read-only file system, quota, permission.

Everything else is a bug and propagates.
"""
from __future__ import annotations

import errno
import signal
from contextlib import contextmanager

from inference.errors import Terminated
from inference.library_messages import cli_wording
from pytorch_quantizer.errors import QuantizationError

STORAGE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
                  errno.EDQUOT: "the disk quota is exceeded", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied"}
TERMINATING_SIGNALS = ("SIGTERM", "SIGHUP")


@contextmanager
def signals_as_interrupts():
    """Within the block, SIGTERM and SIGHUP raise ``Terminated`` in the main thread (their default
    would end the process without any cleanup)."""
    def raise_terminated(number, _frame):
        raise Terminated(signal.Signals(number).name)

    previous = {}
    for name in TERMINATING_SIGNALS:
        number = getattr(signal, name)
        try:
            previous[number] = signal.signal(number, raise_terminated)
        except ValueError:  # not the main thread: leave the signals alone
            break
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def user_error_message(error: BaseException, batch_size: int | None = None) -> str | None:
    """The one line to print for a failure the user can fix, or None for a bug of the tool."""
    if isinstance(error, QuantizationError):
        return cli_wording(error)
    if isinstance(error, Terminated):
        return f"terminated by {error.signal_name}: the run stopped, its mlflow run is marked KILLED and no partial file was kept"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C): the run stopped, its mlflow run is marked KILLED and no partial file was kept"
    if is_out_of_memory(error):
        smaller = f"lower -b (now {batch_size})" if batch_size else "lower -b"
        return f"out of memory: {' '.join(str(error).split())[:160] or 'allocation failed'}; {smaller}"
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
        where = f" ({error.filename})" if error.filename else ""
        return f"cannot write{where}: {STORAGE_ERRNOS[error.errno]}; free space or choose a writable location"
    return None


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    import torch

    return isinstance(error, torch.OutOfMemoryError)


def one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())
