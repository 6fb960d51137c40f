"""The CLI's output files (results JSON, CSV tables, tensor dumps), each written atomically: a
temporary file beside the target, then renamed over it."""
from __future__ import annotations

import json
import math
from pathlib import Path

from pytorch_quantizer.safe_io import write_atomically


def strict_json_payload(payload: dict) -> dict:
    """``payload`` with every NaN / Inf number (at any depth) replaced by null, and the dotted keys
    of the replaced values listed under ``non_finite`` with the reason: strict JSON has no NaN."""
    replaced = []

    def clean(value, key: str):
        if isinstance(value, float) and not math.isfinite(value):
            replaced.append(key)
            return None
        if isinstance(value, dict):
            return {name: clean(item, f"{key}.{name}" if key else str(name)) for name, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item, f"{key}[{index}]") for index, item in enumerate(value)]
        return value

    cleaned = clean(payload, "")
    if replaced:
        cleaned["non_finite"] = {"keys": replaced, "reason": "the value was NaN or infinite (e.g. an overflowing "
                                                               "loss); written as null"}
    return cleaned


def write_json_atomically(path: Path, payload: dict) -> None:
    """Strict JSON (``strict_json_payload``), written atomically."""
    text = json.dumps(strict_json_payload(payload), indent=2, allow_nan=False) + "\n"
    write_atomically(path, lambda temporary: Path(temporary).write_text(text))


def write_csv_atomically(path: Path, table) -> None:
    """``table``: a pandas DataFrame, written without its index."""
    write_atomically(path, lambda temporary: table.to_csv(temporary, index=False))


def save_tensors(tensors: dict, path: Path) -> None:
    """Plain tensors only, loadable with ``torch.load(..., weights_only=True)``."""
    import torch

    write_atomically(path, lambda temporary: torch.save(tensors, temporary))
