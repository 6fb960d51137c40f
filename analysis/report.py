"""One report of every recipe on real data: each row is one mlflow run (experiment ``report``),
resumable (a row whose results file exists is not run again), with a progress bar over rows.

    python analysis/report.py                 # all models, all rows, the tables of docs/results.md
    python analysis/report.py --quick         # a few rows and images (the tests, CI)

Models and data (calibration never on the evaluated images):
- fmnist_resnet20, fmnist_mobilenet: the 10,000 Fashion-MNIST test images, calibrated on the
  training split;
- efficientnet_lite0 / lite1 / lite2: the 500 ImageNet development photos of
  ``../shared/data/imagenet-sample``, 100 of them held out (seed 0) for calibration, 400 evaluated.
  Without that folder these rows are skipped (and the report says why); the 20 photos shipped in
  foolbox give efficientnet_lite0 rows instead (5 held out, 15 evaluated).

Rows: FP32; W8A8, W4A8, W8A4; the seed README's experiments with their flags
(``seed_experiments.EXPERIMENTS``; offline statistics collected the seed's way, 32 single-image
batches at 8 bits); each method of the recipe alone at W4A4; laplace / gaus / mse / kld clipping.
Columns: top-1, top-5, top-1 agreement and mean KL(FP32 || quantized) against FP32 on the same
images, the recipe's mean activation / weight bits, the measured entropy where ``-me``, and the
seconds the simulation took. Per model a Markdown table (``<out>/<model>.md``) with the command and
a sentence on whether the seed's ordering holds; all rows in ``<out>/report.csv``; the figures of
``mse_analysis.py``, ``bit_allocation_synthetic.py`` and ``bitrate_vs_accuracy.py`` in ``<out>/``.
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import io
import json
import math
import sys
from pathlib import Path


from analysis.runs import DEVELOPMENT_PHOTOS, REPO_ROOT, output_folder, write_model_csv, write_text
from analysis.seed_experiments import COLLECT, EXPERIMENTS

W4A4 = "-pcq_w -pcq_a -sh --qtype int4 -qw int4"
PRECISIONS = {
    "W8A8": "-pcq_w -pcq_a --qtype int8 -qw int8",
    "W4A8": "-pcq_w -pcq_a --qtype int8 -qw int4",
    "W8A4": "-pcq_w -pcq_a --qtype int4 -qw int8",
}
METHODS_ALONE = {
    "W4A4 + ACIQ laplace only": f"{W4A4} -c laplace",
    "W4A4 + bit alloc (A) only": f"{W4A4} -baa",
    "W4A4 + bit alloc (W) only": f"{W4A4} -baw",
    "W4A4 + bias corr (W) only": f"{W4A4} -bcw",
}
CLIPPINGS = {f"W4A4 + {method} clipping": f"{W4A4} -c {method}" for method in ("gaus", "mse", "kld")}
ROWS = {"FP32": "", **PRECISIONS, **EXPERIMENTS, **METHODS_ALONE, **CLIPPINGS}
QUICK_ROWS = ("FP32", "W8A8", "W4A4 naive", "W4A4 + ACIQ + bit alloc (A, W) + bias corr (W)",
              "the same with offline statistics")
FMNIST_MODELS = ("fmnist_resnet20", "fmnist_mobilenet")
IMAGENET_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SEED_FULL = "W4A4 + ACIQ + bit alloc (A, W) + bias corr (W)"


def data_flags(arch: str, development_photos: bool, quick: bool) -> list[str]:
    """The evaluated and calibration images of ``arch`` (see the module docstring)."""
    if arch.startswith("fmnist"):
        return ["-b", "500", *(["-ss", "500"] if quick else [])]
    if development_photos:
        return ["--data", str(DEVELOPMENT_PHOTOS), "--calib-holdout", "100", "-b", "64",
                *(["-ss", "40"] if quick else [])]
    return ["--calib-holdout", "5", "-b", "15"]


def plan_models(models: list[str], development_photos: bool) -> tuple[list[str], list[str]]:
    """(models to run, notes on models skipped and why)."""
    notes = []
    if development_photos:
        return models, notes
    kept = [model for model in models if model not in IMAGENET_MODELS[1:]]
    skipped = [model for model in models if model in IMAGENET_MODELS]
    if skipped:
        notes.append(f"ImageNet development rows skipped: {DEVELOPMENT_PHOTOS} does not exist (it lies beside the "
                     "repository as ../shared); efficientnet_lite0 ran on the 20 photos shipped in foolbox instead"
                     if "efficientnet_lite0" in kept else f"ImageNet development rows skipped: {DEVELOPMENT_PHOTOS} "
                     "does not exist")
    return kept, notes


def row_argv(arch: str, flags: str, data: list[str], stats_folder: Path) -> list[str]:
    """The CLI flags of one row; quantized rows also run FP32 on the same images (--compare-fp32)."""
    argv = ["-a", arch, "-p", "0", "-sf", str(stats_folder), *data, *flags.split()]
    return argv + (["--compare-fp32"] if flags else [])


def result_path(out: Path, arch: str, label: str, argv: list[str]) -> Path:
    """Where a row's results JSON lives: named by the row and a digest of its exact flags (with the
    output folder and the folder beside the repository as placeholders, so a checkout elsewhere
    finds it), so a changed row runs again and an unchanged one is reused."""
    portable = [arg.replace(str(out), "<out>").replace(str(REPO_ROOT.parent), "<root>") for arg in argv]
    digest = hashlib.sha256(json.dumps(portable).encode()).hexdigest()[:10]
    slug = "".join(char if char.isalnum() else "_" for char in label.lower()).strip("_")
    return out / arch / f"{slug}.{digest}.json"


class RowFailed(Exception):
    """A row's CLI run exited 2 (its one line is the message); the report stops, finished rows stay."""


def run_row(argv: list[str], results: Path, experiment: str, mlflow_uri: str | None) -> dict:
    """One CLI run (its own mlflow run), stdout kept out of the report's; a failure raises with the CLI's line."""
    from inference import inference_sim

    results.parent.mkdir(parents=True, exist_ok=True)
    tracking = ["--mlflow-uri", mlflow_uri] if mlflow_uri else []
    errors = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        code = inference_sim.main([*argv, "-mlexp", experiment, "--results-json", str(results), *tracking])
    if code != 0:
        lines = errors.getvalue().strip().splitlines() or [f"exit {code}"]
        raise RowFailed(f"row {' '.join(argv)} failed: {lines[-1]}")
    return json.loads(results.read_text())


def finished_or_run(path: Path, argv: list[str], experiment: str, mlflow_uri: str | None) -> dict:
    """A row's results: read back when its results JSON exists (a resumed report), else run."""
    return json.loads(path.read_text()) if path.exists() else run_row(argv, path, experiment, mlflow_uri)


def resume_message(script: str, failure: RowFailed) -> str:
    return f"{script}: error: {failure}; the finished rows are kept: run the same command again to resume"


def mean_bits(spec: dict | None) -> float:
    """The recipe's mean bits of one tensor kind: the allocation target where bits are allocated, else the bits."""
    if not spec:
        return 32.0
    if (spec.get("bit_allocation") or spec.get("bin_allocation")) and spec.get("allocation_target"):
        return float(spec["allocation_target"])
    return float(spec["bits"])


EMPTY_RESULT = {"quantization": "fp32", "top1": math.nan, "top5": math.nan, "images": 0, "eval_seconds": math.nan}


def figures(label: str, result: dict) -> dict:
    recipe = result["quantization"] if isinstance(result["quantization"], dict) else {}
    return {"recipe": label, "top1": result["top1"], "top5": result["top5"], "images": result["images"],
            "agreement": result.get("top1_agreement", 100.0 if not recipe else math.nan),
            "kl": result.get("mean_kl", 0.0 if not recipe else math.nan),
            "act_bits": mean_bits(recipe.get("activations")), "weight_bits": mean_bits(recipe.get("weights")),
            "entropy_act": result.get("avg.entropy.act", math.nan), "seconds": result["eval_seconds"]}


def ordering_sentence(table) -> str:
    """Whether the seed's ordering holds on these rows: 2std far below naive; naive < each method
    alone <= full recipe; offline statistics within 2 points of the full recipe."""
    top1 = dict(zip(table["recipe"], table["top1"]))
    if not {"W4A4 naive", SEED_FULL}.issubset(top1):
        return "The seed's ordering is not checked on this subset of rows."
    naive, full = top1["W4A4 naive"], top1[SEED_FULL]
    parts = []
    if "4-bit activations, 2-std clipping" in top1:
        two_std = top1["4-bit activations, 2-std clipping"]
        parts.append(f"2-std clipping {'is' if two_std < naive - 5 else 'is not'} far below naive "
                     f"({two_std:.2f} vs {naive:.2f})")
    alone = {label: top1[label] for label in METHODS_ALONE if label in top1}
    if alone:
        above = [label for label, value in alone.items() if naive < value <= full]
        parts.append(f"{len(above)} of {len(alone)} methods alone lie in (naive {naive:.2f}, full {full:.2f}]"
                     + ("" if len(above) == len(alone) else " (not: " + "; ".join(
                         f"{label.removeprefix('W4A4 + ')} {alone[label]:.2f}" for label in alone
                         if label not in above) + ")"))
    else:
        parts.append(f"naive {naive:.2f} {'<' if naive < full else '>='} full recipe {full:.2f}")
    if "the same with offline statistics" in top1:
        offline = top1["the same with offline statistics"]
        parts.append(f"offline statistics {'are' if abs(offline - full) <= 2 else 'are not'} within 2 points of the "
                     f"full recipe ({offline:.2f})")
    return "Seed's ordering: " + "; ".join(parts) + "."


def markdown(arch: str, table, command: str, source: str, planned: tuple[str, ...]) -> str:
    columns = ["recipe", "top1", "top5", "agreement", "kl", "act_bits", "weight_bits", "entropy_act", "seconds"]
    body = table[columns].to_markdown(index=False, floatfmt=".3f")
    missing = [label for label in planned if label not in set(table["recipe"])]
    note = f"\n\nNot run yet: {'; '.join(missing)}." if missing else ""
    return f"### {arch}\n\n{source}; produced by `{command}`.\n\n{body}{note}\n\n{ordering_sentence(table)}\n"


def evaluated_source(arch: str, development_photos: bool, quick: bool) -> str:
    if arch.startswith("fmnist"):
        return f"Fashion-MNIST test images ({'500' if quick else '10,000'}), calibrated on the training split"
    if development_photos:
        return (f"ImageNet development photos ({'40 of the 400' if quick else '400'} evaluated; 100 held out for "
                "calibration, seed 0)")
    return "the 20 ImageNet photos shipped in foolbox (15 evaluated, 5 held out for calibration)"


def run_model(arch: str, args: argparse.Namespace, development_photos: bool, bar) -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    data = data_flags(arch, development_photos, args.quick)
    stats_folder = args.out / arch / "statistics"
    collect = ["-a", arch, "-p", "0", "-sf", str(stats_folder), *data, *COLLECT.split(), "-b", "1", "-ss", "1"]
    rows = []
    for label in planned_rows(args):
        flags = ROWS[label]
        argv = row_argv(arch, flags, data, stats_folder)
        path = result_path(args.out, arch, label, argv)
        bar.update(1)
        if args.finished_only and not path.exists():
            continue
        if not path.exists() and "-sm use" in flags and not list(stats_folder.glob("*.stats.pt")):
            run_row(collect, result_path(args.out, arch, "collect statistics", collect), args.experiment,
                    args.mlflow_uri)
        result = finished_or_run(path, argv, args.experiment, args.mlflow_uri)
        rows.append(figures(label, result))
    return pd.DataFrame(rows, columns=list(figures("", EMPTY_RESULT)))


def planned_rows(args: argparse.Namespace) -> tuple[str, ...]:
    """The rows of every model: all (five with --quick) less those matching a --skip-rows pattern."""
    return tuple(label for label in (QUICK_ROWS if args.quick else ROWS)
                 if not any(fnmatch.fnmatchcase(label, pattern) for pattern in args.skip_rows))


def check_skip_patterns(patterns: list[str]) -> str | None:
    """The error of a --skip-rows pattern that names no row (a typo would silently run everything)."""
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(label, pattern) for label in ROWS):
            return (f"--skip-rows {pattern!r} matches no row; the rows are: {'; '.join(ROWS)} "
                    "(shell-style patterns, e.g. '*kld*')")
    return None


REPORT_BEGIN, REPORT_END = "<!-- report tables: begin -->", "<!-- report tables: end -->"


def update_docs(page: Path, tables: list[str]) -> None:
    """Replace what lies between the report markers of ``page`` (any file holding them once, e.g.
    docs/results.md) with ``tables`` (written atomically)."""
    text = page.read_text()
    if text.count(REPORT_BEGIN) != 1 or text.count(REPORT_END) != 1 or text.index(REPORT_BEGIN) > text.index(REPORT_END):
        raise ValueError(f"{page} needs one {REPORT_BEGIN} line before one {REPORT_END} line")
    head, rest = text.split(REPORT_BEGIN)
    tail = rest.split(REPORT_END)[1]
    body = "\n".join(table.replace("### ", "#### ", 1) for table in tables)
    write_text(page, f"{head}{REPORT_BEGIN}\n\n{body}\n{REPORT_END}{tail}")


def figure_scripts(args: argparse.Namespace) -> dict[str, list[str]]:
    """The commands of the three figure scripts (their ``main`` argv), quick in --quick."""
    quick = ["--quick"] if args.quick else []
    return {"mse_analysis": [*quick, "--out", str(args.out / "mse_analysis")],
            "bit_allocation_synthetic": [*quick, "--out", str(args.out / "bit_allocation_synthetic")],
            "bitrate_vs_accuracy": [*quick, "--out", str(args.out / "bitrate_vs_accuracy")]}


def main(argv: list[str] | None = None) -> int:
    import importlib

    import pandas as pd
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=(*FMNIST_MODELS, *IMAGENET_MODELS), default=None,
                        help="default: all five (with --quick: fmnist_resnet20 and efficientnet_lite0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: results/report; with --quick results/quick/report)")
    parser.add_argument("--experiment", default="report", help="mlflow experiment of the rows (default: report)")
    parser.add_argument("--mlflow-uri", default=None, help="mlflow store (default: the CLI's)")
    parser.add_argument("--quick", action="store_true", help="five rows, 500 / 40 / 15 images (tests, CI)")
    parser.add_argument("--finished-only", action="store_true",
                        help="tables of the rows already run only (nothing runs; the tables say which rows are missing)")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="only the recipe tables, not the three figure scripts")
    parser.add_argument("--update-docs", type=Path, default=None, metavar="PAGE",
                        help="also put the tables between the report markers of the docs page holding them "
                             "(e.g. docs/results.md)")
    parser.add_argument("--skip-rows", nargs="+", default=[], metavar="PATTERN",
                        help="leave out the rows whose label matches a shell-style pattern (e.g. '*mse*' '*kld*': "
                             "the slow on-the-fly clippings); the tables list them as not run")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.out, problem = output_folder(args.out, "report", args.quick)
    if problem is None and args.quick and args.update_docs is not None:
        problem = "--update-docs with --quick would put the figures of a quick run into the docs: drop one of them"
    if problem is None and args.update_docs is not None and args.models is not None:
        problem = "--update-docs rewrites every model's table of the page: run it without --models"
    if problem is not None:
        parser.error(problem)
    if (problem := check_skip_patterns(args.skip_rows)) is not None:
        parser.error(problem)
    command = " ".join(["python analysis/report.py", *argv])
    development_photos = DEVELOPMENT_PHOTOS.is_dir()
    default_models = ["fmnist_resnet20", "efficientnet_lite0"] if args.quick else [*FMNIST_MODELS, *IMAGENET_MODELS]
    models, notes = plan_models(args.models or default_models, development_photos)
    for note in notes:
        print(note)
    tables, texts = [], []
    args.out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(models) * len(planned_rows(args)), desc="report", unit="row") as bar:
        for arch in models:
            try:
                table = run_model(arch, args, development_photos, bar)
            except RowFailed as failure:
                print(resume_message("report.py", failure), file=sys.stderr)
                return 2
            text = markdown(arch, table, command, evaluated_source(arch, development_photos, args.quick),
                            QUICK_ROWS if args.quick else tuple(ROWS))
            write_text(args.out / f"{arch}.md", text)
            tables.append(table.assign(model=arch))
            texts.append(text)
            print(text)
    write_model_csv(pd.concat(tables), args.out / "report.csv")
    if args.update_docs is not None:
        try:
            update_docs(args.update_docs, texts)
        except (OSError, ValueError) as error:
            print(f"report.py: error: --update-docs: {error}", file=sys.stderr)
            return 2
    if args.figures:
        for script, script_argv in figure_scripts(args).items():
            with contextlib.redirect_stdout(io.StringIO()):
                code = importlib.import_module(script).main(script_argv)
            if code != 0:
                print(f"report.py: error: analysis/{script}.py {' '.join(script_argv)} exited {code}", file=sys.stderr)
                return code
            print(f"figures of analysis/{script}.py in {args.out / script}")
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
