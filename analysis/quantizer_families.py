"""The other seeds' quantizer kinds on Fashion-MNIST, post-training and after a short QAT: every
kind at W4A4 and W2A2 (XNOR at W1A1, TWN at W2A32) beside ACIQ int4, each row one mlflow run
(experiment ``families``), resumable like ``report.py`` (a row whose results JSON exists is not run
again), with a progress bar over rows.

    python analysis/quantizer_families.py                  # both models, all rows (hours on 2 cores)
    python analysis/quantizer_families.py --quick          # a few rows on 200 images (the tests)

Data: the 10,000 test images; calibration and QAT on ``--train-images`` (default 5120) images of the
training split (``-cs``), QAT for ``--qat-epochs`` (default 2) epochs with the CLI's default
learning rate and batch. Writes ``<out>/<model>.md`` (the table and the command) and
``<out>/families.csv``. ``--quick``: three kinds, 200 test and 1024 training images, one QAT epoch in
batches of 64.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from analysis.report import (EMPTY_RESULT, FMNIST_MODELS, RowFailed, figures, finished_or_run, result_path,
                    resume_message, row_argv)
from analysis.runs import output_folder, write_model_csv, write_text

LEVEL_KINDS = ("uniform", "pot", "apot", "dorefa", "n2uq")
ACIQ_INT4 = "-pcq_w -pcq_a --qtype int4 -qw int4 -c laplace"


def kind_rows() -> dict[str, str]:
    """Post-training rows: {label: flags}."""
    rows = {"ACIQ int4 (W4A4, per channel)": ACIQ_INT4}
    for bits in (4, 2):
        for kind in LEVEL_KINDS:
            rows[f"{kind} W{bits}A{bits}"] = f"--qtype {kind}{bits} -qw {kind}{bits}"
    rows["binary (XNOR) W1A1"] = "--qtype binary -qw binary"
    rows["ternary (TWN) W2A32"] = "-qw ternary"
    return rows


QUICK_ROWS = ("apot W2A2", "n2uq W2A2", "ternary (TWN) W2A32")


def planned_rows(quick: bool, qat_epochs: int) -> dict[str, str]:
    """Post-training rows and their QAT twins (not for ACIQ int4: QAT trains the other seeds' kinds)."""
    base = {label: flags for label, flags in kind_rows().items() if not quick or label in QUICK_ROWS}
    rows = {}
    for label, flags in base.items():
        rows[f"{label}, post-training"] = flags
        if flags != ACIQ_INT4:
            rows[f"{label}, QAT {qat_epochs} epochs"] = f"{flags} --qat-epochs {qat_epochs}"
    return rows


def calibrates(flags: str) -> bool:
    """Rows that read training images: QAT, and activation kinds calibrated post-training."""
    from inference.quant_flags import calibrated_activation_kind

    words = flags.split()
    qtype = words[words.index("--qtype") + 1] if "--qtype" in words else None
    return "--qat-epochs" in words or calibrated_activation_kind(qtype)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=FMNIST_MODELS, default=list(FMNIST_MODELS))
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: results/families; with --quick results/quick/families)")
    parser.add_argument("--experiment", default="families", help="mlflow experiment of the rows (default: families)")
    parser.add_argument("--mlflow-uri", default=None, help="mlflow store (default: the CLI's)")
    parser.add_argument("--train-images", type=int, default=5120, help="calibration / QAT images (-cs, default 5120)")
    parser.add_argument("--qat-epochs", type=int, default=2, help="epochs of the QAT rows (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="three kinds on 200 test / 1024 training images, 1 epoch of batches of 64")
    parser.add_argument("--finished-only", action="store_true", help="tables of the rows already run only")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.out, problem = output_folder(args.out, "families", args.quick)
    if problem is not None:
        parser.error(problem)
    if args.quick:
        args.train_images, args.qat_epochs = 1024, 1
    rows = planned_rows(args.quick, args.qat_epochs)
    qat_batch = ["--qat-batch-size", "64"] if args.quick else []
    data = ["-b", "200" if args.quick else "500", *(["-ss", "200"] if args.quick else [])]
    command = " ".join(["python analysis/quantizer_families.py", *argv])
    args.out.mkdir(parents=True, exist_ok=True)
    tables = []
    with tqdm(total=len(args.models) * len(rows), desc="families", unit="row") as bar:
        for arch in args.models:
            table = []
            for label, flags in rows.items():
                training = ["-cs", str(args.train_images)] if calibrates(flags) else []
                training += qat_batch if "--qat-epochs" in flags else []
                argv_row = row_argv(arch, flags, [*data, *training], args.out / arch / "statistics")
                path = result_path(args.out, arch, label, argv_row)
                bar.update(1)
                if not path.exists() and args.finished_only:
                    continue
                try:
                    result = finished_or_run(path, argv_row, args.experiment, args.mlflow_uri)
                except RowFailed as failure:
                    print(resume_message("quantizer_families.py", failure), file=sys.stderr)
                    return 2
                table.append(figures(label, result) | {"qat_train_top1": result.get("qat_train_top1")})
            frame = pd.DataFrame(table, columns=[*figures("", EMPTY_RESULT), "qat_train_top1"])
            columns = ["recipe", "top1", "top5", "agreement", "kl", "seconds"]
            missing = [label for label in rows if label not in set(frame["recipe"])]
            text = (f"### {arch}\n\nFashion-MNIST test images ({'200' if args.quick else '10,000'}); calibration and QAT "
                    f"on {args.train_images} training images; produced by `{command}`.\n\n"
                    + frame[columns].to_markdown(index=False, floatfmt=".2f")
                    + (f"\n\nNot run yet: {'; '.join(missing)}." if missing else "") + "\n")
            write_text(args.out / f"{arch}.md", text)
            tables.append(frame.assign(model=arch))
            print(text)
    write_model_csv(pd.concat(tables), args.out / "families.csv")
    return 0


if __name__ == "__main__":
    from inference.allocator import reexecute_with_tuned_malloc

    reexecute_with_tuned_malloc()
    sys.exit(main())
