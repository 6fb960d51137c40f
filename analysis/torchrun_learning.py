"""Learned rounding in one process against the same learning under torchrun (issue 27): the share of
weights whose hard rounding is the same, top-1 of each, and the seconds spent learning.

    python analysis/torchrun_learning.py                 # EfficientNet-Lite0, W4A8 block, 200 steps (about 15 min)
    python analysis/torchrun_learning.py --quick         # fmnist_resnet20, 40 steps (a minute)

Three runs with the same flags: block reconstruction at W4A8 (``--qtype int8 -qw int4 -pcq_w -bcw``,
statistics collected on the calibration images), ``--recon-iters`` steps of 32 images. Under
``torchrun --nproc_per_node N`` each process holds 1/N of the calibration images and computes the
gradient of its group of them (``methods.grouped_steps``); every step's batch is drawn over all of
them as in one process. The runs: one process as by default (one pass per step, torch's default
threads), one process with ``--recon-groups N`` at one thread (torchrun gives each process one
thread), and torchrun. The second computes the same sums in the same order as the third; the first
differs from them in the order of floating-point sums only. Writes ``<out>/<model>.json`` and
``<out>/<model>.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from analysis.runs import DEVELOPMENT_PHOTOS, REPO_ROOT, output_folder, write_text

RECIPE = ["--qtype", "int8", "-qw", "int4", "-pcq_w", "-bcw", "-sm", "collect", "--reconstruct", "block",
          "--recon-batch", "32"]


def data_flags(arch: str) -> list[str]:
    if arch.startswith("fmnist"):
        return ["-ss", "400", "-b", "100", "-cs", "128"]
    return ["--data", str(DEVELOPMENT_PHOTOS), "--calib-holdout", "100", "-cs", "100", "-b", "64"]


def run_once(name: str, launcher: list[str], argv: list[str], folder: Path, uri: str,
             environment: dict[str, str]) -> dict:
    """One CLI run (statistics and rounding in ``folder/name``) with ``environment`` added; its results."""
    results = folder / f"{name}.json"
    command = [*launcher, "inference/inference_sim.py", *argv, "-sf", str(folder / name), "--results-json",
               str(results), "--mlflow-uri", uri, "-mlexp", "torchrun-learning"]
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, **environment})
    if finished.returncode != 0:
        raise SystemExit(f"torchrun_learning.py: the {name} run failed:\n{finished.stderr[-3000:]}")
    return json.loads(results.read_text())


def same_rounding(first: Path, second: Path) -> tuple[float, int]:
    """(share of weights with the same learned rounding in two rounding files, weights compared)."""
    import torch

    layers = [torch.load(path, weights_only=True)["layers"] for path in (first, second)]
    if set(layers[0]) != set(layers[1]):
        raise SystemExit("torchrun_learning.py: the two runs learned the rounding of different layers")
    same = sum(int((layers[0][name] == layers[1][name]).sum()) for name in layers[0])
    total = sum(value.numel() for value in layers[0].values())
    return same / total, total


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-a", "--arch", default=None, help="default: efficientnet_lite0 (with --quick fmnist_resnet20)")
    parser.add_argument("--steps", type=int, default=None, help="learning steps per block (default 200; --quick 40)")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes (default 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: results/torchrun_learning; with --quick results/quick/...)")
    parser.add_argument("--quick", action="store_true", help="fmnist_resnet20 on 400 test images, 40 steps")
    args = parser.parse_args(argv)
    out, problem = output_folder(args.out, "torchrun_learning", args.quick)
    if problem is not None:
        parser.error(problem)
    arch = args.arch or ("fmnist_resnet20" if args.quick else "efficientnet_lite0")
    steps = args.steps or (40 if args.quick else 200)
    folder = out / arch
    folder.mkdir(parents=True, exist_ok=True)
    common = ["-a", arch, "-p", "0", *data_flags(arch), *RECIPE, "--recon-iters", str(steps)]
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    runs = {"one process": ([sys.executable], [], {}),
            f"one process, --recon-groups {args.nproc}, 1 thread": ([sys.executable], ["--recon-groups", str(args.nproc)],
                                                                    {"OMP_NUM_THREADS": "1"}),
            f"torchrun, {args.nproc} processes": (torchrun, [], {})}
    results = {name: run_once(f"run{index}", launcher, [*common, *extra], folder, uri, environment)
               for index, (name, (launcher, extra, environment)) in enumerate(runs.items())}
    rounding = next((folder / "run0").glob("*rounding.pt"))
    shares = {name: same_rounding(folder / f"run{index}" / rounding.name, folder / "run2" / rounding.name)
              for index, name in enumerate(list(runs)[:2])}
    weights = next(iter(shares.values()))[1]
    summary = {"arch": arch, "steps": steps, "flags": " ".join(common), "torch": torch.__version__,
               "same_rounding_as_torchrun": {name: share for name, (share, _) in shares.items()}, "weights": weights,
               "runs": {name: {"top1": result["top1"], "processes": result.get("processes", 1),
                               "learn_seconds": result.get("rounding_seconds")}
                        for name, result in results.items()}}
    same = {name: f"{100 * share:.3f} %" for name, (share, _) in shares.items()}
    rows = "\n".join(f"| {name} | {run['processes']} | {run['top1']:.2f} | {run['learn_seconds']:.0f} | "
                     f"{same.get(name, '')} |" for name, run in summary["runs"].items())
    text = (f"{arch}, `{' '.join(RECIPE)} --recon-iters {steps}`, {weights:,} weights.\n\n"
            f"| run | processes | top-1 | learning s | same hard rounding as torchrun |\n|:--|--:|--:|--:|--:|\n"
            f"{rows}\n")
    write_text(folder.with_suffix(".json"), json.dumps(summary, indent=1))
    write_text(folder.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
