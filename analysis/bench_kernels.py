"""Benchmark of the fused fake-quantization kernels (a measurement, not a test).

    python analysis/bench_kernels.py --device cpu --threads 2 --repeats 15 --json results/bench_kernels_cpu.json
    python analysis/bench_kernels.py --e2e        # also the end-to-end W4A4 / FP32 time of the simulator

On an activation-like tensor (64x256x56x56, channel axis 1) and a weight-like one (512x512x3x3,
axis 0) it times clone(), our per-tensor, per-channel and bit-allocated per-channel fake quant
(random per-channel qmax), torch.fake_quantize_per_channel_affine (4 bits), the pure-PyTorch
reference (primitives.fake_quantize), and our statistics (one-pass op, and the two-pass
backend.compute_stats). The cases run interleaved, repeat after repeat, so that noise from the
shared machine hits all of them alike; the table reports medians. GB/s counts each element read
and written once (8 bytes for the elementwise ops, 4 for the reductions, which only read).

Every op returns a fresh tensor, so on the CPU large outputs pay first-touch page faults (about one
per 4 KiB); clone() pays them too. --thp backs such allocations with transparent huge pages
(THP_MEM_ALLOC_ENABLE=1, read once by PyTorch's allocator), which leaves mostly kernel time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from analysis.runs import write_text

REPO_ROOT = Path(__file__).resolve().parent.parent

SHAPES = {"activation": ((64, 256, 56, 56), 1), "weight": ((512, 512, 3, 3), 0)}
E2E_COMMON = "-a fmnist_resnet20 -b 500 -ss 2000"
E2E_W4A4 = "-pcq_w -pcq_a --qtype int4 -qw int4 -c laplace -baa -baw -bcw"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the ptq_kernels fake-quantization ops.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads; default 2)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls of each case (default 15)")
    parser.add_argument("--json", type=Path, default=None, help="write the timings and ratios here")
    parser.add_argument("--thp", action="store_true", help="transparent huge pages for large CPU allocations")
    parser.add_argument("--e2e", action="store_true",
                        help=f"also time the simulator: W4A4 ({E2E_W4A4}) over FP32 on {E2E_COMMON}")
    return parser.parse_args(argv)


def make_cases(x, axis: int):
    """name -> (callable, bytes moved per call)."""
    import torch

    from kernels import build
    from pytorch_quantizer.quantizers import backend
    from pytorch_quantizer.maths import primitives

    if x.is_cuda:
        build.build_cuda()
    else:
        build.build_cpu()
    backend.set_backend("kernels")
    ops = torch.ops.ptq_kernels
    rows = primitives.channels_first(x, axis)
    lo, hi = rows.amin(dim=1) * 0.7, rows.amax(dim=1) * 0.7
    scale, zero_point, qmax = primitives.gemmlowp_params(lo, hi, 4)
    generator = torch.Generator().manual_seed(0)
    bits = torch.randint(2, 9, (rows.shape[0],), generator=generator).to(x.device)
    alloc_scale, alloc_zero_point, alloc_qmax = primitives.gemmlowp_params(lo, hi, bits)
    tensor_params = [t.reshape(1) for t in primitives.gemmlowp_params(lo.min(), hi.max(), 4)]
    zero_point_int = zero_point.int()
    moved, read = 8 * x.numel(), 4 * x.numel()
    return {
        "clone": (lambda: x.clone(), moved),
        "ours per-tensor": (lambda: ops.fake_quant(x, *tensor_params, -1, 0, False), moved),
        "ours per-channel": (lambda: ops.fake_quant(x, scale, zero_point, qmax, axis, 0, False), moved),
        "ours bit-allocated": (lambda: ops.fake_quant(x, alloc_scale, alloc_zero_point, alloc_qmax, axis, 0, False), moved),
        "ours per-channel stochastic": (lambda: ops.fake_quant(x, scale, zero_point, qmax, axis, 1, True), moved),
        "torch per-channel": (lambda: torch.fake_quantize_per_channel_affine(x, scale, zero_point_int, axis, 0, 15), moved),
        "reference per-channel": (lambda: primitives.fake_quantize(x, scale, zero_point, qmax, axis), moved),
        "ours channel_stats": (lambda: ops.channel_stats(x, axis), read),
        "ours compute_stats (2 passes)": (lambda: backend.compute_stats(x, axis), 2 * read),
    }


def median_seconds(function, repeats: int, synchronize=lambda: None) -> float:
    """Median seconds of ``repeats`` consecutive calls of ``function`` after one warm-up call."""
    function()
    samples = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        function()
        synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_cases(cases: dict, repeats: int, synchronize) -> dict[str, float]:
    """Median seconds per case over `repeats` consecutive calls (after one warm-up call). Cases run
    one after the other, not interleaved, so that each sees a steady allocation pattern."""
    return {name: median_seconds(function, repeats, synchronize) for name, (function, _) in cases.items()}


def end_to_end_ratio() -> dict:
    """Wall time of the simulator, W4A4 recipe (statistics collected first) over FP32."""
    from inference.inference_sim import build_parser
    from inference.run import run

    with tempfile.TemporaryDirectory() as folder:
        stats = f"-sf {folder}"
        commands = {"collect": f"{E2E_COMMON} {E2E_W4A4} -sm collect -cs 500 {stats}",
                    "fp32": E2E_COMMON, "w4a4": f"{E2E_COMMON} {E2E_W4A4} -sm use {stats}"}
        seconds = {}
        for name, command in commands.items():
            args = build_parser().parse_args(command.split())
            start = time.perf_counter()
            run(args)
            seconds[name] = time.perf_counter() - start
    return {"e2e_w4a4_vs_fp32": seconds["w4a4"] / seconds["fp32"],
            "e2e_fp32_s": seconds["fp32"], "e2e_w4a4_s": seconds["w4a4"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.thp:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # before torch allocates anything
    import pandas as pd
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_kernels: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    synchronize = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    rows, report = [], {"device": args.device, "threads": args.threads, "repeats": args.repeats, "thp": args.thp,
                        "torch": torch.__version__}
    for tensor, (shape, axis) in SHAPES.items():
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(args.device)
        cases = make_cases(x, axis)
        medians = time_cases(cases, args.repeats, synchronize)
        clone_rate = cases["clone"][1] / medians["clone"]
        for name, seconds in medians.items():
            rate = cases[name][1] / seconds
            rows.append({"tensor": tensor, "case": name, "median ms": seconds * 1e3, "GB/s": rate / 1e9,
                         "bandwidth / clone": rate / clone_rate,
                         "torch time / time": medians["torch per-channel"] / seconds})
        report[tensor] = {name: seconds * 1e3 for name, seconds in medians.items()}
        if tensor == "activation":
            report["per_channel_vs_clone"] = (cases["ours per-channel"][1] / medians["ours per-channel"]) / clone_rate
            report["per_channel_vs_torch"] = medians["torch per-channel"] / medians["ours per-channel"]
            report["per_channel_vs_per_tensor"] = medians["ours per-tensor"] / medians["ours per-channel"]
        del x, cases
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda value: f"{value:.2f}"))
    if args.e2e:
        try:
            report.update(end_to_end_ratio())
        except (SystemExit, OSError, RuntimeError, ValueError) as error:  # argparse exits; QuantizationError is a ValueError
            report["e2e_error"] = f"{type(error).__name__}: {error}"
            print(f"bench_kernels: end-to-end run failed: {report['e2e_error']}", file=sys.stderr)
    summary = {key: value for key, value in report.items() if key.startswith(("per_channel", "e2e"))}
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
