"""The 500 development photos of ../shared/data/imagenet-sample (one per odd class, WordNet-id folders):
labels, --calib-holdout / --calib-data counts, and a short quantized run that records its calibration."""
import json
import shutil

import pytest

from inference.data import CalibrationChoice, prepare_data
from inference.image_files import foolbox_imagenet_folder, imagenet_wnids
from inference.models import REPO_ROOT, get_model_spec

SAMPLE = REPO_ROOT.parent / "shared" / "data" / "imagenet-sample"
LITE0 = get_model_spec("efficientnet_lite0")
pytestmark = pytest.mark.skipif(not (SAMPLE / "val").is_dir(),
                                reason=f"the development photos are not in {SAMPLE} (../shared beside the repository)")


def test_holdout_of_100_evaluates_400_photos_labelled_by_their_wnid():
    data = prepare_data(LITE0, SAMPLE, CalibrationChoice(holdout=100), 0)
    evaluated, held_out = data.evaluation, data.calibration_set().dataset
    assert (len(evaluated), len(held_out)) == (400, 100)
    assert sorted(evaluated.labels + held_out.labels) == list(range(1, 1000, 2))
    for path, label in zip(evaluated.files, evaluated.labels):
        assert path.parent.name == imagenet_wnids()[label] and path.stem.endswith(f"_{label:03d}")
    assert not set(evaluated.files) & set(held_out.files)


def test_calib_data_elsewhere_keeps_all_500_photos_evaluated(tmp_path):
    calibration = tmp_path / "calibration" / "photos"
    calibration.mkdir(parents=True)
    for photo in foolbox_imagenet_folder().glob("imagenet_*.jpg"):
        shutil.copy(photo, calibration)
    data = prepare_data(LITE0, SAMPLE, CalibrationChoice(folder=tmp_path / "calibration"), 0)
    assert len(data.evaluation) == 500 and len(data.calibration_set().dataset) == 20
    assert data.calibration_record()["calibration"] == f"the 20 image files under {tmp_path / 'calibration'} (--calib-data)"


def test_w8a8_on_held_out_calibration_agrees_with_fp32_and_records_the_source(run_cli, tmp_path):
    out = tmp_path / "result.json"
    code, stdout, stderr = run_cli("-a", "efficientnet_lite0", "--data", SAMPLE, "--calib-holdout", "476", "-cs", "48",
                                   "-b", "24", "-p", "0", "-pcq_w", "--qtype", "int8", "-qw", "int8", "-bcw",
                                   "-sm", "collect", "-sf", tmp_path, "--compare-fp32", "--results-json", out)
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["images"] == 24 and result["calibration_images"] == 48
    assert result["calibration"].startswith("the 476 images held out of the evaluated set")
    assert result["top1_agreement"] >= 90.0 and result["mean_kl"] < 0.05
