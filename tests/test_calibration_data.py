"""WordNet-id folders, --calib-data, --calib-holdout, --calib-fold, and the fidelity figures of --compare-fp32."""
import json
from pathlib import Path

import mlflow
import pytest
import torch
from PIL import Image
from scipy.special import rel_entr, softmax

from inference.data import CalibrationChoice, LoaderOptions, fold_split, prepare_data
from inference.fashion_mnist import InMemoryImages
from inference.errors import UserError
from pytorch_quantizer.api.evaluation import FidelityCounter, evaluate
from inference.image_files import UNLABELLED, imagenet_wnids
from inference.models import get_model_spec

RESNET18 = get_model_spec("resnet18")
FMNIST = get_model_spec("fmnist_resnet20")


def write_images(folder: Path, count: int, prefix: str = "img") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (8, 8), (index % 256, 0, 0)).save(folder / f"{prefix}_{index}.jpg")


@pytest.fixture
def wnid_val(tmp_path):
    """data/val with three classes of ImageNet-1k (indices 1, 5 and 999), two images each."""
    for label in (999, 1, 5):
        write_images(tmp_path / "data" / "val" / imagenet_wnids()[label], 2)
    return tmp_path / "data"


def test_wnid_folders_are_labelled_by_the_imagenet_order_whatever_the_subset(wnid_val):
    data = prepare_data(RESNET18, wnid_val, CalibrationChoice(), 0)
    assert data.evaluation.labels == [1, 1, 5, 5, 999, 999]
    assert [path.parent.name for path in data.evaluation.files[::2]] == [imagenet_wnids()[k] for k in (1, 5, 999)]


def test_shipped_wnid_list_is_the_standard_order():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    assert (wnids[0], wnids[1], wnids[999]) == ("n01440764", "n01443537", "n15075141")


def test_holdout_splits_the_evaluated_set_seeded_and_disjoint():
    first = prepare_data(FMNIST, None, CalibrationChoice(holdout=100), seed=3)
    again = prepare_data(FMNIST, None, CalibrationChoice(holdout=100), seed=3)
    other = prepare_data(FMNIST, None, CalibrationChoice(holdout=100), seed=4)
    evaluated, held_out = first.evaluation, first.calibration_set().dataset
    assert len(evaluated) == 9_900 and len(held_out) == 100
    assert torch.equal(held_out.images, again.calibration_set().dataset.images)
    assert not torch.equal(held_out.images, other.calibration_set().dataset.images)
    everything = torch.cat([evaluated.images, held_out.images]).flatten(1)
    assert len(torch.unique(everything, dim=0)) == len(torch.unique(prepare_data(
        FMNIST, None, CalibrationChoice(), 0).evaluation.images.flatten(1), dim=0))
    calibration = first.calibration_loader(LoaderOptions(batch_size=64))
    assert calibration.images == 100 and not calibration.overlaps_eval
    assert calibration.source == "the 100 images held out of the evaluated set /usr/share/datasets/fashion-mnist " \
                                 "(--calib-holdout, seed 3)"
    assert first.calibration_record() == {"calibration": calibration.source, "calibration_images": 100,
                                          "calibration_overlaps_eval": False}


def test_folds_evaluate_every_image_once_each_calibrated_on_the_others():
    everything = prepare_data(FMNIST, None, CalibrationChoice(), 0).evaluation.images.flatten(1)
    folds = [prepare_data(FMNIST, None, CalibrationChoice(images=64, fold=(part, 3)), seed=3) for part in (1, 2, 3)]
    assert [len(fold.evaluation) for fold in folds] == [3333, 3333, 3334]
    for fold in folds:
        evaluated, calibration = fold.evaluation.images.flatten(1), fold.calibration_set().dataset.images.flatten(1)
        assert len(evaluated) + len(calibration) == 10_000
        assert torch.equal(torch.cat([evaluated, calibration]).unique(dim=0), everything.unique(dim=0))
    pooled = torch.cat([fold.evaluation.images.flatten(1) for fold in folds])
    assert len(pooled) == 10_000 and torch.equal(pooled.unique(dim=0), everything.unique(dim=0))
    assert folds[1].calibration_set().source == ("the 6667 images of the evaluated set /usr/share/datasets/fashion-mnist "
                                                 "outside part 2 of 3 (--calib-fold, seed 3)")
    assert folds[1].calibration_loader(LoaderOptions(batch_size=32)).images == 64


def test_first_fold_of_k_is_the_holdout_of_n_over_k_with_the_same_seed():
    first = prepare_data(FMNIST, None, CalibrationChoice(fold=(1, 5)), seed=0)
    holdout = prepare_data(FMNIST, None, CalibrationChoice(holdout=2000), seed=0)
    assert torch.equal(first.evaluation.images, holdout.calibration_set().dataset.images)
    assert torch.equal(first.calibration_set().dataset.images, holdout.evaluation.images)


@pytest.mark.parametrize("fold", [(0, 5), (6, 5), (1, 1), (0, 0)])
def test_fold_ranges_are_refused(fold):
    with pytest.raises(UserError, match=f"--calib-fold {fold[0]}/{fold[1]}: needs 2 or more parts K and a part I from 1 to K"):
        CalibrationChoice(fold=fold)


def test_more_folds_than_images_and_two_choices_are_refused():
    three = InMemoryImages(torch.zeros(3, 2, 2, dtype=torch.uint8), torch.arange(3))
    with pytest.raises(UserError, match="the evaluated set has 3 images, fewer than the 4 parts; use at most 3 parts"):
        fold_split(three, 1, 4, 0)
    with pytest.raises(UserError, match="--calib-holdout and --calib-fold both choose the calibration images"):
        CalibrationChoice(holdout=5, fold=(1, 2))
    with pytest.raises(UserError, match="--calib-data, --calib-holdout and --calib-fold all choose"):
        CalibrationChoice(folder=Path("."), holdout=5, fold=(1, 2))


def test_calib_data_takes_every_image_under_the_folder_unlabelled(wnid_val, tmp_path):
    folder = tmp_path / "calib"
    write_images(folder, 3)
    write_images(folder / "deeper" / "still", 2, prefix="nested")
    (folder / "notes.txt").write_text("not an image")
    data = prepare_data(RESNET18, wnid_val, CalibrationChoice(folder=folder, images=4), 0)
    chosen = data.calibration_set()
    assert len(chosen.dataset) == 5 and set(chosen.dataset.labels) == {UNLABELLED}
    assert len(data.evaluation) == 6 and not chosen.overlaps_eval
    calibration = data.calibration_loader(LoaderOptions(batch_size=2, workers=0))
    assert calibration.images == 4 and sum(len(labels) for _, labels in calibration.loader) == 4
    images, _ = next(iter(calibration.loader))
    assert images.shape == (2, 3, 224, 224)


@pytest.mark.parametrize("case, message", [
    ("missing", "folder does not exist"),
    ("empty", "no image files"),
    ("file", "not a folder"),
    ("val", "is the evaluated folder"),
    ("data", "overlaps the evaluated folder"),
    ("inside-val", "overlaps the evaluated folder"),
])
def test_calib_data_refusals(wnid_val, tmp_path, case, message):
    folder = {"missing": tmp_path / "absent", "empty": tmp_path / "empty", "file": tmp_path / "file.jpg",
              "val": wnid_val / "val", "data": wnid_val,
              "inside-val": wnid_val / "val" / imagenet_wnids()[5]}[case]
    if case == "empty":
        folder.mkdir()
    if case == "file":
        folder.write_bytes(b"x")
    with pytest.raises(UserError, match=message):
        prepare_data(RESNET18, wnid_val, CalibrationChoice(folder=folder), 0)


def test_holdout_and_choice_refusals():
    with pytest.raises(UserError, match="evaluated set has 10000 images, so at most 9999"):
        prepare_data(FMNIST, None, CalibrationChoice(holdout=10_000), 0)
    with pytest.raises(UserError, match="pass one of them"):
        CalibrationChoice(folder=Path("."), holdout=3)
    with pytest.raises(UserError, match="--calib-data takes image files for ImageNet models"):
        prepare_data(FMNIST, None, CalibrationChoice(folder=Path(".")), 0)


def test_fidelity_counts_agreement_and_kl_like_scipy():
    generator = torch.Generator().manual_seed(0)
    reference, logits = torch.randn(50, 10, generator=generator), torch.randn(50, 10, generator=generator)
    logits[:20] = reference[:20] + 0.01  # same top-1 class for the first 20 images at least
    labels = torch.randint(0, 10, (50,), generator=generator)
    counter = FidelityCounter()
    counter.add(logits[:30], reference[:30], labels[:30])
    counter.add(logits[30:], reference[30:], labels[30:])
    fidelity = counter.result()
    agreeing = int((logits.argmax(1) == reference.argmax(1)).sum())
    assert fidelity.top1_agreement == pytest.approx(100 * agreeing / 50) and agreeing >= 20
    expected_kl = rel_entr(softmax(reference.double().numpy(), axis=1), softmax(logits.double().numpy(), axis=1)).sum(1)
    assert fidelity.mean_kl == pytest.approx(expected_kl.mean(), rel=1e-9)
    assert fidelity.reference.images == 50
    difference = (logits.double() - reference.double()).abs()
    assert fidelity.max_abs_logit_diff == pytest.approx(float(difference.max()), rel=1e-12)
    assert fidelity.mean_abs_logit_diff == pytest.approx(float(difference.mean()), rel=1e-12)
    assert counter.result(max_over_processes=lambda largest: largest * 0 + 7.0).max_abs_logit_diff == 7.0
    flipped = [(row[row.argmax()] - row[top]).item() for row, top in zip(reference, logits.argmax(1))
               if top != row.argmax()]
    assert fidelity.max_flipped_margin == pytest.approx(max(flipped), rel=1e-6) and max(flipped) > 0


def test_the_flipped_margin_is_the_references_gap_between_the_two_classes():
    reference = torch.tensor([[3.0, 2.9, 0.0], [5.0, 0.0, 1.0], [0.0, 1.0, 4.0]])
    logits = torch.tensor([[2.0, 2.5, 0.0], [5.0, 0.0, 1.0], [0.0, 1.0, 4.0]])
    counter = FidelityCounter()
    counter.add(logits, reference, torch.zeros(3, dtype=torch.long))
    assert counter.result().max_flipped_margin == pytest.approx(0.1, rel=1e-6)
    agreeing = FidelityCounter()
    agreeing.add(reference, reference, torch.zeros(3, dtype=torch.long))
    assert agreeing.result().max_flipped_margin == 0.0


def test_a_model_against_itself_agrees_fully_with_zero_kl():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    batches = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))) for _ in range(3)]
    result, fidelity = evaluate(model, batches, torch.device("cpu"), reference=model)
    assert fidelity.top1_agreement == 100.0 and fidelity.mean_kl == 0.0
    assert (fidelity.reference.top1, fidelity.reference.loss) == (result.top1, result.loss)


def assert_refused_without_run(run_cli, tmp_path, argv, message):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    code, stdout, stderr = run_cli(*argv, "--mlflow-uri", uri, "-mlexp", "refused")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr and "Traceback" not in stderr and "Prec@1" not in stdout
    mlflow.set_tracking_uri(uri)
    assert mlflow.get_experiment_by_name("refused") is None


@pytest.mark.parametrize("argv, message", [
    (["--calib-holdout", "0"], "must be a positive integer, got 0"),
    (["--calib-holdout", "-5"], "must be a positive integer, got -5"),
    (["--calib-holdout", "10000"], "the evaluated set has 10000 images"),
    (["--calib-holdout", "100000"], "the evaluated set has 10000 images"),
    (["--calib-holdout", "10", "--calib-data", "."], "pass one of them"),
    (["--calib-fold", "2"], "argument --calib-fold: must be part/parts such as 1/5, got '2'"),
    (["--calib-fold", "a/5"], "must be part/parts such as 1/5, got 'a/5'"),
    (["--calib-fold", "6/5"], "--calib-fold 6/5: needs 2 or more parts K and a part I from 1 to K"),
    (["--calib-fold", "1/5", "--calib-holdout", "10"], "--calib-holdout and --calib-fold both choose"),
])
def test_cli_refuses_bad_holdouts(run_cli, tmp_path, argv, message):
    assert_refused_without_run(run_cli, tmp_path, ["-a", "fmnist_resnet20", *argv], message)


@pytest.mark.parametrize("case, message", [
    ("missing", "folder does not exist"),
    ("empty", "no image files"),
    ("evaluated", "is the evaluated folder"),
    ("unknown-wnid", "class folder n00000001 is not an ImageNet-1k WordNet id"),
])
def test_cli_refuses_bad_calibration_folders_and_unknown_wnids(run_cli, tmp_path, wnid_val, case, message):
    calibration = {"missing": tmp_path / "absent", "empty": tmp_path / "empty", "evaluated": wnid_val / "val",
                   "unknown-wnid": tmp_path / "calib"}[case]
    if case == "empty":
        calibration.mkdir()
    if case == "unknown-wnid":
        write_images(calibration, 2)
        write_images(wnid_val / "val" / "n00000001", 1)
    argv = ["-a", "resnet18", "--random-init", "--data", wnid_val, "--calib-data", calibration,
            "--qtype", "int8", "-sm", "collect", "-sf", tmp_path / "stats"]
    assert_refused_without_run(run_cli, tmp_path, argv, message)
    assert not (tmp_path / "stats").exists()


def test_fold_run_evaluates_its_part_and_records_the_calibration(run_cli, tmp_path):
    out = tmp_path / "result.json"
    code, _, stderr = run_cli("-a", "fmnist_resnet20", "-p", "0", "-b", "500", "--calib-fold", "2/4", "-cs", "100",
                              "--qtype", "int8", "-sm", "collect", "-sf", tmp_path, "--results-json", out,
                              "--mlflow-uri", f"sqlite:///{tmp_path / 'store.db'}")
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["images"] == 2500 and result["calibration_images"] == 100
    assert "outside part 2 of 4 (--calib-fold, seed 0)" in result["calibration"]
    assert result["calibration_overlaps_eval"] is False


def test_fmnist_holdout_calibrates_and_compare_fp32_reports_fidelity(run_cli, tmp_path):
    out = tmp_path / "result.json"
    code, stdout, stderr = run_cli("-a", "fmnist_resnet20", "-p", "0", "-b", "100", "-ss", "300",
                                   "--calib-holdout", "200", "--qtype", "int4", "-qw", "int4", "-pcq_w",
                                   "-sm", "collect", "-sf", tmp_path, "--compare-fp32", "--results-json", out,
                                   "--mlflow-uri", f"sqlite:///{tmp_path / 'store.db'}", "-mlexp", "holdout")
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["images"] == 300 and result["calibration_images"] == 200
    assert result["calibration"].startswith("the 200 images held out") and result["calibration_overlaps_eval"] is False
    assert 0 < result["top1_agreement"] <= 100 and result["mean_kl"] > 0
    assert result["drop"] == pytest.approx(result["fp32_top1"] - result["top1"])
    assert "top-1 agreement with FP32" in stdout and "calibration: 200 images from the 200 images held out" in stdout
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'store.db'}")
    run = mlflow.search_runs(experiment_names=["holdout"]).iloc[0]
    assert run["metrics.top1_agreement"] == result["top1_agreement"] and run["metrics.mean_kl"] == result["mean_kl"]
    assert run["params.calibration.source"] == result["calibration"] and run["params.calibration.images"] == "200"
