"""The weight gradient of EfficientNet-Lite0's depthwise convolutions: ``ptq_kernels::depthwise_weight_grad``
against PyTorch's (oneDNN's) on the same input and output gradient (a measurement, not a test).

    python analysis/bench_depthwise.py --json results/bench_depthwise_cpu.json

Every depthwise conv of Lite0 at its own map size, channels-last, a batch of ``--batch`` (the
learners' default 32): the median milliseconds of each over ``--repeats`` calls, the two run one
after the other on each conv, and the ratio, measured in one run. ``served`` marks the convs that
``model.depthwise_gradients`` hands to the kernel while learning (all but the 3x3 stride-1 ones);
the totals are per learning step of every block.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.bench_kernels import median_seconds

from analysis.runs import write_text

# (channels, input map size (padded where the stride-2 pad is explicit), filter size, stride) of Lite0
LITE0_DEPTHWISE = [(32, 112, 3, 1), (96, 113, 3, 2), (144, 56, 3, 1), (144, 59, 5, 2), (240, 28, 5, 1),
                   (240, 29, 3, 2), (480, 14, 3, 1), (480, 14, 3, 1), (480, 14, 5, 1), (672, 14, 5, 1),
                   (672, 14, 5, 1), (672, 17, 5, 2), (1152, 7, 5, 1), (1152, 7, 5, 1), (1152, 7, 5, 1),
                   (1152, 7, 3, 1)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import pandas as pd
    import torch

    from kernels import build
    from pytorch_quantizer.model.depthwise_gradients import kernel_serves_window
    from pytorch_quantizer.quantizers import backend

    build.build_cpu()
    backend.set_backend("kernels")
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for channels, size, kernel, stride in LITE0_DEPTHWISE:
        padding = kernel // 2 if stride == 1 else 0
        window = ([kernel, kernel], [stride, stride], [padding, padding], [1, 1])
        x = torch.randn(args.batch, channels, size, size, generator=generator).contiguous(
            memory_format=torch.channels_last)
        weight = torch.randn(channels, 1, kernel, kernel, generator=generator)
        grad = torch.randn_like(torch.conv2d(x, weight, None, stride, padding, 1, channels))
        pytorch = 1e3 * median_seconds(lambda: backend.reference_depthwise_weight_grad(grad, x, *window), args.repeats)
        ours = 1e3 * median_seconds(lambda: torch.ops.ptq_kernels.depthwise_weight_grad(grad, x, *window), args.repeats)
        rows.append({"channels": channels, "map": size, "filter": kernel, "stride": stride,
                     "served": kernel_serves_window((kernel, kernel), (stride, stride)), "pytorch ms": pytorch,
                     "kernel ms": ours, "pytorch / kernel": pytorch / ours})
    table = pd.DataFrame(rows)
    served = table[table["served"]]
    summary = {"batch": args.batch, "threads": args.threads, "torch": torch.__version__,
               "all_pytorch_ms": table["pytorch ms"].sum(), "all_kernel_ms": table["kernel ms"].sum(),
               "as_served_ms": served["kernel ms"].sum() + table[~table["served"]]["pytorch ms"].sum(),
               "served_ratio": served["pytorch ms"].sum() / served["kernel ms"].sum()}
    print(table.to_string(index=False, float_format=lambda value: f"{value:.2f}"))
    print(json.dumps(summary, indent=1))
    if args.json is not None:
        report = summary | {"convs": rows}
        write_text(args.json, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
