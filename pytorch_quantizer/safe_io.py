"""Loading user-supplied torch files without executing pickled code."""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

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
