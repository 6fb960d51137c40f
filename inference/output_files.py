"""The CLI's output files (results JSON, CSV tables, tensor dumps), each written atomically: a
temporary file beside the target, then renamed over it; and the checks, before any work, that
each can be written."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from inference.errors import UserError
from pytorch_quantizer.formats.safe_io import write_atomically


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


def check_output_file(flag: str, path: Path) -> None:
    """A file the run will write: not a folder, in an existing writable folder, not read-only."""
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name inside it, e.g. {path / 'out' }.{suffix(flag)}")
    folder = path.parent
    blocking = next((parent for parent in [folder, *folder.parents] if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise UserError(f"{flag} {path}: {blocking} is a file, not a folder; choose a path in a folder")
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: folder {folder} is not writable; choose a writable folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path}: the file is read-only; make it writable or choose another path")


def suffix(flag: str) -> str:
    return "json" if "json" in flag else "csv"


def check_output_folder(flag: str, folder: Path) -> None:
    """A folder the run will write into (created if missing): not a file, writable or creatable."""
    existing = next(parent for parent in [folder, *folder.parents] if parent.exists())
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"lies under the file {existing}"
        raise UserError(f"{flag} {folder}: {where}, not a folder; pass a folder (it is created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: {existing} is not writable; choose a writable folder")
