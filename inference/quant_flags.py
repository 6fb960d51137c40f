"""The seed's quantization flags and their one-time conversion into a frozen QuantConfig."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from inference.errors import UserError
from inference.library_messages import cli_wording
from inference.models import ModelSpec

CACHE_VARIABLE = "PTQ_SIM_CACHE"


def default_statistics_folder() -> Path:
    """Where statistics (and learned roundings) go without ``-sf``: a per-user cache, as torch hub and
    Hugging Face keep theirs, so that it does not depend on where the project is installed:
    ``$PTQ_SIM_CACHE/statistics``, else ``$XDG_CACHE_HOME/ptq-simulator/statistics``, else
    ``~/.cache/ptq-simulator/statistics``. Each file records the weights and recipe it was made for."""
    cache = os.environ.get(CACHE_VARIABLE)
    if not cache:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ptq-simulator"
    return Path(cache) / "statistics"
STATS_MODES = ("no", "collect", "use")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value:g}")
    return value


DEPARTURE_FLAGS = (
    ("--exact-aciq", "exact_aciq", "ACIQ ratios solved exactly, and the Gaussian clip of each channel at its own bits"),
    ("--rectified-aciq", "rectified_aciq",
     "fit ACIQ to the positive part of a ReLU'd tensor and clip to [0, alpha] (the seed fits the pre-ReLU tensor)"),
    ("--range-within-data", "range_within_data",
     "clipping ranges within [min, max] and containing 0 (the seed's may pass max and shift the grid)"),
    ("--exact-bit-budget", "exact_bit_budget", "bit allocation whose mean bits equal the target exactly"),
    ("--batch-range", "batch_range",
     "per-batch ranges of per-tensor activations from the whole batch (the seed averages each image's min / max)"),
    ("--calibrate-quantized", "calibrate_quantized",
     "collect statistics through the quantized model (the seed: through the float model)"),
    ("--bca-folded", "bca_folded",
     "-bca measured once on -cs calibration images and folded into the biases (the seed: online per batch)"),
    ("--zero-bit-zero", "zero_bit_zero", "channels allocated 0 bits output 0 (the seed: their lower range end)"),
)


def departures_from_args(args: argparse.Namespace):
    from pytorch_quantizer.maths.departures import Departures

    if args.improved:
        return Departures.all()
    return Departures(**{field: getattr(args, field) for _, field, _ in DEPARTURE_FLAGS})


def _named_kind(text: str | None):
    """The registered kind a --qtype / -qw text starts with (``kinds.KindInfo``), or None."""
    from pytorch_quantizer.quantizers.kinds import KIND_PATTERN, list_kinds

    match = KIND_PATTERN.match(text or "")
    return next((info for info in list_kinds() if match and info.name == match.group(1)), None)


def other_seeds_kind(text: str | None) -> bool:
    """Whether a --qtype / -qw text names one of the other seeds' kinds (apot4, binary, ...)."""
    info = _named_kind(text)
    return info is not None and not info.grid


def calibrated_activation_kind(text: str | None) -> bool:
    """Whether a --qtype text names a kind whose activation scale is fitted on calibration images."""
    info = _named_kind(text)
    return info is not None and info.calibrated_activations


def act_quant_point(args: argparse.Namespace) -> str:
    """--act-quant-point, else GEMM inputs with --improved or an other seed's --qtype (they
    quantize what each GEMM reads), else the seed's outputs."""
    if args.act_quant_point is not None:
        return args.act_quant_point
    return "input" if args.improved or other_seeds_kind(args.qtype) else "output"


def add_quantization_flags(parser: argparse.ArgumentParser, positive_int) -> None:
    group = parser.add_argument_group("quantization (Banner et al. recipe)")
    group.add_argument("--qtype", default=None,
                       help="activation quantization: intN (N = 1..16), or the other seeds' uniformN, potN, apotN, "
                            "dorefaN, n2uqN, binary (per tensor at GEMM inputs, calibrated on calibration images), "
                            "or f32 (default: no quantization)")
    group.add_argument("-qw", "--qweight", default=None,
                       help="weight quantization: intN, kmeansN, or the other seeds' uniformN, potN, apotN, dorefaN, "
                            "n2uqN, binary, ternary, or f32 (default: int8 when --qtype is given, else f32)")
    group.add_argument("--q_off", "--q-off", dest="q_off", action="store_true",
                       help="disable quantization: FP32 through the same pipeline (BN folded)")
    group.add_argument("-pcq_w", "--per-channel-weights", dest="pcq_w", action="store_true", help="per-channel weight quantization")
    group.add_argument("-pcq_a", "--per-channel-activations", dest="pcq_a", action="store_true",
                       help="per-channel activation quantization")
    group.add_argument("-c", "--clipping", default="no",
                       help="clipping of activations: no, laplace, gaus, Kstd (e.g. 2std), kld, mix, pct, mse (default: no)")
    group.add_argument("--weight-clipping", default="no",
                       help="clipping of weights, the same choices (default: no, min / max, as the seed)")
    group.add_argument("-baa", "--bit-alloc-act", dest="baa", action="store_true",
                       help="per-channel bit allocation of activations (with -pcq_a, at 4 bits or fewer; -c no, laplace "
                            "or gaus)")
    group.add_argument("-baw", "--bit-alloc-weight", dest="baw", action="store_true",
                       help="per-channel bit allocation of weights (with -pcq_w, at 4 bits or fewer; --weight-clipping "
                            "no, laplace or gaus)")
    group.add_argument("-bam", "--bit-alloc-rmode", dest="bam", choices=("round", "ceil"), default="round",
                       help="rounding of allocated bits (default: round)")
    group.add_argument("-bap", "--bit-alloc-prior", dest="bap", choices=("gaus", "laplace"), default="gaus",
                       help="prior of activation bit allocation: alpha_i = sigma_i (gaus) or b_i (laplace); weights "
                            "always use sigma_i (default: gaus)")
    group.add_argument("-bata", "--bit-alloc-target-act", dest="bata", type=positive_float, default=None,
                       help="mean bits of activation allocation, may be fractional (with -mtq: bin allocation)")
    group.add_argument("-batw", "--bit-alloc-target-weight", dest="batw", type=positive_float, default=None,
                       help="mean bits of weight allocation, may be fractional (with -mtq: bin allocation)")
    group.add_argument("-mtq", "--mid-tread-quant", dest="mtq", action="store_true",
                       help="bin allocation with mid-tread grids where -bata/-batw give a target")
    group.add_argument("-bcw", "--bias-corr-weight", dest="bcw", action="store_true", help="weight mean correction")
    group.add_argument("-vcw", "--var-corr-weight", dest="vcw", action="store_true", help="weight variance correction")
    group.add_argument("-bca", "--bias-corr-act", dest="bca", action="store_true",
                       help="activation bias correction: the seed's, per evaluated batch on Conv outputs with offline "
                            "statistics (or, with --bca-folded, measured on -cs calibration images into the biases)")
    group.add_argument("-s", "--stochastic", action="store_true", help="stochastic rounding (seeded by --seed)")
    group.add_argument("-hs", "--hw-scale", dest="hs", action="store_true", help="power-of-two scales")
    group.add_argument("-pz", "--preserve-zero", dest="pz", action="store_true",
                       help="centre mid-tread grids on 0 (exact zero) instead of the channel mean")
    group.add_argument("-me", "--measure-entropy", dest="me", action="store_true",
                       help="entropy and Huffman bit rate of the integer codes per layer and on average")
    group.add_argument("--act-quant-point", choices=("input", "output"), default=None,
                       help="quantize activations at Conv/Linear outputs with a following ReLU fused (the seed's; "
                            "default) or at their inputs (default with --improved)")
    group.add_argument("--keep-8bit", action="append", default=None, metavar="PATTERN",
                       help="layer-name pattern kept at 8 bits, repeatable (default: the model's first and last layers; "
                            "'none' for no exception)")
    group.add_argument("--keep-fp", action="append", default=[], metavar="PATTERN",
                       help="layer-name pattern left in float, repeatable")
    departures = parser.add_argument_group("departures from the seed's arithmetic (each off by default)")
    for flag, field, text in DEPARTURE_FLAGS:
        departures.add_argument(flag, dest=field, action="store_true", help=text)
    departures.add_argument("--improved", action="store_true",
                            help="every departure above, and activations quantized at GEMM inputs (--act-quant-point input)")
    stats = parser.add_argument_group("activation statistics")
    stats.add_argument("-sm", "--stats-mode", dest="sm", choices=STATS_MODES, default="no",
                       help="no: statistics of each evaluated batch; collect: measure on -cs calibration images, save "
                            "them (per channel and per tensor, for any later -pcq_a choice) and use them; "
                            "use: load them from -sf")
    stats.add_argument("-sk", "--stats-kind", dest="sk", choices=("mean", "max"), default="mean",
                       help="reduction over calibration batches: mean of each statistic, or the extremes")
    stats.add_argument("-sba", "--stats-batch-avg", dest="sba", action="store_true",
                       help="collect min / max as each image's averaged over a calibration batch, not the batch's (the seed's)")
    stats.add_argument("-kld", "--kld-threshold", dest="kld", action="store_true",
                       help="clip with the KL-divergence threshold (the seed's name for -c kld)")
    stats.add_argument("-sf", "--stats-folder", dest="sf", type=Path, default=default_statistics_folder(),
                       help="folder of statistics and learned-rounding files (default: $PTQ_SIM_CACHE/statistics, "
                            "else ~/.cache/ptq-simulator/statistics)")
    stats.add_argument("-ac", "--aciq-cal", dest="ac", action="store_true",
                       help="calibrate activation statistics on -cs calibration images before evaluating (in memory)")
    stats.add_argument("-cs", "--cal-set-size", dest="cs", type=positive_int, default=5120,
                       help="calibration images for -sm collect, -ac and -bca (default: 5120)")


def parse_bits(text: str | None, flag: str, for_weights: bool = False):
    from pytorch_quantizer.quantizers.config import parse_qtype

    if text is None or text == "f32":
        return None
    try:
        return parse_qtype(text, for_weights)
    except ValueError as error:
        raise UserError(f"{flag} {text}: {error}") from None


def keep_8bit_patterns(args: argparse.Namespace, spec: ModelSpec) -> tuple[str, ...]:
    if args.keep_8bit is None:
        return (spec.first_layer, spec.last_layer)
    return tuple(pattern for pattern in args.keep_8bit if pattern != "none")


def quant_config_from_args(args: argparse.Namespace, spec: ModelSpec):
    """Convert the flags once into a QuantConfig (None with --q_off or without quantization)."""
    from pytorch_quantizer.quantizers.config import (
        MAX_ALLOCATION_TARGET, ActQuantPoint, BitRounding, Prior, QuantConfig, StatsKind, TensorQuantSpec, WeightKind,
    )

    activation_bits = parse_bits(args.qtype, "--qtype")
    weight_text = args.qweight if args.qweight is not None else ("int8" if args.qtype not in (None, "f32") else None)
    weight_bits = parse_bits(weight_text, "-qw", for_weights=True)
    if args.q_off:
        return None
    problems = [f"{flag} {target:g}: the mean bits of an allocation must be within (0, {MAX_ALLOCATION_TARGET}]"
                for flag, target in (("-bata", args.bata), ("-batw", args.batw))
                if target is not None and target > MAX_ALLOCATION_TARGET]
    if args.sm != "no" and activation_bits is None:
        problems.append(f"-sm {args.sm} concerns activation statistics: add --qtype intN")
    if args.sm != "no" and activation_bits is not None and not activation_bits[0].grid:
        problems.append(f"-sm {args.sm} stores GEMMLOWP statistics; {args.qtype} activations calibrate on the "
                        "calibration images in every run: drop -sm")
    if args.baa and activation_bits is None:
        problems.append("-baa needs quantized activations (--qtype intN)")
    if args.baw and (weight_bits is None or weight_bits[0] != WeightKind.INT):
        problems.append("-baw needs integer weights (-qw intN)")
    if args.bata is not None and not args.baa:
        problems.append("-bata sets the target of activation bit allocation: add -baa")
    if args.batw is not None and not args.baw:
        problems.append("-batw sets the target of weight bit allocation: add -baw")
    if args.kld and args.clipping not in ("no", "kld"):
        problems.append(f"-kld means -c kld and contradicts -c {args.clipping}: pass one of them")
    if args.sba and args.sm != "collect" and not args.ac:
        problems.append("-sba sets how statistics are collected: add -sm collect or -ac")
    departures = departures_from_args(args)
    if args.bca and not departures.bca_folded and args.sm == "no" and not args.ac:
        problems.append("-bca (the seed's online correction) needs offline statistics: add -sm collect, -sm use or "
                        "-ac, or measure it on calibration images with --bca-folded")
    if args.bca and not departures.bca_folded and act_quant_point(args) == "input":
        problems.append("-bca (the seed's online correction) corrects Conv outputs: use --act-quant-point output, "
                        "or --bca-folded")
    if args.mtq and args.bata is None and args.batw is None:
        problems.append("-mtq (bin allocation) needs a fractional target: add -bata and/or -batw")
    if problems:
        raise UserError(problems[0])
    clipping = "kld" if args.kld else args.clipping
    try:
        # as in the seed, allocation happens only where the tensor is per channel (no_op_warnings says so)
        activations = None if activation_bits is None else TensorQuantSpec(
            activation_bits[1], args.pcq_a, clipping, bit_allocation=args.baa and args.pcq_a,
            allocation_target=args.bata if args.pcq_a else None,
            bin_allocation=args.mtq and args.bata is not None and args.pcq_a, kind=activation_bits[0])
        weights = None if weight_bits is None else TensorQuantSpec(
            weight_bits[1], args.pcq_w, args.weight_clipping, bit_allocation=args.baw and args.pcq_w,
            allocation_target=args.batw if args.pcq_w else None,
            bin_allocation=args.mtq and args.batw is not None and args.pcq_w, kind=weight_bits[0])
        config = QuantConfig(
            activations=activations, weights=weights, prior=Prior(args.bap), rounding=BitRounding(args.bam),
            preserve_zero=args.pz, stochastic=args.stochastic, power_of_two_scale=args.hs,
            bias_correct_weights=args.bcw, variance_correct_weights=args.vcw, bias_correct_activations=args.bca,
            int32_bias=args.int32_bias,
            measure_entropy=args.me, act_quant_point=ActQuantPoint(act_quant_point(args)), stats_kind=StatsKind(args.sk),
            keep_8bit=keep_8bit_patterns(args, spec), keep_fp=tuple(args.keep_fp), seed=args.seed,
            departures=departures)
    except ValueError as error:
        raise UserError(cli_wording(error)) from None
    return config if config.enabled else None


def no_op_warnings(args: argparse.Namespace) -> list[str]:
    """Seed flags that, as in the seed's code, change nothing in this run: one sentence each."""
    from pytorch_quantizer.quantizers.config import BIT_ALLOCATION_MAX_BITS

    warnings = []
    for flag, per_channel, granularity, bits in (("-baa", args.pcq_a, "-pcq_a", args.qtype),
                                                 ("-baw", args.pcq_w, "-pcq_w", args.qweight or "int8")):
        if not getattr(args, flag[1:]) or args.q_off or bits in (None, "f32"):
            continue
        if not per_channel:
            warnings.append(f"{flag} allocates bits per channel only with {granularity} (as in the seed); "
                            f"without it this tensor is quantized per tensor and {flag} does nothing")
        elif bits.startswith("int") and bits[3:].isdigit() and int(bits[3:]) > BIT_ALLOCATION_MAX_BITS:
            warnings.append(f"{flag} applies at {BIT_ALLOCATION_MAX_BITS} bits or fewer (as in the seed); "
                            f"at {bits} it does nothing")
    return warnings
