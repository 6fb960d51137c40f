"""Checks of the CLI's flags before any work: value ranges, contradictions, flags that would have no
effect in the run, output locations, and the device. Each failure is one ``UserError`` line that
names the flag and the fix."""
from __future__ import annotations

import argparse
from pathlib import Path

from inference.errors import UserError
from inference.model_flags import spec_from_args
from inference.models import weights_path
from inference.output_files import check_output_file, check_output_folder
from inference.precision_flags import BUDGET_FLAGS, GROUP_TITLE as PRECISION_TITLE, budget_given, check_precision_flags
from inference.weight_method_flags import GROUP_TITLE, check_weight_method_flags

QUANTIZATION_GROUPS = ("quantization (Banner et al. recipe)", "departures from the seed's arithmetic (each off by default)",
                       "activation statistics", GROUP_TITLE, PRECISION_TITLE)
ALWAYS_MEANINGFUL = {"qtype", "qweight", "q_off"}
ACTIVATION_ONLY = {"pcq_a": "-pcq_a", "clipping": "-c", "baa": "-baa", "bata": "-bata", "bap": "-bap", "sk": "-sk",
                   "sba": "-sba", "kld": "-kld", "ac": "-ac", "sm": "-sm", "act_quant_point": "--act-quant-point",
                   "rectified_aciq": "--rectified-aciq", "batch_range": "--batch-range",
                   "calibrate_quantized": "--calibrate-quantized", "bca": "-bca"}
WEIGHT_ONLY = {"pcq_w": "-pcq_w", "weight_clipping": "--weight-clipping", "baw": "-baw", "batw": "-batw",
               "bcw": "-bcw", "vcw": "-vcw"}


def given_flags(args: argparse.Namespace, parser: argparse.ArgumentParser, groups=QUANTIZATION_GROUPS) -> dict[str, str]:
    """{dest: flag} of the options in ``groups`` whose value differs from their default."""
    given = {}
    for group in parser._action_groups:
        if group.title not in groups:
            continue
        for action in group._group_actions:
            if action.dest in ALWAYS_MEANINGFUL or not action.option_strings:
                continue
            if getattr(args, action.dest) != action.default:
                given[action.dest] = min(action.option_strings, key=len)
    return given


def check_outputs(args: argparse.Namespace) -> None:
    for flag, path in (("--results-json", args.results_json), ("--report-csv", args.report_csv),
                       ("--save-qat", args.save_qat), ("--sensitivity", args.sensitivity)):
        if path is not None:
            check_output_file(flag, path)
    if args.ep or args.sweep_csv is not None:  # sweep rows (ep off) keep the sweep's --sweep-csv
        check_output_file("--sweep-csv", args.sweep_csv or Path(f"precision_sweep_{args.arch}.csv"))
    if args.dd is not None:
        check_output_folder("-dd", args.dd)
    if args.ms:
        check_output_folder("-mf" if args.mf is not None else "-sf", args.mf or args.sf)
    if args.sm == "collect" and not args.q_off:
        check_output_folder("-sf", args.sf)
    if args.sm == "use" and args.sf.exists() and not args.sf.is_dir():
        raise UserError(f"-sf {args.sf}: is a file, not a folder; -sf names the folder of the statistics files")


def check_no_effect(args: argparse.Namespace, parser: argparse.ArgumentParser, config) -> None:
    """Quantization flags that this run would ignore are errors: the run would not be what was asked."""
    given = given_flags(args, parser)
    given.pop("sf", None)  # a location, harmless where unused (scripts pass one -sf to all their runs)
    if args.sweep_csv is not None:
        raise UserError("--sweep-csv names the table of -ep: add -ep or drop --sweep-csv")
    if config is None:
        if given:
            flag = next(iter(given.values()))
            if args.q_off:
                raise UserError(f"--q_off turns quantization off, so {flag} has no effect; drop {flag} or --q_off")
            raise UserError(f"{flag} has no effect: nothing is quantized; add --qtype intN and/or -qw intN, or drop {flag}")
        return
    for dests, quantized, what in ((ACTIVATION_ONLY, config.activations, "--qtype intN"),
                                   (WEIGHT_ONLY, config.weights, "-qw intN")):
        unused = [flag for dest, flag in dests.items() if dest in given] if quantized is None else []
        if unused:
            raise UserError(f"{unused[0]} concerns {'activations' if what.startswith('--') else 'weights'}, which "
                            f"this run does not quantize; add {what} or drop {unused[0]}")
    if "cs" in given and not calibrates(args):
        raise UserError(f"-cs {args.cs}: this run calibrates nothing (no -sm collect, -ac, -bca, calibrated --qtype kind, --qat-epochs, --adaround, --reconstruct, --sensitivity or a budget); drop -cs")


def calibrates(args: argparse.Namespace) -> bool:
    from inference.quant_flags import calibrated_activation_kind

    family_activations = calibrated_activation_kind(args.qtype)
    measures = args.sensitivity is not None or budget_given(args)
    return not args.q_off and (args.sm == "collect" or args.ac or args.bca or family_activations
                               or args.qat_epochs > 0 or args.adaround or args.reconstruct is not None or measures)


def check_patterns(args: argparse.Namespace) -> None:
    for flag, patterns in (("--keep-8bit", args.keep_8bit or []), ("--keep-fp", args.keep_fp)):
        for pattern in patterns:
            if not pattern.strip():
                raise UserError(f"{flag} {pattern!r}: an empty pattern matches no layer; pass a layer name or "
                                f"pattern{', or none for no 8-bit exception' if flag == '--keep-8bit' else ''}")
    if args.keep_8bit and "none" in args.keep_8bit and len(args.keep_8bit) > 1:
        raise UserError("--keep-8bit none means no 8-bit layers and contradicts the other --keep-8bit patterns; "
                        "pass one of them")


def check_clipping_names(args: argparse.Namespace) -> None:
    from pytorch_quantizer.maths.clipping import get_clipping

    for flag, name in (("-c", args.clipping), ("--weight-clipping", args.weight_clipping)):
        try:
            get_clipping(name)
        except ValueError as error:
            raise UserError(f"{flag} {name}: {error}") from None


def validate(args: argparse.Namespace):
    """Every check that needs no data or model, before any work: returns (model spec, QuantConfig or None)."""
    from inference.onnx_flags import check_onnx_flags
    from inference.qat_flags import check_qat_flags
    from inference.quant_flags import quant_config_from_args
    from inference.run_files import check_collect_targets, require_statistics_file
    from inference.settings_flags import methods_from_args, recipe_files_from_args

    if args.weights is not None and args.random_init:
        raise UserError("--weights and --random-init contradict each other; pass only one")
    if args.mf is not None and not args.ms:
        raise UserError("-mf names the folder of -ms: add -ms")
    check_patterns(args)
    check_clipping_names(args)
    check_qat_flags(args)
    check_weight_method_flags(args)
    check_precision_flags(args)
    check_outputs(args)
    spec = spec_from_args(args)
    if not args.random_init:
        weights_path(spec, args.weights)
    calibration_choice(args)
    config = quant_config_from_args(args, spec)
    check_onnx_flags(args, config)
    if config is not None:
        files = recipe_files_from_args(args)
        require_statistics_file(files, config)
        check_collect_targets(files, config, methods_from_args(args))
        check_precision_recipe(args, config, files)
    elif (args.report_csv is not None or args.compare_fp32 or args.sensitivity is not None or budget_given(args)
          or args.mp_plan is not None):
        flag = ("--report-csv" if args.report_csv is not None else "--compare-fp32" if args.compare_fp32
                else "--sensitivity" if args.sensitivity is not None else "a budget (--mp-*)")
        raise UserError(f"{flag} concerns a quantized model: add --qtype intN and/or -qw intN")
    return spec, config


def check_precision_recipe(args: argparse.Namespace, config, files) -> None:
    """The analysis and budgets concern integer grids the recipe quantizes; -sm use needs the saved plan."""
    from pytorch_quantizer.quantizers.config import WeightKind

    kinds = [spec.kind for spec in (config.weights, config.activations) if spec is not None]
    if (args.sensitivity is not None or budget_given(args) or args.mp_plan is not None) and WeightKind.INT not in kinds:
        raise UserError("the sensitivity analysis and mixed precision choose bits of integer grids: use --qtype / -qw intN")
    for dest, flag in BUDGET_FLAGS.items():
        spec = config.weights if dest == "mp_weight_bits" else config.activations if dest == "mp_act_bits" else None
        if getattr(args, dest) is not None and dest != "mp_gbops" and (spec is None or spec.kind != WeightKind.INT):
            tensor = "weights (-qw intN)" if dest == "mp_weight_bits" else "activations (--qtype intN)"
            raise UserError(f"{flag} chooses bits of integer-grid {tensor}, which this run does not quantize")
    if args.mp_plan is not None and budget_given(args):
        check_output_file("--mp-plan", args.mp_plan)


def validate_sweep(args: argparse.Namespace) -> dict:
    """-ep: the sweep's own contradictions, then every row's flags: {precision: (args, validated)}."""
    from inference.sweep import SWEEP_PRECISIONS, check_sweep_flags, precision_args

    check_sweep_flags(args)
    rows = {}
    for precision in SWEEP_PRECISIONS:
        row = precision_args(args, precision)
        rows[precision] = (row, validate(row))
    return rows


def validate_command_line(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """``validate`` or ``validate_sweep``, and the flags that would change nothing in this run."""
    if args.ep:
        return validate_sweep(args)
    validated = validate(args)
    check_no_effect(args, parser, validated[1])
    return validated


def calibration_choice(args: argparse.Namespace):
    from inference.data import CalibrationChoice

    return CalibrationChoice(args.calib_data, args.calib_holdout, args.cs, args.calib_fold)


def resolve_device(requested: str | None, device_ids: list[int] | None = None, process=None):
    """The device of this process: --device, or cuda:ID[local rank] with --device_ids, or cuda:local rank
    under torchrun when CUDA exists, else cpu."""
    import torch

    from inference.distributed import ProcessInfo

    process = process or ProcessInfo()
    if device_ids is not None:
        if requested not in (None, "cuda"):
            raise UserError(f"--device_ids selects CUDA devices and contradicts --device {requested}; pass one of them")
        if not torch.cuda.is_available():
            raise UserError("--device_ids: CUDA is not available on this machine; drop it (runs on cpu)")
        if len(device_ids) > 1 and not process.distributed:
            raise UserError(f"--device_ids {' '.join(map(str, device_ids))}: one process uses one GPU; start "
                            f"torchrun --nproc_per_node={len(device_ids)} for several")
        if process.local_rank >= len(device_ids):
            raise UserError(f"--device_ids lists {len(device_ids)} devices for {process.world_size} processes per node; "
                            "give one ID per process")
        if max(device_ids) >= torch.cuda.device_count():
            raise UserError(f"--device_ids {max(device_ids)}: this machine has {torch.cuda.device_count()} CUDA devices")
        return torch.device("cuda", device_ids[process.local_rank])
    if requested is None:
        if torch.cuda.is_available():
            return torch.device("cuda", process.local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {requested}: only cpu and cuda are supported")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", process.local_rank % torch.cuda.device_count())
    return device
