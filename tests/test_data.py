"""Data loaders: counts, labels, order, calibration/evaluation disjointness, clear errors."""
import gzip
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from inference import fashion_mnist
from inference.data import CalibrationChoice, LoaderOptions, evaluation_loader, prepare_data
from inference.errors import UserError
from inference.image_files import imagenet_wnids, sample_imagenet_photos
from inference.models import get_model_spec


def loader_labels(loader):
    return torch.cat([labels for _, labels in loader]).tolist()


def calibration_data(spec, data_dir, images, options):
    """The default calibration loader of ``images`` images (no --calib-data / --calib-holdout)."""
    return prepare_data(spec, data_dir, CalibrationChoice(images=images), options.seed).calibration_loader(options)


def test_fashion_mnist_test_split_has_10000_balanced_images():
    loader = evaluation_loader(get_model_spec("fmnist_resnet20"), None, LoaderOptions(batch_size=1000))
    labels = loader_labels(loader)
    assert len(labels) == 10_000
    assert Counter(labels) == {label: 1000 for label in range(10)}
    images, _ = next(iter(loader))
    assert images.shape == (1000, 1, 28, 28)
    assert abs(images.mean().item()) < 0.1 and abs(images.std().item() - 1.0) < 0.1


def test_fashion_mnist_calibration_comes_from_the_60000_training_images():
    spec = get_model_spec("fmnist_resnet20")
    calibration = calibration_data(spec, None, 512, LoaderOptions(batch_size=256, seed=3))
    assert not calibration.overlaps_eval
    assert len(calibration.loader.dataset) == 60_000
    train_images, _ = fashion_mnist.load_split(fashion_mnist.DEFAULT_DIR, "train")
    indices = [index for batch in calibration.loader.sampler for index in batch]
    assert len(indices) == 512
    first, _ = next(iter(calibration.loader))
    expected = (train_images[indices[:256]].float() / 255 - fashion_mnist.MEAN) / fashion_mnist.STD
    assert torch.allclose(first[:, 0], expected)


def test_order_is_deterministic_and_shuffle_is_seeded():
    spec = get_model_spec("fmnist_resnet20")
    plain = loader_labels(evaluation_loader(spec, None, LoaderOptions(batch_size=100, subset=300)))
    first = loader_labels(evaluation_loader(spec, None, LoaderOptions(batch_size=100, subset=300, shuffle=True, seed=1)))
    again = loader_labels(evaluation_loader(spec, None, LoaderOptions(batch_size=100, subset=300, shuffle=True, seed=1)))
    other = loader_labels(evaluation_loader(spec, None, LoaderOptions(batch_size=100, subset=300, shuffle=True, seed=2)))
    _, test_labels = fashion_mnist.load_split(fashion_mnist.DEFAULT_DIR, "test")
    assert plain == test_labels[:300].tolist()
    assert first == again and first != other and len(first) == 300


def test_truncated_idx_file_is_refused(tmp_path):
    source = fashion_mnist.DEFAULT_DIR / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(source.read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:5000]))
    with pytest.raises(UserError, match="truncated idx file"):
        fashion_mnist.read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz")


def test_embedded_imagenet_photos_have_labels_from_file_names():
    dataset = sample_imagenet_photos(lambda image: image)
    assert len(dataset) == 20
    assert dataset.files[0].name == "imagenet_00_243.jpg" and dataset.labels[0] == 243
    assert all(int(path.stem.split("_")[-1]) == label for path, label in zip(dataset.files, dataset.labels))
    image, _ = dataset[0]
    assert image.mode == "RGB"


def test_embedded_photos_are_preprocessed_to_the_model_crop():
    loader = evaluation_loader(get_model_spec("efficientnet_lite1"), None, LoaderOptions(batch_size=8, workers=0))
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 240, 240)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert len(loader_labels(loader)) == 20


def make_image_folder(root: Path, classes: int, per_class: int, colour: int, wnid_names: bool = True) -> None:
    """``classes`` class folders named by the first WordNet ids (or c0000, c0001, ...) of tiny images."""
    for index in range(classes):
        folder = root / (imagenet_wnids()[index] if wnid_names else f"c{index:04d}")
        folder.mkdir(parents=True)
        for image_index in range(per_class):
            Image.new("RGB", (8, 8), (colour, image_index, index % 256)).save(folder / f"img_{image_index}.png")


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    make_image_folder(root / "val", 1000, 1, colour=0, wnid_names=False)
    make_image_folder(root / "train", 1000, 1, colour=255)
    return root


def test_imagenet_folder_calibrates_on_train_disjoint_from_val(tiny_imagenet):
    spec = get_model_spec("resnet18")
    options = LoaderOptions(batch_size=50, workers=0)
    evaluation = evaluation_loader(spec, tiny_imagenet, options)
    calibration = calibration_data(spec, tiny_imagenet, 100, options)
    assert loader_labels(evaluation) == list(range(1000))
    assert not calibration.overlaps_eval
    eval_files = {evaluation.dataset.files[index] for batch in evaluation.batch_sampler for index in batch}
    calibration_files = {calibration.loader.dataset.files[index]
                         for batch in calibration.loader.batch_sampler for index in batch}
    assert len(calibration_files) == 100 and not eval_files & calibration_files
    assert all(path.parent.parent.name == "train" for path in calibration_files)
    assert calibration.images == 100


def test_imagenet_without_train_split_falls_back_and_says_it_overlaps(tmp_path):
    calibration = calibration_data(get_model_spec("efficientnet_lite0"), None, 10, LoaderOptions(workers=0))
    assert calibration.overlaps_eval and "no train/" in calibration.source


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("no-val", "val does not exist"),
    ("empty-val", "no class subfolders"),
    ("no-images", "holds no images"),
    ("few-classes", "has 3 class folders but the model has 1000 classes"),
    ("unknown-wnid", "class folder n99999999 is not an ImageNet-1k WordNet id"),
    ("mixed-names", "mixes WordNet-id class folders with 'c0000'"),
])
def test_bad_imagenet_folders_fail_clearly(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "empty-val":
        (root / "val").mkdir()
    if layout == "no-images":
        (root / "val" / "n0").mkdir(parents=True)
        (root / "val" / "n0" / "readme.txt").write_text("no image")
    if layout == "few-classes":
        make_image_folder(root / "val", 3, 1, colour=0, wnid_names=False)
    if layout == "unknown-wnid":
        make_image_folder(root / "val", 2, 1, colour=0)
        (root / "val" / "n01440764").rename(root / "val" / "n99999999")
    if layout == "mixed-names":
        make_image_folder(root / "val", 2, 1, colour=0)
        make_image_folder(root / "val", 1, 1, colour=0, wnid_names=False)
    with pytest.raises(UserError, match=message):
        evaluation_loader(get_model_spec("resnet18"), root, LoaderOptions(workers=0))
