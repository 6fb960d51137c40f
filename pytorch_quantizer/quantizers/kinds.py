"""Registry of quantizer kinds: the text of ``-qw`` / ``--qtype`` (``int4``, ``apot4``, ``binary``,
...) parsed into a kind and its bits, with what each kind is defined for.

``@register_kind`` adds one; ``list_kinds(weights=..., activations=...)`` lists them; ``parse_kind``
checks the text against the kind's bit range and the tensor it quantizes. The grid kinds (int,
kmeans) are the seed's; the others come from the other seeds (APoT, N2UQ, XNOR-Net, TWN, DoReFa).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pytorch_quantizer.errors import QuantizationError

KIND_PATTERN = re.compile(r"^(.*?)(\d*)$")  # the shortest name: n2uq2 is n2uq at 2 bits


@dataclass(frozen=True)
class KindInfo:
    """``fixed_bits``: the kind's width when its name carries none (binary 1, ternary 2);
    ``min_bits`` / ``max_bits`` bound the digits of the name for weights and activations;
    ``calibrated_activations``: its activation scale is fitted on calibration images (a clipping
    alpha, N2UQ thresholds), so activations of this kind read the calibration split."""

    name: str
    description: str
    weights: bool
    activations: bool
    min_bits: int = 1
    max_bits: int = 16
    max_activation_bits: int | None = None
    fixed_bits: int | None = None
    grid: bool = False
    calibrated_activations: bool = False

    def spelled(self, bits: int | None = None) -> str:
        return self.name if self.fixed_bits is not None else f"{self.name}{bits if bits is not None else 'N'}"


_KINDS: dict[str, KindInfo] = {}


def register_kind(info: KindInfo) -> KindInfo:
    if info.name in _KINDS:
        raise ValueError(f"quantizer kind {info.name} registered twice")
    _KINDS[info.name] = info
    return info


def list_kinds(weights: bool | None = None, activations: bool | None = None) -> list[KindInfo]:
    return [info for info in _KINDS.values() if (weights is None or info.weights == weights)
            and (activations is None or info.activations == activations)]


def get_kind(name: str) -> KindInfo:
    return _KINDS[name]


def parse_kind(text: str, for_weights: bool) -> tuple[str, int]:
    """``apot4`` -> ("apot", 4); ``binary`` -> ("binary", 1). Raises QuantizationError naming the valid kinds."""
    tensor = "weights" if for_weights else "activations"
    usable = list_kinds(weights=True) if for_weights else list_kinds(activations=True)
    spellings = ", ".join(info.spelled() for info in usable)
    match = KIND_PATTERN.match(text)
    info = _KINDS.get(match.group(1)) if match else None
    if info is None or info not in usable:
        known = f"{info.name} is not defined for {tensor}; " if info is not None else ""
        raise QuantizationError(f"quantization type {text!r}: {known}use one of {spellings} or f32 for {tensor}")
    digits = match.group(2)
    if info.fixed_bits is not None:
        if digits:
            raise QuantizationError(f"quantization type {text!r}: {info.name} takes no bit width "
                             f"(it is {info.fixed_bits}-bit); write {info.name}")
        return info.name, info.fixed_bits
    if not digits:
        raise QuantizationError(f"quantization type {text!r} needs a bit width, e.g. {info.name}4")
    bits = int(digits)
    top = info.max_bits if for_weights or info.max_activation_bits is None else info.max_activation_bits
    if not info.min_bits <= bits <= top:
        raise QuantizationError(f"quantization type {text!r}: {info.name} takes {info.min_bits}..{top} bits for {tensor}")
    return info.name, bits


INT = register_kind(KindInfo("int", "GEMMLOWP integer grid (the seed's)", True, True, grid=True))
KMEANS = register_kind(KindInfo("kmeans", "k-means centroids per tensor or channel (weights)", True, False, max_bits=8))
UNIFORM = register_kind(KindInfo("uniform", "uniform levels, sign + b-1 magnitude bits for weights, MSE-calibrated "
                                 "clipping alpha (the APoT code path's baseline)", True, True, 2, 8,
                                 calibrated_activations=True))
POT = register_kind(KindInfo("pot", "powers of two {0, 2^-i} scaled by alpha (APoT paper's PoT)", True, True, 2, 8,
                             max_activation_bits=7, calibrated_activations=True))
APOT = register_kind(KindInfo("apot", "additive powers of two (APoT, ICLR 2020), MSE-calibrated alpha", True, True,
                              2, 8, calibrated_activations=True))
BINARY = register_kind(KindInfo("binary", "XNOR-Net: sign with alpha = mean|W| per output channel; activations "
                                "sign with the per-position scale K", True, True, fixed_bits=1))
TERNARY = register_kind(KindInfo("ternary", "TWN: delta = 0.7 mean|W|, alpha = mean |W| over |W| > delta (weights)",
                                 True, False, fixed_bits=2))
DOREFA = register_kind(KindInfo("dorefa", "DoReFa-Net: weights tanh-normalised k-bit in [-1, 1] (rescaled to the "
                                "layer), activations k-bit on clip(x, 0, 1)", True, True, 1, 16))
N2UQ = register_kind(KindInfo("n2uq", "N2UQ: non-uniform input thresholds (Lloyd-Max calibrated), uniform output "
                              "levels", True, True, 1, 8, calibrated_activations=True))
