"""The sensitivity analysis and mixed precision in a CLI run: measured on the calibration images
(``pytorch_quantizer.sensitivity``), written as a table and a figure, turned into a plan under the
budget (``pytorch_quantizer.mixed_precision``), saved with ``-sm collect`` and reused with ``-sm use``
like statistics; the run then quantizes with the plan's per-layer bits."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from inference.errors import UserError
from inference.progress import progress_bars
from inference.run_files import RecipeFiles
from pytorch_quantizer.api.options import Methods
from pytorch_quantizer.methods.mixed_precision import Budget
from pytorch_quantizer.quantizers.config import QuantConfig, config_as_dict

WORST = 5


@dataclass(frozen=True)
class PrecisionSettings:
    """``sensitivity_csv``: where the table goes (None: not written); ``bits``: the candidates;
    ``images``: calibration images measured on; ``kinds``: what is measured; ``budget``: of mixed
    precision (None: no plan); ``pinned``: (layer, weight bits) fixed in the plan."""

    sensitivity_csv: Path | None
    bits: tuple[int, ...]
    images: int
    kinds: tuple[str, ...]
    budget: Budget | None
    pinned: tuple[tuple[str, int], ...] = ()


def plan_path(files: RecipeFiles) -> Path:
    return files.statistics_folder / f"{files.model_name}.{files.statistics_point}.mixed-precision.pt"


def plan_recipe(settings: PrecisionSettings, config: QuantConfig, methods: Methods) -> dict:
    """What a plan was chosen for besides the weights: the recipe, budget, candidates, pins, how it was measured."""
    return {"config": config_as_dict(config), "budget": asdict(settings.budget), "candidates": list(settings.bits),
            "pinned": [list(pin) for pin in settings.pinned], "equalize": methods.equalize,
            "sensitivity_images": settings.images}


def settle_precision(model: torch.nn.Module, config: QuantConfig, methods: Methods, files: RecipeFiles,
                     settings: PrecisionSettings, data, options, device: torch.device) -> tuple[QuantConfig, dict]:
    """(the recipe this run quantizes with, the figures for the results)."""
    from pytorch_quantizer.api.analysis import mixed_precision, sensitivity
    from pytorch_quantizer.formats.fingerprint import weights_fingerprint
    from pytorch_quantizer.formats.plan_io import load_plan, save_plan

    process, figures, plan = options.process, {}, None
    fingerprint = weights_fingerprint(model)
    recipe = plan_recipe(settings, config, methods) if settings.budget is not None else {}
    if settings.budget is not None and files.uses:
        fix = "choose it again with the same budget flags and -sm collect"
        plan = load_plan(plan_path(files), files.model_name, fingerprint, recipe, fix)
        figures["mp_plan_file"] = str(plan_path(files))
    if settings.sensitivity_csv is not None or (settings.budget is not None and plan is None):
        if process.distributed:
            raise UserError("the sensitivity analysis runs in one process: choose the plan without torchrun and with "
                            "-sm collect, then evaluate it under torchrun with -sm use")
        calibration = data.calibration_loader(options)
        report = sensitivity(model, config, calibration.loader, bits=settings.bits, kinds=settings.kinds,
                             images=settings.images, methods=methods, device=device,
                             progress=progress_bars(process.is_main))
        figures.update(sensitivity_seconds=round(report.seconds, 3), sensitivity_images=report.images,
                       sensitivity_worst=[f"{layer} ({kl:.3g})" for layer, kl in report.worst(WORST)])
        if settings.sensitivity_csv is not None and process.is_main:
            figures.update(write_sensitivity(report, settings.sensitivity_csv))
        if settings.budget is not None and plan is None:
            plan = mixed_precision(report, settings.budget, settings.bits, dict(settings.pinned))
            if files.collects and process.is_main:
                plan_path(files).parent.mkdir(parents=True, exist_ok=True)
                save_plan(plan_path(files), plan, files.model_name, fingerprint, recipe)
                figures["mp_plan_file"] = str(plan_path(files))
    if plan is None:
        return config, figures
    figures.update({f"mp_{key}": value for key, value in plan.spent.items()})
    figures.update(mp_objective=plan.objective, mp_layers=len(plan.layer_bits))
    return plan.config(config), figures


def write_sensitivity(report, path: Path) -> dict:
    """The table as CSV and the figure beside it, each written atomically."""
    from inference.output_files import write_csv_atomically
    from pytorch_quantizer.formats.safe_io import write_atomically

    write_csv_atomically(path, report.to_frame())
    figure = path.with_suffix(".png")
    write_atomically(figure, lambda temporary: report.plot(Path(temporary)))
    return {"sensitivity_csv": str(path), "sensitivity_figure": str(figure)}
