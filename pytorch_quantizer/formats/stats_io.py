"""Statistics files: one versioned, data-only file (tensors, strings, numbers; loaded with
``weights_only=True``) keyed by module name, with the model name, calibration image count,
per-channel flag, quantization point and library version, and a SHA-256 checksum over all of it.
A checksum only catches accidents (anyone can recompute it), so loading also checks that every
value is one this tool could have written (``state_checks``).
Written to a temporary file beside the target and renamed, so a crash never leaves half a file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pytorch_quantizer.version import __version__
from pytorch_quantizer.formats import state_checks
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.model.observers import StatsAccumulator
from pytorch_quantizer.formats.safe_io import file_problem, safe_torch_load, write_atomically

FORMAT = "ptq-statistics"
FORMAT_VERSION = 3
UNFINGERPRINTED_VERSIONS = (1, 2)   # written before files recorded the weights they were made for


@dataclass(frozen=True)
class StatisticsFile:
    """``weights_fingerprint``: of the float weights the statistics were collected on
    (``fingerprint.weights_fingerprint``); ``recipe``: the parts of the recipe they depend on
    (``calibration.statistics_recipe``)."""

    model: str
    calibration_images: int
    per_channel: bool
    act_quant_point: str
    clipping: str
    layers: dict[str, StatsAccumulator]
    library_version: str = __version__
    weights_fingerprint: str = ""
    recipe: dict = field(default_factory=dict)


def checksum(metadata: dict, layers: dict[str, dict[str, torch.Tensor]]) -> str:
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
    for layer in sorted(layers):
        for key in sorted(layers[layer]):
            tensor = layers[layer][key].detach().cpu().contiguous()
            digest.update(f"{layer}/{key}/{tensor.dtype}/{tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def metadata_of(statistics: StatisticsFile) -> dict:
    return {"format": FORMAT, "version": FORMAT_VERSION, "library_version": statistics.library_version,
            "model": statistics.model, "calibration_images": statistics.calibration_images,
            "per_channel": statistics.per_channel, "act_quant_point": statistics.act_quant_point,
            "clipping": statistics.clipping, "weights_fingerprint": statistics.weights_fingerprint,
            "recipe": statistics.recipe}


def save_statistics(statistics: StatisticsFile, path: Path) -> None:
    """Write atomically: temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = {name: dict(accumulator.state) for name, accumulator in statistics.layers.items()}
    metadata = metadata_of(statistics)
    payload = {**metadata, "layers": layers, "checksum": checksum(metadata, layers)}
    write_atomically(path, lambda temporary: torch.save(payload, temporary))


METADATA_TYPES = {"library_version": (str, "a string"), "model": (str, "a string"),
                  "calibration_images": (int, "a non-negative integer"), "per_channel": (bool, "true or false"),
                  "act_quant_point": (str, "a string"), "clipping": (str, "a string"),
                  "weights_fingerprint": (str, "a string"), "recipe": (dict, "a dict")}


def metadata_problem(payload: dict) -> str | None:
    """The metadata fields must have their types (they enter the checksum as JSON)."""
    for key, (kind, expected) in METADATA_TYPES.items():
        value = payload.get(key)
        wrong_bool = kind is int and isinstance(value, bool)
        if not isinstance(value, kind) or wrong_bool or (kind is int and value < 0):
            return f"metadata {key} is {value!r:.40}, not {expected}"
    if not isinstance(payload.get("checksum"), str):
        return "has no checksum string"
    return None


def layers_problem(stored_layers) -> str | None:
    """The layers must be a dict of layer name -> dict of tensors before anything reads them."""
    if not isinstance(stored_layers, dict):
        return f"layers are {state_checks.describe(stored_layers)}, not a dict keyed by layer name"
    for name, state in stored_layers.items():
        if not isinstance(name, str):
            return f"has a layer name {name!r:.60} that is not a string"
        problem = state_checks.state_structure_problem(state)
        if problem:
            return f"layer {name} {problem}"
    return None


def stored_checksum_matches(payload: dict, metadata: dict, stored_layers: dict) -> bool:
    try:
        return payload["checksum"] == checksum(metadata, stored_layers)
    except (TypeError, RuntimeError, ValueError):  # tensors of a dtype numpy cannot hold: not written by this tool
        return False


def load_statistics(path: Path, model: str, per_channel: bool, act_quant_point: str, layers: list[str],
                    fix: str = "collect the statistics again on calibration images",
                    settings: tuple[str, str] = ("activations.per_channel", "act_quant_point"),
                    fingerprint: str | None = None, recipe: dict | None = None) -> StatisticsFile:
    """Load and check a statistics file against the run that wants to use it: format and version,
    metadata types, the checksum, model, granularity and point, then every layer's accumulator
    state (``state_checks.accumulator_state_problem``: keys, count, dtypes, shapes, finiteness,
    ranges), and, when given, the fingerprint of the weights and the ``recipe`` they were collected
    with. Every problem is a one-line QuantizationError naming the file, the layer and the key and
    ending with ``fix``; ``settings`` name the granularity and quantization point settings to match."""
    problem = file_problem(path)
    if problem is not None:
        raise QuantizationError(f"statistics file {path} {problem}; {fix}",
                                code="missing_file" if problem == "does not exist" else "not_a_file")
    payload = safe_torch_load(path, fix)
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str) or payload["format"] != FORMAT:
        raise QuantizationError(f"{path} is not a statistics file of this tool; {fix}")
    version = payload.get("version")
    if type(version) is int and version in UNFINGERPRINTED_VERSIONS:
        raise QuantizationError(f"{path} was written by an earlier version of this tool (statistics format {version}), "
                                f"which did not record the weights it was collected for; {fix}", code="old_format")
    if type(version) is not int or version != FORMAT_VERSION:
        raise QuantizationError(f"{path} has statistics format version {version!r:.40}, this tool reads {FORMAT_VERSION}; {fix}")
    stored_layers = payload.get("layers")
    problem = metadata_problem(payload) or layers_problem(stored_layers)
    if problem:
        raise QuantizationError(f"{path}: {problem} (modified or damaged); {fix}")
    metadata = {key: payload.get(key) for key in metadata_of(StatisticsFile("", 0, False, "", "", {}))}
    if not stored_checksum_matches(payload, metadata, stored_layers):
        raise QuantizationError(f"{path} fails its checksum (modified or damaged); {fix}")
    if payload["model"] != model:
        raise QuantizationError(f"{path} holds statistics of model {payload['model']}, not {model}; {fix}")
    if payload["per_channel"] != per_channel:
        stored = "per-channel" if payload["per_channel"] else "per-tensor"
        raise QuantizationError(f"{path} holds {stored} statistics but this run quantizes activations "
                         f"{'per channel' if per_channel else 'per tensor'}; match {settings[0]} or {fix}")
    if payload["act_quant_point"] != act_quant_point:
        raise QuantizationError(f"{path} was collected at activation point {payload['act_quant_point']}, this run uses "
                         f"{act_quant_point}; match {settings[1]} or {fix}")
    problem = made_for_problem(payload, fingerprint, recipe)
    if problem:
        raise QuantizationError(f"{path} was collected {problem}; {fix}", code="made_for_other")
    missing = [name for name in layers if name not in stored_layers]
    if missing:
        raise QuantizationError(f"{path} lacks statistics of layer {missing[0]} ({len(missing)} missing); {fix}")
    for name in sorted(stored_layers):
        problem = state_checks.accumulator_state_problem(stored_layers[name], per_channel)
        if problem:
            raise QuantizationError(f"{path}: layer {name} {problem}; {fix}")
    return StatisticsFile(payload["model"], payload["calibration_images"], payload["per_channel"],
                          payload["act_quant_point"], payload["clipping"],
                          {name: StatsAccumulator(state) for name, state in stored_layers.items()},
                          payload["library_version"], payload["weights_fingerprint"], payload["recipe"])


def made_for_problem(payload: dict, fingerprint: str | None, recipe: dict | None) -> str | None:
    """How the weights or recipe a file was made for differ from this run's (None: they do not). A
    recipe entry that is None on either side is one that side does not depend on."""
    stored = payload.get("weights_fingerprint")
    if fingerprint is not None and stored != fingerprint:
        return f"for other weights (fingerprint {str(stored)[:12]}, this run's {fingerprint[:12]})"
    for key, value in (recipe or {}).items():
        made_with = payload.get("recipe", {}).get(key)
        if value is not None and made_with is not None and made_with != value:
            return f"with {key} {made_with!r:.60}, this run's {value!r:.60}"
    return None
