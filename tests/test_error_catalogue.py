"""Every bad input and fault of the hostile-user catalogue (issue 11): exit 2, exactly one error line
on stderr, no traceback, no mlflow run left RUNNING, no existing file lost or half-written."""
import gzip
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, rewrite_statistics

FMNIST = Path("/usr/share/datasets/fashion-mnist")
FAST = ("-a", "fmnist_resnet20", "-ss", "20", "-b", "20")
ERROR_PREFIX = "inference_sim.py: error: "


def assert_one_error_line(code, stderr: str, *expected: str) -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    others = [line for line in stderr.splitlines() if line and not line.startswith(("WARNING:", ERROR_PREFIX))]
    assert len(errors) == 1 and not others, stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def run_statuses(uri: str) -> list[str]:
    path = uri[len("sqlite:///"):]
    if not Path(path).exists():
        return []
    try:
        with sqlite3.connect(path) as connection:
            return [status for (status,) in connection.execute("SELECT status FROM runs")]
    except sqlite3.OperationalError:  # mlflow is still creating its tables
        return []


@pytest.fixture(scope="module")
def statistics_folder(tmp_path_factory):
    """Per-tensor statistics of fmnist_resnet20 at the seed's point, collected once on 64 images."""
    from inference import inference_sim

    folder = tmp_path_factory.mktemp("stats")
    code = inference_sim.main([*FAST, "--qtype", "int4", "-sm", "collect", "-cs", "64", "-sf", str(folder)])
    assert code == 0
    return folder


def statistics_copy(statistics_folder: Path, tmp_path: Path, edit=None) -> Path:
    """A copy of the collected statistics folder; ``edit(payload)`` changes the file's content and
    the checksum is recomputed, as a user who edits the file would do."""
    folder = tmp_path / "stats"
    shutil.copytree(statistics_folder, folder)
    if edit is not None:
        path = folder / "fmnist_resnet20.per_tensor.output.stats.pt"
        rewrite_statistics(path, path, edit)
    return folder


def first_layer_state(payload: dict) -> dict:
    return payload["layers"][sorted(payload["layers"])[0]]


STATISTICS_EDITS = {
    "nan": (lambda payload: first_layer_state(payload)["sum.max"].fill_(float("nan")), "NaN"),
    "inf": (lambda payload: first_layer_state(payload)["ext.min"].fill_(float("-inf")), "Inf"),
    "zero count": (lambda payload: first_layer_state(payload)["count"].fill_(0), "count"),
    "missing key": (lambda payload: first_layer_state(payload).pop("sum.b"), "sum.b"),
    "layer never reached": (lambda payload: payload["layers"].__setitem__(sorted(payload["layers"])[0], {}),
                            "has no statistics"),
}


@pytest.mark.parametrize("case", sorted(STATISTICS_EDITS))
def test_edited_statistics_with_a_valid_checksum_are_refused(run_cli, statistics_folder, tmp_path, case):
    edit, named = STATISTICS_EDITS[case]
    folder = statistics_copy(statistics_folder, tmp_path, edit)
    code, _, stderr = run_cli(*FAST, "--qtype", "int4", "-sm", "use", "-sf", folder)
    assert_one_error_line(code, stderr, named, "-sm collect")


@pytest.mark.parametrize("content", [b"just some text\n", bytes(range(256)) * 7, b""])
def test_garbage_statistics_and_weights_files(run_cli, statistics_folder, tmp_path, content):
    folder = statistics_copy(statistics_folder, tmp_path)
    (folder / "fmnist_resnet20.per_tensor.output.stats.pt").write_bytes(content)
    code, _, stderr = run_cli(*FAST, "--qtype", "int4", "-sm", "use", "-sf", folder)
    assert_one_error_line(code, stderr, "corrupt")
    weights = tmp_path / "weights.pt"
    weights.write_bytes(content)
    code, _, stderr = run_cli(*FAST, "--weights", weights)
    assert_one_error_line(code, stderr, str(weights))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(run_cli, tmp_path, value):
    from inference.models import create_model

    state = create_model("fmnist_resnet20").state_dict()
    name = next(key for key, tensor in state.items() if tensor.is_floating_point() and tensor.dim() == 4)
    state[name].view(-1)[3] = value
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    code, _, stderr = run_cli(*FAST, "--weights", path)
    assert_one_error_line(code, stderr, name)


def test_weights_naming_an_empty_folder_say_it_is_a_folder(run_cli, tmp_path):
    code, _, stderr = run_cli(*FAST, "--weights", tmp_path)
    assert_one_error_line(code, stderr, "folder")


def damaged_fmnist(tmp_path: Path, damage) -> Path:
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(FMNIST / name, folder / name)
    damage(folder / "t10k-images-idx3-ubyte.gz")
    return folder


def flip_bytes_in_stream(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    for offset in range(200, 260):
        raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def absurd_header(path: Path) -> None:
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + (2 ** 31).to_bytes(4, "big") * 3 + b"\0" * 100))


@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Fashion-MNIST Debian package")
@pytest.mark.parametrize("damage", [flip_bytes_in_stream, absurd_header])
def test_damaged_fashion_mnist_files(run_cli, tmp_path, damage):
    folder = damaged_fmnist(tmp_path, damage)
    code, _, stderr = run_cli(*FAST, "--data", folder)
    assert_one_error_line(code, stderr, "t10k-images-idx3-ubyte.gz")


def imagenet_folder_with(tmp_path: Path, bad_name: str | None, bad_content: bytes) -> Path:
    """``tmp_path/imagenet/val/<wnid>/`` with two good photos and, unless ``bad_name`` is None, one bad file."""
    from PIL import Image

    wnid_folder = tmp_path / "imagenet" / "val" / "n01440764"
    wnid_folder.mkdir(parents=True)
    for index in range(2):
        Image.new("RGB", (64, 48), (40 * index, 90, 160)).save(wnid_folder / f"good{index}.JPEG")
    if bad_name is not None:
        (wnid_folder / bad_name).write_bytes(bad_content)
    return tmp_path / "imagenet"


@pytest.mark.parametrize("bad_name, bad_content", [("empty.JPEG", b""), ("text.JPEG", b"not an image\n"),
                                                   ("truncated.JPEG", None)])
def test_undecodable_images_name_the_file(run_cli, tmp_path, bad_name, bad_content):
    if bad_content is None:
        from io import BytesIO

        from PIL import Image

        buffer = BytesIO()
        Image.new("RGB", (256, 256), (200, 10, 10)).save(buffer, "JPEG")
        bad_content = buffer.getvalue()[:400]
    data = imagenet_folder_with(tmp_path, bad_name, bad_content)
    flags = ("-a", "efficientnet_lite0", "--random-init", "-b", "3", "--data", data)
    code, _, stderr = run_cli(*flags)
    assert_one_error_line(code, stderr, bad_name, "--skip-bad-images")
    results = tmp_path / "results.json"
    code, stdout, stderr = run_cli(*flags, "--skip-bad-images", "--results-json", results)
    assert code == 0, stderr
    assert "2 images" in stdout
    recorded = json.loads(results.read_text())
    assert (recorded["skipped_images"], recorded["skipped_examples"]) == (1, [str(data / "val" / "n01440764" / bad_name)])


@pytest.mark.parametrize("flags, named", [
    (("-c", "2xstd"), "-c 2xstd"),
    (("--weight-clipping", "bogus"), "--weight-clipping bogus"),
    (("-c", "laplace"), "-c has no effect"),
    (("--keep-8bit", ""), "--keep-8bit ''"),
    (("--qtype", "int4", "--keep-8bit", "conv_1"), "--keep-8bit conv_1 matches no"),
    (("--qtype", "int4", "--keep-fp", "*"), "leaves every Conv2d / Linear layer in float"),
    (("--q_off", "-sm", "collect", "-baa", "-bata", "3"), "--q_off"),
    (("--qtype", "int4", "-cs", "100"), "-cs 100"),
    (("--qtype", "int4", "-pcq_a", "-baa", "-bata", "9"), "-bata 9"),
    (("-qw", "int4", "-c", "laplace"), "-c concerns activations"),
    (("--qtype", "int4", "-qw", "f32", "-bcw"), "-bcw/-vcw) needs quantized weights"),
    (("--qtype", "int4", "-qw", "f32", "-pcq_w"), "-pcq_w concerns weights"),
    (("--sweep-csv", "table.csv"), "--sweep-csv"),
])
def test_flags_with_no_effect_or_bad_values_are_named(run_cli, flags, named):
    code, _, stderr = run_cli(*FAST, *flags)
    assert_one_error_line(code, stderr, named)


def test_output_paths_of_the_wrong_kind_fail_before_any_work(run_cli, tmp_path):
    regular = tmp_path / "file.txt"
    regular.write_text("keep me\n")
    for flags, named in ((("--results-json", tmp_path), "is a folder"),
                         (("--qtype", "int4", "--report-csv", tmp_path), "is a folder"),
                         (("-ep", "--sweep-csv", tmp_path), "is a folder"),
                         (("--results-json", regular / "out.json"), f"{regular} is a file, not a folder"),
                         (("--qtype", "int4", "-sm", "collect", "-cs", "20", "-sf", regular), "is a file"),
                         (("--qtype", "int4", "-sm", "use", "-sf", regular), "is a file")):
        code, stdout, stderr = run_cli(*FAST, *flags)
        assert_one_error_line(code, stderr, named)
        assert " * Prec@1" not in stdout
    assert regular.read_text() == "keep me\n"


def test_unusable_tracking_stores_fail_fast_with_one_line(run_cli, tmp_path):
    import time

    regular = tmp_path / "file.txt"
    regular.write_text("x")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    not_a_db = tmp_path / "text.db"
    not_a_db.write_text("hello")
    for uri, named in (("http://127.0.0.1:9", "does not answer"), (f"sqlite:///{regular}/m.db", "is a file"),
                       (f"sqlite:///{corrupt}", "damaged"), (f"sqlite:///{not_a_db}", "not an sqlite database"),
                       ("sqlite://", "sqlite URI"), ("ftp://host/x", "not supported"),
                       ("relative/folder", "not a tracking URI")):
        start = time.perf_counter()
        code, _, stderr = run_cli(*FAST, "--mlflow-uri", uri)
        assert_one_error_line(code, stderr, named)
        assert time.perf_counter() - start < 30
    assert not_a_db.read_text() == "hello"


def test_results_json_is_strict_json_with_non_finite_values_flagged(tmp_path):
    from inference.output_files import write_json_atomically

    path = tmp_path / "results.json"
    write_json_atomically(path, {"top1": 12.5, "loss": float("nan"), "nested": {"kl": float("inf")}})
    payload = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"bare {name} in the JSON"))
    assert payload["loss"] is None and payload["nested"]["kl"] is None and payload["top1"] == 12.5
    assert payload["non_finite"]["keys"] == ["loss", "nested.kl"]


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    from pytorch_quantizer.formats.safe_io import write_atomically

    target = tmp_path / "stats.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".stats.pt.{dead.stdout.strip()}.abc.tmp"
    live = tmp_path / f".stats.pt.{os.getppid()}.abc.tmp"
    stale.write_bytes(b"half")
    live.write_bytes(b"other writer")
    write_atomically(target, lambda temporary: Path(temporary).write_text("complete"))
    assert target.read_text() == "complete" and not stale.exists() and live.exists()


def wait_for_running_run(uri: str, process: subprocess.Popen, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "RUNNING" in run_statuses(uri):
            time.sleep(1.0)
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    pytest.fail("the run never started")


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_signals_end_the_mlflow_run_as_killed_with_one_line(tmp_path, signal_name):
    import signal

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stats = tmp_path / "stats"
    command = [sys.executable, str(REPO_ROOT / "inference" / "inference_sim.py"), "-a", "fmnist_resnet20",
               "--qtype", "int4", "-sm", "collect", "-cs", "60000", "-b", "100", "-sf", str(stats),
               "--mlflow-uri", uri]
    # as in a terminal: a shell without job control starts background jobs with SIGINT ignored, and
    # a test suite started that way would pass the ignored Ctrl-C on to the run
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PTQ_KEEP_MALLOC": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_running_run(uri, process)
    process.send_signal(getattr(signal, signal_name))
    _, stderr = process.communicate(timeout=60)
    stderr = "\n".join(line for line in stderr.splitlines() if "%|" not in line)  # progress bars
    assert_one_error_line(process.returncode, stderr, "KILLED")
    assert run_statuses(uri) == ["KILLED"]
    assert not list(stats.glob("*")) if stats.exists() else True


def test_launcher_refuses_a_bad_flag_before_starting_processes():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "inference" / "launch.py"), "--nproc-per-node", "2",
                             *FAST, "-c", "2xstd"], capture_output=True, text=True, timeout=120)
    assert_one_error_line(result.returncode, result.stderr, "-c 2xstd")
    assert "ChildFailedError" not in result.stderr and "torch.distributed" not in result.stderr


def test_launcher_refuses_rounding_groups_that_do_not_divide_over_the_processes():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "inference" / "launch.py"), "--nproc-per-node", "2",
                             *FAST, "--qtype", "int4", "-qw", "int4", "--adaround", "--recon-groups", "3"],
                            capture_output=True, text=True, timeout=120)
    assert_one_error_line(result.returncode, result.stderr, "--recon-groups 3 is not a multiple of the 2 processes")


def test_undecodable_calibration_images_are_named_or_skipped_and_counted(run_cli, tmp_path):
    data = imagenet_folder_with(tmp_path, None, b"")
    calibration = imagenet_folder_with(tmp_path / "calib", "broken.png", bytes(range(256)))
    flags = ("-a", "efficientnet_lite0", "--random-init", "-b", "2", "--data", data, "--qtype", "int8", "-ac",
             "-cs", "3", "--calib-data", calibration)
    code, _, stderr = run_cli(*flags)
    assert_one_error_line(code, stderr, "broken.png", "--skip-bad-images")
    results = tmp_path / "results.json"
    code, _, stderr = run_cli(*flags, "--skip-bad-images", "--results-json", results)
    assert code == 0, stderr
    recorded = json.loads(results.read_text())
    assert (recorded["skipped_images"], recorded["skipped_calibration_images"]) == (0, 1)


def test_launcher_prints_the_line_of_the_process_that_failed(tmp_path):
    data = imagenet_folder_with(tmp_path, "zbad.JPEG", b"text, not a photo")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "inference" / "launch.py"), "--nproc-per-node", "2",
                             "-a", "efficientnet_lite0", "--random-init", "-b", "1", "--data", str(data)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PTQ_KEEP_MALLOC": "1"})
    # good0, good1, zbad in batches of 1: rank 0 decodes batches 0 and 2 (zbad) while rank 1 waits in a
    # collective, which fails when rank 0 stops: rank 0's line is the cause and the one printed
    assert_one_error_line(result.returncode, result.stderr, "error: image file", "zbad.JPEG")
    assert "ChildFailedError" not in result.stderr


def test_a_full_disk_during_a_write_keeps_the_previous_file_and_names_the_target(tmp_path):
    import errno

    from pytorch_quantizer.errors import QuantizationError
    from pytorch_quantizer.formats.safe_io import write_atomically

    target = tmp_path / "results.json"
    target.write_text("previous\n")

    def fill_the_disk(temporary: str) -> None:
        Path(temporary).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(QuantizationError, match=f"cannot write {target}: No space left on device"):
        write_atomically(target, fill_the_disk)
    assert target.read_text() == "previous\n" and sorted(tmp_path.iterdir()) == [target]


def test_failures_are_sorted_by_cause_not_caught_wholesale():
    import errno

    from mlflow.exceptions import MlflowException

    from inference.cli_errors import user_error_message
    from inference.errors import Terminated
    from inference.tracking import TrackingStoreError, store_errors

    with pytest.raises(TrackingStoreError, match="mlflow store sqlite:///x.db failed: the server went away"):
        with store_errors("sqlite:///x.db"):
            raise MlflowException("the server went away")
    assert "lower -b (now 64)" in user_error_message(MemoryError(), 64)
    assert "lower -b" in user_error_message(torch.OutOfMemoryError("CUDA out of memory"), 64)
    assert "the disk is full" in user_error_message(OSError(errno.ENOSPC, "No space left", "/data/x.pt"), 8)
    assert "terminated by SIGTERM" in user_error_message(Terminated("SIGTERM"))
    assert "Ctrl-C" in user_error_message(KeyboardInterrupt())
    for bug in (KeyError("b"), IndexError("pop from empty list"), ZeroDivisionError(), OSError(errno.EBADF, "bad fd"),
                RuntimeError("shape mismatch")):
        assert user_error_message(bug) is None
