"""Shared by the analysis scripts: run CLI argument lists in this process and keep one row of figures
per run (top-1 / top-5, agreement and KL against FP32 when --compare-fp32 is among the flags,
average entropy with -me)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

DEVELOPMENT_PHOTOS = REPO_ROOT.parent / "shared" / "data" / "imagenet-sample"


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file renamed over it: an interrupted script never
    leaves half a table where a whole one was."""
    from pytorch_quantizer.formats.safe_io import write_atomically

    write_atomically(Path(path), lambda temporary: Path(temporary).write_text(text))


def write_csv(frame, path: Path) -> None:
    """``frame`` (a pandas DataFrame) as CSV without its index, like ``write_text``."""
    from pytorch_quantizer.formats.safe_io import write_atomically

    write_atomically(Path(path), lambda temporary: frame.to_csv(temporary, index=False))


def write_model_csv(frame, path: Path) -> None:
    """``frame`` (rows with a ``model`` column) as the CSV ``path``, keeping the rows of the other
    models the file already holds, in its order: a run of some models (``--models``) replaces their
    rows and leaves the others' figures in place."""
    import pandas as pd

    path = Path(path)
    if path.is_file():
        existing = pd.read_csv(path)
        if "model" in existing.columns:
            order = list(dict.fromkeys([*existing["model"], *frame["model"]]))
            frame = pd.concat([existing[~existing["model"].isin(set(frame["model"]))], frame], ignore_index=True)
            frame = frame.sort_values("model", key=lambda models: models.map(order.index), kind="stable")
    write_csv(frame, path)


def figures(result: dict) -> dict:
    """The figures of one ``inference.run.run`` result that the tables report."""
    row = {"top1": result["top1"], "top5": result["top5"], "images": result["images"],
           "agreement": result.get("top1_agreement", float("nan")), "kl": result.get("mean_kl", float("nan"))}
    if "avg.entropy.act" in result:
        row["entropy_act"] = result["avg.entropy.act"]
    if "avg.entropy.weight" in result:
        row["entropy_weight"] = result["avg.entropy.weight"]
    return row


def run_commands(commands: dict[str, list[str]], description: str) -> list[dict]:
    """{label: CLI arguments} -> one row per label ({"recipe": label, "flags": ..., figures}), in order,
    with a progress bar over the runs."""
    from tqdm import tqdm

    from inference.inference_sim import build_parser
    from inference.run import run

    rows = []
    for label, argv in tqdm(commands.items(), desc=description, unit="run"):
        result = run(build_parser().parse_args([str(arg) for arg in argv]))
        rows.append({"recipe": label, "flags": " ".join(str(arg) for arg in argv), **figures(result)})
    return rows


def model_data_flags(arch: str, stats_folder: str) -> list[str]:
    """Data flags of the tables: the development photos with 100 held out for calibration for
    ImageNet models, the Fashion-MNIST test set (calibration: its training images) otherwise."""
    common = ["-a", arch, "-p", "0", "-sf", stats_folder]
    if arch.startswith("fmnist"):
        return [*common, "-b", "500"]
    return [*common, "--data", DEVELOPMENT_PHOTOS, "--calib-holdout", "100", "-b", "64"]


SCRATCH = REPO_ROOT / "results" / "quick"   # not tracked by git (.gitignore)


def tracked_files(folder: Path) -> list[str]:
    """The files git tracks under ``folder`` (none outside a git checkout)."""
    import subprocess

    try:
        listed = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "--", str(Path(folder).resolve())],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return listed.stdout.split() if listed.returncode == 0 else []


def output_folder(requested: Path | None, name: str, quick: bool) -> tuple[Path, str | None]:
    """(where a script writes, the problem that stops it or None): ``--out`` when given, else
    ``results/<name>`` for a full run and ``results/quick/<name>`` for a quick one, which never writes
    over the committed results of a full run."""
    if requested is None:
        return (SCRATCH if quick else REPO_ROOT / "results") / name, None
    if quick and tracked_files(requested):
        return requested, (f"--out {requested} holds committed full results, which a --quick run would overwrite: "
                           "drop --out (quick runs write to results/quick/) or choose another folder")
    return requested, None


def parse_row_script(parser: argparse.ArgumentParser, script: str, experiment: str, quick_help: str,
                     argv: list[str] | None) -> tuple[argparse.Namespace, str]:
    """The flags and set-up every resumable table script shares (``--out``, ``--experiment``,
    ``--mlflow-uri``, ``--quick``, ``--finished-only``), added after the script's own: (the parsed
    arguments with ``out`` resolved by ``output_folder``, the command that reproduces the tables)."""
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default: results/{script}; with --quick results/quick/{script})")
    parser.add_argument("--experiment", default=experiment, help="mlflow experiment of the rows")
    parser.add_argument("--mlflow-uri", default=None, help="mlflow store (default: the CLI's)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--finished-only", action="store_true", help="tables of the rows already run only")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.out, problem = output_folder(args.out, script, args.quick)
    if problem is not None:
        parser.error(problem)
    return args, " ".join([f"python analysis/{script}.py", *(arg for arg in argv if arg != "--finished-only")])
