"""The CLI's output files (results JSON, CSV tables, tensor dumps), each written atomically: a
temporary file beside the target, then renamed over it."""
from __future__ import annotations

import json
from pathlib import Path

from pytorch_quantizer.safe_io import write_atomically


def write_json_atomically(path: Path, payload: dict) -> None:
    write_atomically(path, lambda temporary: Path(temporary).write_text(json.dumps(payload, indent=2) + "\n"))


def write_csv_atomically(path: Path, table) -> None:
    """``table``: a pandas DataFrame, written without its index."""
    write_atomically(path, lambda temporary: table.to_csv(temporary, index=False))


def save_tensors(tensors: dict, path: Path) -> None:
    """Plain tensors only, loadable with ``torch.load(..., weights_only=True)``."""
    import torch

    write_atomically(path, lambda temporary: torch.save(tensors, temporary))
