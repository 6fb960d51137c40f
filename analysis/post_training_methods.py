"""The post-training methods published after the seed (issue 14) on every model: nearest rounding,
``--equalize``, ``--adaround``, ``--reconstruct block`` without and with ``--qdrop 0.5``, at W4A8
and W4A4 (per-channel weights, per-tensor activations, ``-bcw``), each row one mlflow run
(experiment ``post-training-methods``), resumable like ``report.py`` (a row whose results JSON
exists is not run again), with a progress bar over rows.

    python analysis/post_training_methods.py                 # five models, 10 rows each (hours on 2 cores)
    python analysis/post_training_methods.py --quick         # three rows on fmnist_mobilenet, 200 images (tests)

Data as in ``report.py``: Fashion-MNIST on its 10,000 test images, rounding learned on ``-cs 256``
training images with 500 steps; EfficientNet-Lite on the 400 development photos, rounding learned
on the 100 others (``--calib-holdout 100 -cs 100``) with 200 steps on lite0 (what fits the 30
minutes issue 14 allows per learned model on this 2-core machine). Lite1 and lite2 are wider,
deeper and read larger images (240 / 260 pixels: 1.6 and 2.2 times lite0's work per image), and
most of a learned row's time goes to capturing every layer's (block's) inputs on all calibration
photos; they learn with 50 steps on 32 (lite1) and 16 (lite2) of the 100 held-out photos, so that
their twelve learned rows fit about an hour on 2 cores. Each table gives top-1, agreement with FP32,
the seconds spent learning the rounding and the seconds of the whole run. Writes
``<out>/<model>.md`` and ``<out>/post_training_methods.csv``.

On fmnist_mobilenet and efficientnet_lite0 (issue 27) the table goes on with block + QDrop at fixed
activation ranges from the calibration statistics (``-sm collect``), with the step sizes learned
(``--learn-step-sizes``), with ``LONG_STEPS`` steps (with step sizes, and plain block reconstruction),
at W3A3 and W2A4, with the step sizes learned at ``--step-size-lr`` 0.8 / steps (the published rate and
steps' reach), and at W4A4 with ``--rectified-aciq`` (the ReLU6's output fitted and quantized, not
the pre-activation the seed fits). Every row keeps the first
conv and the classifier at 8 bits (the CLI's default, as in the published protocols).
"""
from __future__ import annotations

import argparse
import math
import sys


from analysis.report import (EMPTY_RESULT, FMNIST_MODELS, IMAGENET_MODELS, RowFailed, data_flags, figures,
                    finished_or_run, plan_models, result_path, resume_message, row_argv)
from analysis.runs import DEVELOPMENT_PHOTOS, parse_row_script, write_model_csv, write_text

PRECISIONS = {"W4A8": "--qtype int8 -qw int4 -pcq_w -bcw",
              "W4A4": "--qtype int4 -c laplace -qw int4 -pcq_w -bcw"}
METHODS = {"nearest rounding": "", "equalize": "--equalize", "adaround": "--adaround",
           "reconstruct block": "--reconstruct block", "reconstruct block + QDrop 0.5": "--reconstruct block --qdrop 0.5"}
QUICK_ROWS = ("W4A4, nearest rounding", "W4A4, adaround", "W4A4, reconstruct block + QDrop 0.5")


LEARNING = {"efficientnet_lite0": (100, 200), "efficientnet_lite1": (32, 50), "efficientnet_lite2": (16, 50)}
FMNIST_LEARNING, QUICK_LEARNING = (256, 500), (64, 10)   # (calibration images, steps)

# Issue 27's rows, on the two models it names: fixed activation ranges from the calibration
# statistics (-sm collect) with and without learned step sizes, longer learning, lower precisions.
SCALED_MODELS = ("fmnist_mobilenet", "efficientnet_lite0")
LOWER_PRECISIONS = {"W3A3": "--qtype int3 -c laplace -qw int3 -pcq_w -bcw",
                    "W2A4": "--qtype int4 -c laplace -qw int2 -pcq_w -bcw"}
FIXED_RANGES = "--reconstruct block --qdrop 0.5 -sm collect"
STEP_SIZES = f"{FIXED_RANGES} --learn-step-sizes"
STEP_SIZES_WITHOUT_QDROP = "--reconstruct block -sm collect --learn-step-sizes"
# The published step-size rate (4e-5) over the published 20,000 steps: how far a step size may move.
STEP_SIZE_REACH = 4e-5 * 20_000
# The seed fits a ReLU'd activation before its ReLU; --rectified-aciq fits (and quantizes) the ReLU6's output.
RECTIFIED = "--rectified-aciq"
LONG_STEPS = {"efficientnet_lite0": 1000, "fmnist_mobilenet": 1000}


def learning(arch: str, quick: bool, steps: int | None = None) -> list[str]:
    """Calibration images and steps of the learned rows (see the module docstring)."""
    images, default_steps = QUICK_LEARNING if quick else LEARNING.get(arch, FMNIST_LEARNING)
    return ["-cs", str(images), "--recon-iters", str(steps or default_steps)]


def with_learning(flags: str, learning_flags: list[str]) -> str:
    """``flags``, followed by ``learning_flags`` where they learn a rounding (--adaround / --reconstruct)."""
    learns = "--adaround" in flags or "--reconstruct" in flags
    return " ".join([*flags.split(), *(learning_flags if learns else [])])


def _row(recipe: str, flags: str, arch: str, quick: bool, steps: int | None = None) -> str:
    return with_learning(f"{recipe} {flags}", learning(arch, quick, steps))


def reaching(flags: str, arch: str) -> str:
    """``flags`` with the step-size rate at which ``arch``'s steps reach as far as the published protocol's."""
    return f"{flags} --step-size-lr {STEP_SIZE_REACH / LEARNING.get(arch, FMNIST_LEARNING)[1]:g}"


def scaled_rows(arch: str) -> dict[str, str]:
    """{label: flags} of issue 27's rows of ``arch`` (none for the other models)."""
    if arch not in SCALED_MODELS:
        return {}
    block, steps = "reconstruct block + QDrop 0.5", LONG_STEPS[arch]
    rows = {f"W4A4, {block}, fixed ranges": _row(PRECISIONS["W4A4"], FIXED_RANGES, arch, False),
            f"W4A4, {block} + step sizes": _row(PRECISIONS["W4A4"], STEP_SIZES, arch, False),
            f"W4A4, {block} + step sizes at 0.8 / steps": _row(PRECISIONS["W4A4"], reaching(STEP_SIZES, arch), arch,
                                                               False),
            "W4A4, reconstruct block + step sizes at 0.8 / steps": _row(
                PRECISIONS["W4A4"], reaching(STEP_SIZES_WITHOUT_QDROP, arch), arch, False),
            "W4A4, nearest rounding, rectified ACIQ": f"{PRECISIONS['W4A4']} {RECTIFIED}",
            "W4A4, reconstruct block, rectified ACIQ": _row(
                PRECISIONS["W4A4"], f"{RECTIFIED} {METHODS['reconstruct block']}", arch, False)}
    for precision in PRECISIONS:
        rows[f"{precision}, {block} + step sizes, {steps} steps"] = _row(PRECISIONS[precision], STEP_SIZES, arch,
                                                                         False, steps)
    for precision in PRECISIONS:
        rows[f"{precision}, reconstruct block, {steps} steps"] = _row(PRECISIONS[precision], METHODS["reconstruct block"],
                                                                      arch, False, steps)
    for precision, recipe in LOWER_PRECISIONS.items():
        rows[f"{precision}, nearest rounding"] = recipe
        rows[f"{precision}, {block} + step sizes"] = _row(recipe, STEP_SIZES, arch, False)
    return rows


def planned_rows(arch: str, quick: bool) -> dict[str, str]:
    """{label: flags} of one model: every method at W4A8 and W4A4, then ``scaled_rows``."""
    rows = {}
    for precision, recipe in PRECISIONS.items():
        for method, flags in METHODS.items():
            label = f"{precision}, {method}"
            if quick and label not in QUICK_ROWS:
                continue
            rows[label] = _row(recipe, flags, arch, quick)
    return rows if quick else rows | scaled_rows(arch)


def row_figures(label: str, result: dict) -> dict:
    return figures(label, result) | {"fp32_top1": result.get("fp32_top1", math.nan),
                                     "learn_seconds": result.get("rounding_seconds", 0.0)}


def markdown(arch: str, frame, planned: dict[str, str], source: str, command: str) -> str:
    columns = ["recipe", "top1", "agreement", "kl", "learn_seconds", "seconds"]
    missing = [label for label in planned if label not in set(frame["recipe"])]
    fp32 = frame["fp32_top1"].dropna()
    return (f"### {arch}\n\n{source}; FP32 {fp32.iloc[0]:.2f}; produced by `{command}`.\n\n"
            if len(fp32) else f"### {arch}\n\n{source}; produced by `{command}`.\n\n") + (
        frame[columns].to_markdown(index=False, floatfmt=".2f")
        + (f"\n\nNot run yet: {'; '.join(missing)}." if missing else "") + "\n")


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from tqdm import tqdm

    from analysis.report import evaluated_source

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=(*FMNIST_MODELS, *IMAGENET_MODELS), default=None,
                        help="default: all five (with --quick: fmnist_mobilenet)")
    args, command = parse_row_script(parser, "post_training_methods", "post-training-methods",
                                     "three W4A4 rows on 200 test images, 10 steps on 64 training images", argv)
    development_photos = DEVELOPMENT_PHOTOS.is_dir()
    models, notes = plan_models(args.models or (["fmnist_mobilenet"] if args.quick
                                                else [*FMNIST_MODELS, *IMAGENET_MODELS]), development_photos)
    for note in notes:
        print(note)
    args.out.mkdir(parents=True, exist_ok=True)
    plans = {arch: planned_rows(arch, args.quick) for arch in models}
    tables = []
    with tqdm(total=sum(map(len, plans.values())), desc="post-training methods", unit="row") as bar:
        for arch, rows in plans.items():
            data = [*data_flags(arch, development_photos, quick=False), *(["-ss", "200"] if args.quick else [])]
            table = []
            for label, flags in rows.items():
                argv_row = row_argv(arch, flags, data, args.out / arch / "statistics")
                path = result_path(args.out, arch, label, argv_row)
                bar.update(1)
                if not path.exists() and args.finished_only:
                    continue
                try:
                    result = finished_or_run(path, argv_row, args.experiment, args.mlflow_uri)
                except RowFailed as failure:
                    print(resume_message("post_training_methods.py", failure), file=sys.stderr)
                    return 2
                table.append(row_figures(label, result))
            frame = pd.DataFrame(table, columns=list(row_figures("", EMPTY_RESULT)))
            source = evaluated_source(arch, development_photos, quick=False).replace("10,000", "200" if args.quick
                                                                                      else "10,000")
            text = markdown(arch, frame, rows, source, command)
            write_text(args.out / f"{arch}.md", text)
            tables.append(frame.assign(model=arch))
            print(text)
    write_model_csv(pd.concat(tables), args.out / "post_training_methods.csv")
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
