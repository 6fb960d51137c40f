"""Loading user-supplied torch files without executing pickled code."""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

from inference.errors import UserError


def safe_torch_load(path: Path, fix: str):
    """``torch.load(path, weights_only=True)`` with every failure turned into a one-line UserError.

    ``fix`` tells the user what to pass instead. A file that holds pickled Python objects other than
    tensors and plain containers is refused (its code is never run).
    """
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = [line.split("WeightsUnpickler error:", 1)[1].strip() for line in str(error).splitlines()
                  if "WeightsUnpickler error:" in line]
        if unsafe and unsafe[0].startswith("Unsupported global"):
            detail = unsafe[0].split(" was not", 1)[0]
            raise UserError(f"{path} would execute pickled code ({detail}); refusing to load it; {fix}") from None
        raise UserError(f"{path} is corrupt or not a torch.save file; {fix}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else "file is empty or truncated"
        raise UserError(f"{path} is corrupt or truncated ({reason}); {fix}") from None
