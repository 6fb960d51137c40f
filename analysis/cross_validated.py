"""Learned rounding calibrated on more photos than the 100 held out: k-fold cross-validation on the
development photos (issue 27), each fold one mlflow run (experiment ``cross-validated``), resumable
like ``report.py``, with a progress bar over folds.

    python analysis/cross_validated.py           # Lite0, 5 folds, block reconstruction at W4A8 and W4A4 (+ QDrop)
    python analysis/cross_validated.py --quick   # fmnist_mobilenet, 2 folds of 100 test images (tests)

Only 500 labelled ImageNet photos exist offline. The other tables hold 100 of them out for
calibration and evaluate 400; here ``--calib-fold I/K`` cuts the 500 into K = 5 seeded parts, and
fold I evaluates part I (100 photos) with the rounding learned on the other 400, so every photo is
evaluated once, by a model calibrated on photos it does not evaluate. With ``--seed 0`` part 1 is
exactly the ``--calib-holdout 100`` photos (both take the first 100 of the same permutation), so
folds 2-5 evaluate the very 400 photos of the other tables: their pooled figures compare directly
with those rows and with FP32 85.75 there. The settings (200 steps, ``-cs 400``) and the two block
rows were fixed before any fold ran; the QDrop row was added after those two had run.

Pooled figures are means over the folds weighted by their evaluated images (top-1, top-5,
agreement with FP32, KL, FP32 top-1: each is a mean over images). Writes ``<out>/<model>.md``
(one row per fold, then the pooled rows) and ``<out>/cross_validated.csv``.
"""
from __future__ import annotations

import argparse
import sys

from analysis.post_training_methods import PRECISIONS, row_figures, with_learning
from analysis.report import RowFailed, finished_or_run, resume_message, result_path, row_argv
from analysis.runs import DEVELOPMENT_PHOTOS, parse_row_script, write_csv, write_text

RECIPES = {f"{precision}, reconstruct block": f"{recipe} --reconstruct block" for precision, recipe in PRECISIONS.items()}
# Added after the two rows above had run: the published W4A4 recipe (QDrop 0.5, as in post_training_methods).
RECIPES["W4A4, reconstruct block + QDrop 0.5"] = f"{PRECISIONS['W4A4']} --reconstruct block --qdrop 0.5"
FULL = {"arch": "efficientnet_lite0", "folds": 5, "learning": "-cs 400 --recon-iters 200",
        "data": ["--data", str(DEVELOPMENT_PHOTOS), "-b", "64"], "photos": DEVELOPMENT_PHOTOS,
        "source": "The 500 ImageNet development photos cut into 5 seeded parts of 100 (seed 0); fold I evaluates "
                  "part I with the rounding learned on the other 400 photos. Part 1 is the 100 photos that "
                  "`--calib-holdout 100` holds out elsewhere, so folds 2-5 evaluate the other tables' 400 photos"}
QUICK = {"arch": "fmnist_mobilenet", "folds": 2, "learning": "-cs 64 --recon-iters 10", "data": ["-b", "100", "-ss", "100"],
         "source": "Fashion-MNIST test images cut into 2 seeded parts; fold I evaluates the first 100 images of part I "
                   "and learns on images of the other part"}
QUICK_RECIPES = {"W4A4, nearest rounding": PRECISIONS["W4A4"], "W4A4, adaround": f"{PRECISIONS['W4A4']} --adaround"}
POOLED = ("top1", "top5", "agreement", "kl", "fp32_top1")


def fold_argv(plan: dict, flags: str, fold: int, stats_folder) -> list[str]:
    """One fold's CLI flags; learned recipes calibrate on ``plan["learning"]``."""
    data = [*plan["data"], "--calib-fold", f"{fold}/{plan['folds']}"]
    return row_argv(plan["arch"], with_learning(flags, plan["learning"].split()), data, stats_folder)


def fold_rows(plan: dict, recipes: dict[str, str], folds, args, script: str) -> list[dict] | int:
    """Run (or reuse) each recipe on each of ``folds`` of ``plan``, resumable, with a progress bar;
    the rows' figures, or 2 after printing why a row failed or that the plan's ``photos`` are missing
    (then before anything is written)."""
    from tqdm import tqdm

    photos = plan.get("photos")
    if photos is not None and not photos.is_dir():
        print(f"{script}: error: {photos} does not exist (it lies beside the repository as ../shared); these "
              "rows need the development photos, or run --quick", file=sys.stderr)
        return 2
    folds = list(folds)
    args.out.mkdir(parents=True, exist_ok=True)
    arch, rows = plan["arch"], []
    with tqdm(total=len(recipes) * len(folds), desc=f"{script} folds", unit="fold") as bar:
        for label, flags in recipes.items():
            for fold in folds:
                argv_fold = fold_argv(plan, flags, fold, args.out / arch / "statistics" / f"fold{fold}")
                path = result_path(args.out, arch, f"{label} fold {fold}", argv_fold)
                if path.exists() or not args.finished_only:
                    try:
                        result = finished_or_run(path, argv_fold, args.experiment, args.mlflow_uri)
                    except RowFailed as failure:
                        print(resume_message(script, failure), file=sys.stderr)
                        return 2
                    rows.append(row_figures(label, result) | {"fold": str(fold)})
                bar.update(1)
    return rows


def write_table(out, plan: dict, heading: str, command: str, note: str, frame, columns: list[str],
                csv_name: str) -> str:
    """Write ``frame`` as ``<out>/<arch>.md`` (``columns``, under the heading, the plan's source and
    ``command``) and ``<out>/<csv_name>``; returns the markdown."""
    text = (f"### {plan['arch']}, {heading}\n\n{plan['source']}; learned with `{plan['learning']}`; produced by "
            f"`{command}`. {note}\n\n" + frame[columns].to_markdown(index=False, floatfmt=".2f") + "\n")
    write_text(out / f"{plan['arch']}.md", text)
    write_csv(frame, out / csv_name)
    return text


def pooled(rows, label: str) -> dict:
    """The image-weighted means of ``POOLED`` over ``rows`` (a frame of folds), learning seconds summed."""
    weights = rows["images"] / rows["images"].sum()
    return {"recipe": rows["recipe"].iloc[0], "fold": label, "images": int(rows["images"].sum()),
            **{column: float((rows[column] * weights).sum()) for column in POOLED},
            "learn_seconds": float(rows["learn_seconds"].sum()), "seconds": float(rows["seconds"].sum())}


def table(frame, folds: int):
    """Per recipe: its folds, every fold pooled, and folds 2..K pooled (the photos part 1 holds out)."""
    import pandas as pd

    parts = []
    for _, rows in frame.groupby("recipe", sort=False):
        parts += [rows, pd.DataFrame([pooled(rows, f"1-{folds} pooled")])]
        if len(rows) == folds > 2:
            parts.append(pd.DataFrame([pooled(rows[rows["fold"] != "1"], f"2-{folds} pooled")]))
    return pd.concat(parts, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args, command = parse_row_script(parser, "cross_validated", "cross-validated",
                                     "fmnist_mobilenet, 2 folds of 100 test images, 10 learning steps", argv)
    plan, recipes = (QUICK, QUICK_RECIPES) if args.quick else (FULL, RECIPES)
    rows = fold_rows(plan, recipes, range(1, plan["folds"] + 1), args, "cross_validated.py")
    if isinstance(rows, int):
        return rows
    if not rows:
        print("cross_validated.py: no fold has run yet: run without --finished-only", file=sys.stderr)
        return 2
    columns = ["recipe", "fold", "images", "top1", "agreement", "kl", "fp32_top1", "learn_seconds", "seconds"]
    print(write_table(args.out, plan, f"{plan['folds']}-fold cross-validation", command,
                      "Pooled rows: image-weighted means, seconds summed.", table(pd.DataFrame(rows), plan["folds"]),
                      columns, "cross_validated.csv"))
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
