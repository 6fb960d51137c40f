"""Frozen, validated configuration of a quantization recipe (the CLI converts its flags once).

Enums replace free strings; ``__post_init__`` rejects impossible values and combinations with a
message that names the fix.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import Enum

from pytorch_quantizer.maths.clipping import get_clipping
from pytorch_quantizer.maths.departures import Departures
from pytorch_quantizer.errors import QuantizationError

MIN_BITS, MAX_BITS = 1, 16
BIT_ALLOCATION_MAX_BITS = 4
MAX_ALLOCATION_TARGET = 8
ALLOCATION_CLIPPING = ("no", "laplace", "gaus")


class Prior(str, Enum):
    GAUS = "gaus"
    LAPLACE = "laplace"


class BitRounding(str, Enum):
    ROUND = "round"
    CEIL = "ceil"


class StatsKind(str, Enum):
    MEAN = "mean"
    MAX = "max"


class ActQuantPoint(str, Enum):
    INPUT = "input"
    OUTPUT = "output"


class WeightKind(str, Enum):
    """The quantizer kinds of ``kinds`` (the name is historical: activations take them too)."""

    INT = "int"
    KMEANS = "kmeans"
    UNIFORM = "uniform"
    POT = "pot"
    APOT = "apot"
    BINARY = "binary"
    TERNARY = "ternary"
    DOREFA = "dorefa"
    N2UQ = "n2uq"

    @property
    def grid(self) -> bool:
        """The seed's kinds (GEMMLOWP grids, k-means): clipping, allocation and statistics apply."""
        return self in (WeightKind.INT, WeightKind.KMEANS)

    @property
    def calibrated_activations(self) -> bool:
        """Activations of this kind have a scale fitted on calibration images (``kinds.KindInfo``)."""
        from pytorch_quantizer.quantizers.kinds import get_kind

        return get_kind(self.value).calibrated_activations


PER_LAYER_KINDS = (WeightKind.TERNARY, WeightKind.DOREFA, WeightKind.N2UQ)


def parse_qtype(text: str, for_weights: bool = False) -> tuple[WeightKind, int]:
    """``int4`` -> (INT, 4); ``apot4`` -> (APOT, 4); ``binary`` -> (BINARY, 1), each kind within its bit
    range and only for the tensors it is defined for (``kinds``)."""
    from pytorch_quantizer.quantizers.kinds import parse_kind

    name, bits = parse_kind(text, for_weights)
    return WeightKind(name), bits


@dataclass(frozen=True)
class TensorQuantSpec:
    """How one kind of tensor (activations or weights) is quantized.

    ``allocation_target``: mean bits of bit allocation (default: ``bits``); with ``bin_allocation``
    the real-valued target of bin allocation and mid-tread grids.
    """

    bits: int
    per_channel: bool = False
    clipping: str = "no"
    bit_allocation: bool = False
    allocation_target: float | None = None
    bin_allocation: bool = False
    kind: WeightKind = WeightKind.INT

    def __post_init__(self):
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise QuantizationError(f"bits must be within {MIN_BITS}..{MAX_BITS}, got {self.bits}", field="bits")
        get_clipping(self.clipping)
        allocating = self.bit_allocation or self.bin_allocation
        if allocating and not self.per_channel:
            raise QuantizationError("bit_allocation / bin_allocation are per channel: set per_channel=True",
                                    code="allocation_needs_per_channel", field="per_channel")
        if allocating and self.clipping not in ALLOCATION_CLIPPING:
            raise QuantizationError(f"bit / bin allocation takes min / max ranges or ACIQ clipping (each channel clipped "
                                    f"with the constant of its own bits): set clipping to no, laplace or gaus (not "
                                    f"{self.clipping})", code="allocation_clipping", field="clipping",
                                    detail=self.clipping)
        if self.allocation_target is not None and not 0 < self.allocation_target <= MAX_ALLOCATION_TARGET:
            raise QuantizationError(f"allocation_target must be within (0, {MAX_ALLOCATION_TARGET}] bits, "
                                    f"got {self.allocation_target}", field="allocation_target")
        if self.bin_allocation and self.allocation_target is None:
            raise QuantizationError("bin_allocation (mid-tread) needs an allocation_target",
                                    code="bins_need_target", field="allocation_target")
        if self.allocation_target is not None and not allocating:
            raise QuantizationError("allocation_target needs bit_allocation=True", code="target_needs_allocation",
                                    field="bit_allocation")
        if not self.kind.grid and (allocating or self.clipping != "no"):
            raise QuantizationError(f"{self.kind.value} quantization calibrates its own scale: set clipping='no' and "
                                    "no allocation, or kind=WeightKind.INT", code="kind_calibrates_own_scale",
                                    field="kind", detail=self.kind.value)

    @property
    def target_bits(self) -> float:
        return self.allocation_target if self.allocation_target is not None else float(self.bits)

    def at_bits(self, bits: int) -> "TensorQuantSpec":
        """The same recipe at ``bits`` without allocation (layers kept at 8 bits); the other seeds'
        kinds become the integer grid there, as their papers keep those layers at 8-bit uniform."""
        kind = self.kind if self.kind.grid else WeightKind.INT
        return replace(self, bits=bits, bit_allocation=False, bin_allocation=False, allocation_target=None, kind=kind)


@dataclass(frozen=True)
class QuantConfig:
    """A whole recipe. ``activations`` / ``weights`` None means that kind stays float.

    ``keep_8bit`` / ``keep_fp``: module-name patterns (fnmatch) of layers kept at 8 bits / in float
    (kept activations are quantized per tensor over their min / max, as the seed does for its
    classifier; kept weights keep their granularity and are never clipped unless ``weights``
    clips); ``prior`` and ``rounding`` steer bit allocation; ``departures`` selects this project's
    variants of the seed's arithmetic; ``act_quant_point`` OUTPUT is the seed's (Conv/Linear outputs,
    a following ReLU / ReLU6 fused as a range starting at 0), INPUT quantizes what each GEMM reads;
    ``int32_bias``: with fixed activation ranges, the bias of a layer whose input lies on an
    activation grid is rounded to its accumulator grid (``QuantizedModel.bias_scales``), as integer
    runtimes hold it; ``layer_bits``: per-layer bit widths (layer name, weight bits or None,
    activation bits or None) that replace the recipe's at those layers (a mixed-precision plan,
    ``methods.mixed_precision``); bit allocation then allocates between the layer's channels at
    the layer's bits.
    """

    activations: TensorQuantSpec | None = None
    weights: TensorQuantSpec | None = None
    prior: Prior = Prior.GAUS
    rounding: BitRounding = BitRounding.ROUND
    preserve_zero: bool = False
    stochastic: bool = False
    power_of_two_scale: bool = False
    bias_correct_weights: bool = False
    variance_correct_weights: bool = False
    bias_correct_activations: bool = False
    measure_entropy: bool = False
    act_quant_point: ActQuantPoint = ActQuantPoint.OUTPUT
    stats_kind: StatsKind = StatsKind.MEAN
    int32_bias: bool = False
    keep_8bit: tuple[str, ...] = ()
    keep_fp: tuple[str, ...] = ()
    seed: int = 0
    departures: Departures = Departures()
    layer_bits: tuple[tuple[str, int | None, int | None], ...] = ()

    def __post_init__(self):
        self.check_layer_bits()
        if (self.bias_correct_weights or self.variance_correct_weights) and self.weights is None:
            raise QuantizationError("bias_correct_weights / variance_correct_weights need quantized weights: set weights",
                                    code="correction_needs_weights", field="weights")
        if self.weights is not None and self.weights.kind == WeightKind.KMEANS and (
                self.weights.bit_allocation or self.weights.bin_allocation):
            raise QuantizationError("k-means weights take no bit allocation: set weights.bit_allocation=False or "
                                    "weights.kind=WeightKind.INT", code="kmeans_allocation", field="weights.bit_allocation")
        self.check_kinds()
        if self.bias_correct_activations and not self.enabled:
            raise QuantizationError("bias_correct_activations needs quantization: set activations and / or weights",
                                    code="bca_needs_quantization", field="bias_correct_activations")
        if (self.bias_correct_activations and not self.departures.bca_folded
                and self.act_quant_point == ActQuantPoint.INPUT):
            raise QuantizationError("bias_correct_activations (the seed's online correction) corrects Conv outputs: set "
                                    "act_quant_point=OUTPUT, or departures.bca_folded=True", code="bca_online_at_input",
                                    field="act_quant_point")

    def check_kinds(self) -> None:
        """Where the other seeds' quantizers are defined: activations per tensor at GEMM inputs,
        weights per layer except the grid kinds, uniform / pot / apot (alpha per channel) and binary."""
        activations, weights = self.activations, self.weights
        if activations is not None and not activations.kind.grid:
            if activations.per_channel:
                raise QuantizationError(f"{activations.kind.value} activations are quantized per tensor: set "
                                        "activations.per_channel=False", code="family_activation_per_channel",
                                        field="activations.per_channel", detail=activations.kind.value)
            if self.act_quant_point != ActQuantPoint.INPUT:
                raise QuantizationError(f"{activations.kind.value} activations quantize what each GEMM reads: set "
                                        "act_quant_point=INPUT", code="family_activation_point", field="act_quant_point",
                                        detail=activations.kind.value)
            if self.bias_correct_activations:
                raise QuantizationError("bias_correct_activations corrects GEMMLOWP activations: turn it off or set "
                                        "activations.kind=WeightKind.INT", code="bca_family",
                                        field="bias_correct_activations")
        if weights is not None and weights.per_channel and weights.kind in PER_LAYER_KINDS:
            raise QuantizationError(f"{weights.kind.value} weights are defined per layer: set weights.per_channel=False",
                                    code="per_layer_kind_per_channel", field="weights.per_channel",
                                    detail=weights.kind.value)

    def check_layer_bits(self) -> None:
        """Per-layer bit widths: integers within the bit range, on integer grids of tensors the recipe quantizes."""
        names = [entry[0] if isinstance(entry, (tuple, list)) and len(entry) == 3 else None for entry in self.layer_bits]
        if None in names or not all(isinstance(name, str) and name for name in names):
            raise QuantizationError("layer_bits holds (layer name, weight bits or None, activation bits or None) "
                                    "triples", field="layer_bits")
        if len(set(names)) != len(names):
            raise QuantizationError("layer_bits names a layer twice", field="layer_bits")
        for name, *bits in self.layer_bits:
            for tensor, spec, value in (("weights", self.weights, bits[0]), ("activations", self.activations, bits[1])):
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
                    raise QuantizationError(f"layer_bits of layer {name}: {tensor} bits must be an integer within "
                                            f"{MIN_BITS}..{MAX_BITS}, got {value!r}", field="layer_bits")
                if spec is None or spec.kind != WeightKind.INT:
                    raise QuantizationError(f"layer_bits of layer {name} sets {tensor} bits, which the recipe does not "
                                            f"quantize on an integer grid: set {tensor}.kind=WeightKind.INT",
                                            field="layer_bits")

    def bits_of(self, layer: str) -> tuple[int | None, int | None]:
        """The (weight, activation) bits ``layer_bits`` gives ``layer`` (None: the recipe's)."""
        return next(((weights, activations) for name, weights, activations in self.layer_bits if name == layer),
                    (None, None))

    @property
    def enabled(self) -> bool:
        return self.activations is not None or self.weights is not None


def config_as_dict(config: QuantConfig) -> dict:
    """The recipe as plain data (enums as their values, tuples as lists): JSON-ready."""
    def plain(value):
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value

    return plain(asdict(config))


def config_from_dict(data: dict) -> QuantConfig:
    """The inverse of ``config_as_dict``, validated like any QuantConfig; QuantizationError naming
    the field for data that is not a recipe."""
    def spec(value, field_name):
        if value is None:
            return None
        if not isinstance(value, dict):
            raise QuantizationError(f"{field_name} is {value!r:.40}, not a TensorQuantSpec", field=field_name)
        return TensorQuantSpec(**{**value, "kind": WeightKind(value.get("kind", "int"))})

    if not isinstance(data, dict):
        raise QuantizationError(f"a recipe is a dict of QuantConfig fields, not {type(data).__name__}")
    unknown = set(data) - set(QuantConfig.__dataclass_fields__)
    if unknown:
        raise QuantizationError(f"{sorted(unknown)[0]} is not a QuantConfig field", field=sorted(unknown)[0])
    fields = dict(data)
    try:
        fields["activations"] = spec(data.get("activations"), "activations")
        fields["weights"] = spec(data.get("weights"), "weights")
        for name, kind in (("prior", Prior), ("rounding", BitRounding), ("act_quant_point", ActQuantPoint),
                           ("stats_kind", StatsKind)):
            if name in fields:
                fields[name] = kind(fields[name])
        for name in ("keep_8bit", "keep_fp"):
            if name in fields:
                fields[name] = tuple(fields[name])
        if "layer_bits" in fields:
            fields["layer_bits"] = tuple(tuple(entry) if isinstance(entry, list) else entry
                                         for entry in fields["layer_bits"])
        if "departures" in fields:
            fields["departures"] = Departures(**fields["departures"])
        return QuantConfig(**fields)
    except (TypeError, ValueError) as error:
        if isinstance(error, QuantizationError):
            raise
        raise QuantizationError(f"not a recipe of this tool: {error}") from None
