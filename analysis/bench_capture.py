"""What reusing a chained block's inputs saves in ``--reconstruct block`` and ``--adaround`` (a
measurement, not a test)

    python analysis/bench_capture.py -a efficientnet_lite0 --method block --images 32 --iters 5

Learns the rounding twice on the same ``--images`` random images (the capture's cost does not depend
on their content) with W4A4 (per-tensor activations, per-channel weights): once taking every block's
inputs by running the model up to it, once taking a chained block's inputs from the block before it
(``reuse_chained=True``, the CLI's way). Prints the seconds of each, their ratio, and whether the
two learned roundings are identical. ``--iters`` is kept small so that the capture, not the
learning, is what is timed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from analysis.runs import write_text

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Learned rounding with and without reusing chained blocks' inputs.")
    parser.add_argument("-a", "--arch", default="efficientnet_lite0")
    parser.add_argument("--method", choices=("block", "adaround"), default="block",
                        help="learn_block_rounding (--reconstruct block) or learn_model_rounding (--adaround)")
    parser.add_argument("--images", type=int, default=32, help="calibration images (default 32)")
    parser.add_argument("--iters", type=int, default=5, help="learning steps per layer / block (default 5)")
    parser.add_argument("--batch", type=int, default=32, help="images per capture and learning batch (default 32)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    return parser.parse_args(argv)


def learn(arch: str, method: str, images, options, reuse_chained: bool) -> tuple[float, dict]:
    from inference.models import create_model
    from pytorch_quantizer.quantizers.config import QuantConfig, TensorQuantSpec
    from pytorch_quantizer.methods.reconstruction import learn_block_rounding, learn_model_rounding
    from pytorch_quantizer.model.quantized_model import QuantizedModel

    config = QuantConfig(activations=TensorQuantSpec(bits=4), weights=TensorQuantSpec(bits=4, per_channel=True))
    with QuantizedModel(create_model(arch).eval(), config, images[:2]) as quantized:
        start = time.perf_counter()
        learner = learn_block_rounding if method == "block" else learn_model_rounding
        results = learner(quantized, images, options, reuse_chained=reuse_chained)
        return time.perf_counter() - start, {name: result.up for name, result in results.items()}


def main(argv=None) -> int:
    import torch

    from inference.models import get_model_spec
    from pytorch_quantizer.methods.reconstruction import RoundingOptions

    args = parse_args(argv)
    spec = get_model_spec(args.arch)
    size = spec.preprocessing.crop or 28
    channels = 3 if spec.dataset == "imagenet" else 1
    images = torch.randn(args.images, channels, size, size, generator=torch.Generator().manual_seed(0))
    options = RoundingOptions(args.iters, args.batch)
    whole_seconds, whole = learn(args.arch, args.method, images, options, reuse_chained=False)
    chained_seconds, chained = learn(args.arch, args.method, images, options, reuse_chained=True)
    figures = {"arch": args.arch, "method": args.method, "images": args.images, "iters": args.iters, "threads": torch.get_num_threads(),
               "seconds_model_forward_capture": round(whole_seconds, 2),
               "seconds_chained_capture": round(chained_seconds, 2),
               "speedup": round(whole_seconds / chained_seconds, 2),
               "identical_rounding": all(torch.equal(whole[name], chained[name]) for name in whole)}
    print(json.dumps(figures, indent=2))
    if args.json is not None:
        write_text(args.json, json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
