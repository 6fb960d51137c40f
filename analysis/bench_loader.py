"""Who sets the pace of an FP32 evaluation: the image loader or the model? (a measurement, not a test)

    python analysis/bench_loader.py --data ../shared/data/imagenet-sample --images 256 --json results/bench_loader.json

For one model, batch size and image count it measures, in one process each:
- ``loader``: images/s of the data loader alone (decode, resize, crop, normalise in -j threads);
- ``model``: images/s of the model alone on random batches of the same shape;
- ``e2e``: images/s of ``pytorch_quantizer.api.evaluation.evaluate`` over the loader (what the CLI does for FP32);
and ``e2e / model`` (1.0: the loader costs nothing). Each measurement runs twice in fresh processes:
with glibc malloc as it comes and with the CLI's tuned thresholds (``inference/allocator.py``), so
the table also shows what that setting is worth on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Loader against model throughput of FP32 evaluation.")
    parser.add_argument("-a", "--arch", default="efficientnet_lite0")
    parser.add_argument("--data", type=Path, default=None, help="ImageNet folder with val/ (default: the 20 embedded photos)")
    parser.add_argument("-b", "--batch-size", type=int, default=64)
    parser.add_argument("-j", "--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=256, help="images per measurement (default 256)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--child", choices=("system", "tuned"), default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def images_per_second(batches, run_batch) -> float:
    images, start = 0, time.perf_counter()
    for batch in batches:
        run_batch(batch)
        images += len(batch)
    return images / (time.perf_counter() - start)


def measure(args: argparse.Namespace) -> dict:
    import torch

    from inference.data import CalibrationChoice, LoaderOptions, make_loader, prepare_data
    from pytorch_quantizer.api.evaluation import evaluate
    from inference.models import create_model, get_model_spec

    spec = get_model_spec(args.arch)
    data = prepare_data(spec, args.data, CalibrationChoice(), 0)
    options = LoaderOptions(args.batch_size, args.workers, min(args.images, len(data.evaluation)))
    model = create_model(args.arch)
    crop = spec.preprocessing.crop
    loader_rate = images_per_second((images for images, _ in make_loader(data.evaluation, options)), lambda _: None)
    sizes = [len(batch) for batch in make_loader(data.evaluation, options).batch_sampler]
    with torch.inference_mode():
        model(torch.randn(sizes[0], 3, crop, crop))  # first call allocates and warms up
        model_rate = images_per_second((torch.randn(size, 3, crop, crop) for size in sizes), model)
    start = time.perf_counter()
    result, _ = evaluate(model, make_loader(data.evaluation, options), torch.device("cpu"))
    e2e_rate = result.images / (time.perf_counter() - start)
    return {"loader": loader_rate, "model": model_rate, "e2e": e2e_rate, "e2e / model": e2e_rate / model_rate,
            "images": result.images}


def run_child(argv: list[str], malloc: str) -> dict:
    from inference.allocator import OPT_OUT, TUNED_MALLOC

    environment = {key: value for key, value in os.environ.items() if key not in TUNED_MALLOC}
    if malloc == "tuned":
        environment |= TUNED_MALLOC
    environment[OPT_OUT] = "1"
    output = subprocess.run([sys.executable, __file__, *argv, "--child", malloc], env=environment, check=True,
                            capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    import pandas as pd

    child_argv = [arg for arg in argv if arg != "--json" and arg != str(args.json)]
    rows = {malloc: run_child(child_argv, malloc) for malloc in ("system", "tuned")}
    table = pd.DataFrame(rows).T
    print(f"{args.arch}, batch {args.batch_size}, {args.workers} decoding threads, images/s:")
    print(table.to_string(float_format=lambda value: f"{value:.2f}"))
    report = {"arch": args.arch, "batch_size": args.batch_size, "workers": args.workers, "cpus": os.cpu_count(),
              **{malloc: figures for malloc, figures in rows.items()},
              "tuned_e2e_vs_system_e2e": rows["tuned"]["e2e"] / rows["system"]["e2e"]}
    print(f"tuned_e2e_vs_system_e2e: {report['tuned_e2e_vs_system_e2e']:.2f}")
    if args.json is not None:
        from inference.output_files import write_json_atomically

        write_json_atomically(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
