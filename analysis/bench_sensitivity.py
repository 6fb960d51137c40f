"""How long the sensitivity analysis takes at its default settings (the CLI's ``--sensitivity``: 32
calibration images, bit widths 2 3 4 5 6 8, weights, activations and everything-but-one), on
EfficientNet-Lite0 with 8-bit activations and 4-bit per-channel weights, calibration statistics
from the 100 development photos held out of the 400 evaluated. Prints and writes the seconds (whole
call, and per measurement) as JSON; the machine is shared, so the figure is one run's, not a bound.

    python analysis/bench_sensitivity.py --json results/bench_sensitivity.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from analysis.runs import DEVELOPMENT_PHOTOS, write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2, this machine's cores)")
    parser.add_argument("--images", type=int, default=None, help="calibration images measured on (default: the CLI's)")
    args = parser.parse_args(argv)
    import torch

    import pytorch_quantizer as pq
    from inference.data import CalibrationChoice, LoaderOptions, prepare_data
    from inference.models import create_model, get_model_spec
    from inference.precision_flags import DEFAULT_IMAGES

    if not DEVELOPMENT_PHOTOS.is_dir():
        parser.error(f"the development photos are not at {DEVELOPMENT_PHOTOS}")
    torch.set_num_threads(args.threads)
    spec = get_model_spec("efficientnet_lite0")
    data = prepare_data(spec, DEVELOPMENT_PHOTOS, CalibrationChoice(None, 100, 100), 0)
    calibration = data.calibration_loader(LoaderOptions(64, 2)).loader
    config = pq.QuantConfig(activations=pq.TensorQuantSpec(8), weights=pq.TensorQuantSpec(4, per_channel=True),
                            bias_correct_weights=True, keep_8bit=(spec.first_layer, spec.last_layer))
    start = time.perf_counter()
    report = pq.sensitivity(create_model(spec), config, calibration, images=args.images or DEFAULT_IMAGES)
    seconds = time.perf_counter() - start
    figures = {"model": "efficientnet_lite0", "images": report.images, "rows": len(report.rows),
               "layers": len({row.layer for row in report.rows}), "seconds": round(seconds, 1),
               "seconds_per_row": round(seconds / len(report.rows), 3), "threads": args.threads}
    print(json.dumps(figures, indent=1))
    if args.json is not None:
        write_text(args.json, json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
