"""The bad inputs that still gave a wrong answer, a traceback or a misleading line (issue 25): each
now ends in one stderr line naming the real problem and exit 2 (the oversized photo: one warning
line and a normal result), and the per-layer report measures the error where the tensor is."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from test_trust import FAST, one_error_line

PHOTOS = ("-a", "efficientnet_lite0", "-b", "4", "-j", "1")


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A statistics folder with a learned rounding of fmnist_resnet20 and a QAT file of apot2."""
    from inference import inference_sim

    folder = tmp_path_factory.mktemp("learned")
    assert inference_sim.main([*FAST, "--qtype", "int4", "-qw", "int4", "--adaround", "--recon-iters", "4",
                               "--recon-batch", "16", "-sm", "collect", "-cs", "32", "-sf", str(folder)]) == 0
    assert inference_sim.main([*FAST, "--qtype", "apot2", "-qw", "apot2", "-cs", "64", "--qat-epochs", "1",
                               "--qat-batch-size", "32", "--save-qat", str(folder / "qat.pt")]) == 0
    return folder


def edited_copy(source, target, edit):
    payload = torch.load(source, weights_only=True)
    edit(payload)
    torch.save(payload, target)
    return target


@pytest.mark.parametrize("value", [float("nan"), -7.0, 0.5])
def test_a_rounding_with_values_other_than_0_and_1_is_refused(run_cli, learned, tmp_path, value):
    folder = tmp_path / "stats"
    shutil.copytree(learned, folder)
    rounding = folder / "fmnist_resnet20.output.rounding.pt"

    def edit(payload):
        layer = sorted(payload["layers"])[1]
        payload["layers"][layer] = payload["layers"][layer].float()
        payload["layers"][layer].view(-1)[0] = value

    edited_copy(rounding, rounding, edit)
    code, _, stderr = run_cli(*FAST, "--qtype", "int4", "-qw", "int4", "--adaround", "-sm", "use", "-sf", folder)
    one_error_line(code, stderr, str(rounding), "holds values other than 0 and 1")


@pytest.mark.parametrize("edit, message", [
    (lambda plan: plan["scale"].fill_(float("nan")), "scale holds NaN/Inf values"),
    (lambda plan: plan.__setitem__("thresholds", torch.linspace(0, 1, 1000)), "has 1000 thresholds for"),
    (lambda plan: plan.__setitem__("thresholds", plan["thresholds"].flip(0)), "thresholds are not in increasing order"),
])
def test_a_qat_file_with_unusable_activation_plans_is_refused(run_cli, learned, tmp_path, edit, message):
    qat = edited_copy(learned / "qat.pt", tmp_path / "qat.pt",
                      lambda payload: edit(payload["activation_plans"][sorted(payload["activation_plans"])[1]]))
    code, _, stderr = run_cli(*FAST, "--qtype", "apot2", "-qw", "apot2", "--load-qat", qat)
    one_error_line(code, stderr, str(qat), message)


@pytest.fixture
def undecodable(tmp_path):
    """An ImageNet-style folder and a calibration folder whose every image file is not an image."""
    for folder in (tmp_path / "data" / "val" / "n01440764", tmp_path / "calibration"):
        folder.mkdir(parents=True)
        for index in range(3):
            (folder / f"photo{index}.jpg").write_text("not an image")
    return tmp_path


def test_skipping_every_evaluated_image_is_one_line(run_cli, undecodable):
    code, _, stderr = run_cli(*PHOTOS, "--data", undecodable / "data", "--skip-bad-images")
    one_error_line(code, stderr, "none of the evaluated image files could be decoded (3 skipped", "check --data")


def test_skipping_every_calibration_image_names_the_calibration_files(run_cli, undecodable):
    from test_imagenet_sample import SAMPLE

    if not SAMPLE.is_dir():
        pytest.skip("the development photos are not here")
    code, _, stderr = run_cli(*PHOTOS, "--data", SAMPLE, "-ss", "4", "--calib-data", undecodable / "calibration",
                              "--skip-bad-images", "--qtype", "int8", "-ac", "-cs", "3")
    one_error_line(code, stderr, "none of the calibration image files could be decoded (3 skipped",
                   "check --calib-data")


def test_a_100_megapixel_photo_is_one_warning_and_a_normal_result(tmp_path):
    folder = tmp_path / "val" / "n01440764"
    folder.mkdir(parents=True)
    Image.new("RGB", (10000, 10000), (120, 80, 40)).save(folder / "large.jpg", quality=50)
    results = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "inference.inference_sim", *PHOTOS, "--data", str(tmp_path),
                           "--results-json", str(results)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line] == [
        f"WARNING: image file {folder / 'large.jpg'} has 10000 x 10000 pixels (100 megapixels), more than PIL's limit "
        "of 89 megapixels for untrusted files; decoded anyway (it is resized to the model's input)"]
    assert json.loads(results.read_text())["images"] == 1


def test_a_statistics_path_that_is_a_folder_is_named_before_any_work(run_cli, tmp_path):
    (tmp_path / "fmnist_resnet20.per_tensor.output.stats.pt").mkdir()
    code, _, stderr = run_cli(*FAST, "--qtype", "int8", "-sm", "use", "-sf", tmp_path)
    one_error_line(code, stderr, "fmnist_resnet20.per_tensor.output.stats.pt is a folder, not a file")
    code, _, stderr = run_cli(*FAST, "--qtype", "int8", "-sm", "collect", "-sf", tmp_path)
    one_error_line(code, stderr, "-sm collect would write", "which is a folder, not a file")


@pytest.mark.parametrize("role", ["weights", "statistics", "data"])
def test_named_pipes_are_named_as_such(run_cli, tmp_path, role):
    pipe = tmp_path / {"weights": "weights.pt", "statistics": "fmnist_resnet20.per_tensor.output.stats.pt",
                       "data": "t10k-images-idx3-ubyte.gz"}[role]
    os.mkfifo(pipe)
    if role == "data":
        for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            (tmp_path / name).symlink_to(f"/usr/share/datasets/fashion-mnist/{name}")
    argv = {"weights": ("--weights", pipe), "statistics": ("--qtype", "int8", "-sm", "use", "-sf", tmp_path),
            "data": ("--data", tmp_path)}[role]
    code, _, stderr = run_cli(*FAST, *argv)
    one_error_line(code, stderr, str(pipe), "is a named pipe, not a regular file")


@pytest.mark.parametrize("uri, message", [
    ("sqlite//mlflow.db", "is not a tracking URI (no scheme"),
    ("http:/localhost:5000", "names no server host"),
])
def test_a_malformed_tracking_uri_is_called_so(run_cli, uri, message):
    code, _, stderr = run_cli(*FAST, "--mlflow-uri", uri)
    one_error_line(code, stderr, message)


def test_the_error_that_stops_a_run_comes_without_warnings_about_it(run_cli):
    code, _, stderr = run_cli(*PHOTOS, "-ss", "4", "--calib-data", "/nonexistent")
    one_error_line(code, stderr, "--calib-data /nonexistent: folder does not exist")
    assert "WARNING" not in stderr


def test_the_layer_report_measures_a_fused_relu_after_the_relu(run_cli, tmp_path):
    report = tmp_path / "layers.csv"
    code, _, stderr = run_cli(*FAST, "--qtype", "int8", "-qw", "int8", "--report-csv", report)
    assert code == 0, stderr
    rows = {(row["layer"], row["tensor"]): float(row["sqnr_db"]) for row in csv.DictReader(report.open())}
    assert rows[("conv1", "activation")] > 30   # 1.15 dB when measured against the pre-ReLU output
