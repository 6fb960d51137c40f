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
    precision (None: no plan is chosen); ``pinned``: (layer, weight bits) fixed in the plan;
    ``plan_file``: where a chosen plan is written, or without a budget the plan to read."""

    sensitivity_csv: Path | None
    bits: tuple[int, ...]
    images: int
    kinds: tuple[str, ...]
    budget: Budget | None
    pinned: tuple[tuple[str, int], ...] = ()
    plan_file: Path | None = None


def plan_recipe(config: QuantConfig, methods: Methods) -> dict:
    """What a plan must have been chosen for besides the weights: the recipe (without per-layer bits)
    and whether the model was equalized."""
    return {"config": config_as_dict(config), "equalize": methods.equalize}


def settle_precision(model: torch.nn.Module, config: QuantConfig, methods: Methods, files: RecipeFiles,
                     settings: PrecisionSettings, data, options, device: torch.device) -> tuple[QuantConfig, dict]:
    """(the recipe this run quantizes with, the figures for the results)."""
    from pytorch_quantizer.api.analysis import mixed_precision, sensitivity
    from pytorch_quantizer.formats.fingerprint import weights_fingerprint
    from pytorch_quantizer.formats.plan_io import load_plan, save_plan

    process, figures, plan = options.process, {}, None
    fingerprint = weights_fingerprint(model)
    if settings.budget is None and settings.plan_file is not None:
        fix = "choose it again with a budget (--mp-weight-bits ...) and --mp-plan PATH, same model and recipe"
        plan = load_plan(settings.plan_file, files.model_name, fingerprint, plan_recipe(config, methods), fix)
        figures["mp_plan_file"] = str(settings.plan_file)
    if settings.sensitivity_csv is not None or settings.budget is not None:
        if process.distributed:
            raise UserError("the sensitivity analysis runs in one process: choose the plan without torchrun and save it "
                            "with --mp-plan PATH, then evaluate it under torchrun with --mp-plan PATH")
        calibration = data.calibration_loader(options)
        report = sensitivity(model, config, calibration.loader, bits=settings.bits, kinds=settings.kinds,
                             images=settings.images, methods=methods, device=device,
                             progress=progress_bars(process.is_main))
        figures.update(sensitivity_seconds=round(report.seconds, 3), sensitivity_images=report.images,
                       sensitivity_worst=[f"{layer} ({kl:.3g})" for layer, kl in report.worst(WORST)])
        if settings.sensitivity_csv is not None and process.is_main:
            figures.update(write_sensitivity(report, settings.sensitivity_csv))
        if settings.budget is not None:
            plan = mixed_precision(report, settings.budget, settings.bits, dict(settings.pinned))
            if settings.plan_file is not None and process.is_main:
                recipe = plan_recipe(config, methods) | {"budget": asdict(settings.budget),
                                                         "candidates": list(settings.bits),
                                                         "pinned": [list(pin) for pin in settings.pinned]}
                save_plan(settings.plan_file, plan, files.model_name, fingerprint, recipe)
                figures["mp_plan_file"] = str(settings.plan_file)
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
