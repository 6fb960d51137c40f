"""Loading user-supplied torch files without executing pickled code; writing files atomically."""
from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from pytorch_quantizer.errors import InputError


def safe_torch_load(path: Path, fix: str):
    """``torch.load(path, weights_only=True)`` with every failure turned into a one-line InputError.

    ``fix`` tells the user what to pass instead. A file that holds pickled Python objects other than
    tensors and plain containers is refused (its code is never run).
    """
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if unsafe:
            detail = unsafe[0].removeprefix("WeightsUnpickler error:").strip().split(" was not", 1)[0]
            raise InputError(f"{path} would execute pickled code ({detail[:120]}); refusing to load it; {fix}") from None
        raise InputError(f"{path} is corrupt or not a torch.save file; {fix}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else "file is empty or truncated"
        raise InputError(f"{path} is corrupt or truncated ({reason}); {fix}") from None


def write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(temporary_path)`` into a temporary file beside ``path``, then rename it over ``path``:
    a reader never sees half a file and an interrupted write leaves the previous file intact."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
