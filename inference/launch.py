"""Several evaluating processes on this machine, checked first:

    python inference/launch.py --nproc-per-node 2 -a fmnist_resnet20 --qtype int4 -sm collect

Every flag of ``inference_sim.py`` is checked here, in one process, as each of the N processes
would check it (flags, outputs, the tracking store, the devices of every local rank, the data and
its split into N shares). A problem is one stderr line and exit 2 before torchrun starts anything.
Then ``torch.distributed.run`` (torchrun) starts N processes of ``inference_sim.py`` with the same
flags. If a process fails later (say, an image that cannot be decoded), it hands its one line to
this launcher (``launch_protocol``), which prints the first such line and exits 2 instead of
torchrun's ChildFailedError report; SIGTERM / Ctrl-C stop every process and print one line.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

SIMULATOR = Path(__file__).resolve().parent / "inference_sim.py"


def split_launcher_flags(argv: list[str]) -> tuple[int, list[str]]:
    """(processes, the simulator's flags): ``--nproc-per-node N`` (or ``--nproc_per_node``) is ours."""
    launcher = argparse.ArgumentParser(prog="launch.py", add_help=False)
    launcher.add_argument("--nproc-per-node", "--nproc_per_node", dest="processes", type=int, default=None)
    known, rest = launcher.parse_known_args(argv)
    return known.processes, rest


def check_every_process(args: argparse.Namespace, parser: argparse.ArgumentParser, processes: int) -> None:
    """What each of the ``processes`` ranks would check before its work, done here once per rank."""
    from inference.data import LoaderOptions, make_loader
    from inference.distributed import ProcessInfo
    from inference.inference_sim import checked_before_work
    from inference.validation import resolve_device

    main = ProcessInfo(0, processes, 0)
    _, _, data = checked_before_work(args, parser, main)
    for rank in range(processes):
        process = ProcessInfo(rank, processes, rank)
        resolve_device(args.device, args.device_ids, process)
        make_loader(data.evaluation, LoaderOptions(args.batch_size, args.workers, args.subset, args.shuffle,
                                                   args.seed, process))


def launch(argv: list[str] | None = None) -> int:
    from inference.cli_errors import one_line, user_error_message
    from inference.inference_sim import parse_command_line

    argv = sys.argv[1:] if argv is None else list(argv)
    processes, flags = split_launcher_flags(argv)
    if processes is None or processes < 1:
        print("launch.py: error: --nproc-per-node N (N >= 1 processes) is required; e.g. "
              "python inference/launch.py --nproc-per-node 2 -a fmnist_resnet20", file=sys.stderr)
        return 2
    parser, args = parse_command_line(flags)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        check_every_process(args, parser, processes)
    except BaseException as error:  # noqa: BLE001 - sorted by cause; bugs are raised again
        message = user_error_message(error, args.batch_size)
        if message is None:
            raise
        print(f"inference_sim.py: error: {one_line(message)}", file=sys.stderr)
        return 2
    return start_processes(processes, flags)


def start_processes(processes: int, flags: list[str]) -> int:
    """torchrun's agent in this process; its own reports (closing-signal notices, ChildFailedError)
    are left out: rank 0 has printed the one line that says what happened."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from inference.launch_protocol import LAUNCHER_VARIABLE, first_error_line

    for name in [name for name in logging.root.manager.loggerDict if name.startswith("torch.distributed")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ[LAUNCHER_VARIABLE] = "1"
    torchrun_args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={processes}", str(SIMULATOR), *flags])
    try:
        run(torchrun_args)
    except ChildFailedError as failure:
        line = first_error_line(failure.failures.values())
        if line is None:  # a process crashed (its traceback is above) or was killed
            return max(abs(error.exitcode) for error in failure.failures.values())
        print(f"inference_sim.py: error: {line}", file=sys.stderr)
        return 2
    except SignalException as stop:
        print(f"inference_sim.py: error: stopped by {stop.sigval.name}: every process ended, the mlflow run is "
              "marked KILLED and no partial file was kept", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(launch())
