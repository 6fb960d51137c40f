"""Bad input data gets one line naming the file and the fix: undecodable image files (or, with
--skip-bad-images, a count of the skipped ones), corrupt Fashion-MNIST idx files, empty class folders."""
import gzip
import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference import fashion_mnist
from inference.data import CalibrationChoice, LoaderOptions, make_loader, prepare_data
from inference.errors import UserError
from inference.image_files import class_folder_images, imagenet_wnids
from inference.models import get_model_spec

SPEC = get_model_spec("efficientnet_lite0")


def jpeg_bytes(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


BAD_IMAGES = {  # kind: (file name, content, reason in the message)
    "empty": ("bad.JPEG", b"", "empty file, 0 bytes"),
    "truncated-jpeg": ("bad.JPEG", jpeg_bytes()[:-300], "image file is truncated"),
    "text": ("bad.JPEG", b"this is a text file, not a photo\n", "not an image format PIL recognises"),
    "random-png": ("bad.png", np.random.default_rng(1).bytes(600), "not an image format PIL recognises"),
}


def write_good(folder: Path, count: int, prefix: str = "good") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}_{index}.png" for index in range(count)]
    for index, path in enumerate(paths):
        Image.new("RGB", (8, 8), (index * 40, 10, 200)).save(path)
    return paths


def val_with_bad_image(root: Path, kind: str) -> Path:
    """root/val with 3 good images of class 0, then class 1: 1 good image, the bad one, 1 good image."""
    write_good(root / "val" / imagenet_wnids()[0], 3)
    second = root / "val" / imagenet_wnids()[1]
    write_good(second, 1, prefix="a")
    name, content, _ = BAD_IMAGES[kind]
    bad = second / name
    bad.write_bytes(content)
    write_good(second, 1, prefix="z")
    return bad


@pytest.mark.parametrize("threads", [0, 2])
@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_image_stops_the_run_with_one_line_naming_it(tmp_path, kind, threads):
    bad = val_with_bad_image(tmp_path, kind)
    data = prepare_data(SPEC, tmp_path, CalibrationChoice(), 0)
    with pytest.raises(UserError) as refused:
        list(make_loader(data.evaluation, LoaderOptions(batch_size=2, workers=threads)))
    message = str(refused.value)
    assert message.startswith(f"image file {bad} cannot be decoded as an image ({BAD_IMAGES[kind][2]}")
    assert message.endswith("); remove or replace it, or pass --skip-bad-images to skip such files")
    assert "\n" not in message


@pytest.mark.parametrize("threads", [0, 2])
def test_skip_mode_drops_bad_images_and_lists_them(tmp_path, threads):
    """Batches of 2: [good, good], [good, bad], [bad, bad] (left out whole), [good]."""
    write_good(tmp_path / "val" / imagenet_wnids()[0], 3)
    second = tmp_path / "val" / imagenet_wnids()[1]
    second.mkdir()
    bad = [second / f"b_{index}.JPEG" for index in range(3)]
    for path, content in zip(bad, (b"", jpeg_bytes()[:-300], b"text")):
        path.write_bytes(content)
    write_good(second, 1, prefix="c")
    data = prepare_data(SPEC, tmp_path, CalibrationChoice(), 0)
    loader = make_loader(data.evaluation, LoaderOptions(batch_size=2, workers=threads, skip_bad_images=True))
    batches = list(loader)
    assert [labels.tolist() for _, labels in batches] == [[0, 0], [0], [1]]
    assert loader.skipped == [str(path) for path in bad]
    assert batches[0][0].shape == (2, 3, 224, 224)
    list(loader)
    assert len(loader.skipped) == 3, "each pass lists its own skipped files"


def test_skip_mode_keeps_the_images_of_the_strict_mode(tmp_path):
    write_good(tmp_path / "val" / imagenet_wnids()[0], 5)
    data = prepare_data(SPEC, tmp_path, CalibrationChoice(), 0)
    strict = list(make_loader(data.evaluation, LoaderOptions(batch_size=2, workers=2)))
    skipping = make_loader(data.evaluation, LoaderOptions(batch_size=2, workers=2, skip_bad_images=True))
    for (images, labels), (expected_images, expected_labels) in zip(skipping, strict, strict=True):
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    assert skipping.skipped == []


def test_calibration_loader_skips_bad_images_too(tmp_path):
    write_good(tmp_path / "data" / "val" / imagenet_wnids()[0], 2)
    calibration_folder = tmp_path / "calib"
    write_good(calibration_folder, 3)
    bad = calibration_folder / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data = prepare_data(SPEC, tmp_path / "data", CalibrationChoice(folder=calibration_folder, images=10), 0)
    strict = data.calibration_loader(LoaderOptions(batch_size=2, workers=0))
    with pytest.raises(UserError, match=f"image file {bad} cannot be decoded"):
        list(strict.loader)
    calibration = data.calibration_loader(LoaderOptions(batch_size=2, workers=0, skip_bad_images=True))
    assert sum(len(labels) for _, labels in calibration.loader) == 3
    assert calibration.loader.skipped == [str(bad)]


def test_an_empty_class_folder_is_named_in_a_warning(tmp_path, caplog):
    write_good(tmp_path / "val" / imagenet_wnids()[0], 2)
    empty = tmp_path / "val" / imagenet_wnids()[7]
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    with caplog.at_level(logging.WARNING, logger="inference.image_files"):
        data = prepare_data(SPEC, tmp_path, CalibrationChoice(), 0)
    assert len(data.evaluation) == 2
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [(f"class folder {empty} holds no images, so its class is left out; "
                         "add its images or remove the folder")]


def test_empty_sorted_name_class_folders_are_counted_and_not_to_be_removed(tmp_path, caplog):
    write_good(tmp_path / "cats", 1)
    for name in ("dogs", "eels"):
        (tmp_path / name).mkdir()
    with caplog.at_level(logging.WARNING, logger="inference.image_files"):
        images = class_folder_images(tmp_path, 3, transform=None)
    assert images.labels == [0]
    assert [record.getMessage() for record in caplog.records] == [
        (f"class folder {tmp_path / 'dogs'} holds no images (and 1 more class folders), so its class is left out; "
         "add its images")]


def test_all_class_folders_empty_is_an_error(tmp_path):
    for index in range(2):
        (tmp_path / "val" / imagenet_wnids()[index]).mkdir(parents=True)
    with pytest.raises(UserError, match="holds no images"):
        prepare_data(SPEC, tmp_path, CalibrationChoice(), 0)


def test_cli_names_the_bad_image_on_one_line_and_exits_2(tmp_path, capsys):
    """The bad file comes first, so the run stops before any forward pass; the progress bar, cleared
    by carriage returns, leaves the error as the one line a terminal shows."""
    from inference.inference_sim import main

    folder = tmp_path / "data" / "val" / imagenet_wnids()[0]
    write_good(folder, 3)
    bad = folder / "a_cut.JPEG"
    bad.write_bytes(jpeg_bytes()[:-300])
    code = main(["-a", "efficientnet_lite0", "--random-init", "--data", str(tmp_path / "data"), "-b", "4",
                 "-j", "0", "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"])
    stderr = capsys.readouterr().err
    shown = [line.rsplit("\r", 1)[-1] for line in stderr.split("\n")]
    assert code == 2
    assert [line for line in shown if line.strip()] == [
        (f"inference_sim.py: error: image file {bad} cannot be decoded as an image (image file is truncated "
         "(2 bytes not processed)); remove or replace it, or pass --skip-bad-images to skip such files")], stderr


# Fashion-MNIST idx files

def idx_bytes(array: np.ndarray, type_code: int = 0x08, shape: tuple | None = None) -> bytes:
    shape = array.shape if shape is None else shape
    header = bytes([0, 0, type_code, len(shape)]) + b"".join(int(size).to_bytes(4, "big") for size in shape)
    return header + array.astype(np.uint8).tobytes()


def write_split(folder: Path, images: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    image_file, label_file = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    image_file.write_bytes(gzip.compress(idx_bytes(images), mtime=0))
    label_file.write_bytes(gzip.compress(idx_bytes(labels), mtime=0))
    return image_file, label_file


def random_split(count: int = 20) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(0)
    return generator.integers(0, 256, (count, 28, 28), dtype=np.uint8), generator.integers(0, 10, count, dtype=np.uint8)


def assert_one_line(refused, *parts: str) -> None:
    message = str(refused.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_a_tiny_valid_split_loads(tmp_path):
    images, labels = random_split()
    write_split(tmp_path, images, labels)
    loaded_images, loaded_labels = fashion_mnist.load_split(tmp_path, "test")
    assert torch.equal(loaded_images, torch.from_numpy(images)) and loaded_labels.tolist() == labels.tolist()


@pytest.mark.parametrize("position, reason", [
    (0.5, "CRC check failed"),  # inside a stored block of incompressible pixels
    (-12, "CRC check failed"),
])
def test_flipped_bytes_in_the_gzip_stream_are_named(tmp_path, position, reason):
    image_file, _ = write_split(tmp_path, *random_split())
    compressed = bytearray(image_file.read_bytes())
    at = int(len(compressed) * position) if isinstance(position, float) else len(compressed) + position
    compressed[at] ^= 0xFF
    image_file.write_bytes(bytes(compressed))
    with pytest.raises(UserError) as refused:
        fashion_mnist.load_split(tmp_path, "test")
    assert_one_line(refused, f"{image_file}: corrupt gzip data ({reason}", "replace it with an intact copy")


def test_a_broken_deflate_stream_is_named(tmp_path):
    label_file = tmp_path / "labels.gz"
    compressed = bytearray(gzip.compress(idx_bytes(np.tile(np.arange(10, dtype=np.uint8), 500)), mtime=0))
    compressed[len(compressed) // 3] ^= 0xFF
    label_file.write_bytes(bytes(compressed))
    with pytest.raises(UserError) as refused:
        fashion_mnist.read_idx(label_file)
    assert_one_line(refused, f"{label_file}: ", "replace it with an intact copy")


@pytest.mark.parametrize("content, reason", [
    (gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:30], "corrupt gzip data (Compressed file ended"),
    (b"plain text, not gzip", "corrupt gzip data (Not a gzipped file"),
])
def test_cut_or_non_gzip_content_is_named(tmp_path, content, reason):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(UserError) as refused:
        fashion_mnist.read_idx(path)
    assert_one_line(refused, f"{path}: {reason}")


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("header, reason", [
    (bytes([0, 0, 8, 0]), "idx header declares 0 dimensions (expected 1 to 4)"),
    (bytes([0, 0, 8, 9]) + bytes(36), "idx header declares 9 dimensions (expected 1 to 4)"),
    (bytes([0, 0, 0x0D, 1]) + (4).to_bytes(4, "big"), "idx type code 0x0d, expected 0x08"),
    (bytes([7, 7, 8, 1]) + (4).to_bytes(4, "big"), "not an idx file (header 07070801"),
    (bytes([0, 0, 8, 3]) + b"\xff" * 12, f"truncated idx file (20 bytes, header says {16 + (2 ** 32 - 1) ** 3})"),
    (bytes([0, 0, 8, 3]) + b"\xff" * 4, "truncated idx file (header cut after 12 bytes)"),
])
def test_absurd_idx_headers_are_refused_before_reading_the_array(tmp_path, header, reason, compress):
    path = tmp_path / ("t10k-labels-idx1-ubyte" + (".gz" if compress else ""))
    content = header + bytes(4)
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(UserError) as refused:
        fashion_mnist.read_idx(path)
    assert_one_line(refused, f"{path}: {reason}", "replace it with an intact copy")


def test_an_idx_file_longer_than_its_header_is_refused(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(10, np.uint8), shape=(4,))))
    with pytest.raises(UserError) as refused:
        fashion_mnist.read_idx(path)
    assert_one_line(refused, f"{path}: idx file longer than its header says (12 bytes)")


def test_labels_outside_0_to_9_are_named(tmp_path):
    images, labels = random_split()
    labels[[3, 7]] = (12, 200)
    _, label_file = write_split(tmp_path, images, labels)
    with pytest.raises(UserError) as refused:
        fashion_mnist.load_split(tmp_path, "test")
    assert_one_line(refused, f"{label_file}: label 12 at index 3 is outside 0..9 (2 such labels)")


@pytest.mark.parametrize("shape", [(20, 32, 32), (20, 784), (20, 28, 28, 1)])
def test_images_other_than_28_by_28_are_named(tmp_path, shape):
    _, labels = random_split()
    image_file, _ = write_split(tmp_path, np.zeros(shape, np.uint8), labels)
    with pytest.raises(UserError) as refused:
        fashion_mnist.load_split(tmp_path, "test")
    assert_one_line(refused, f"{image_file}: holds images of shape {shape} where Fashion-MNIST has N x 28 x 28")


def test_image_and_label_counts_must_agree(tmp_path):
    images, labels = random_split()
    image_file, label_file = write_split(tmp_path, images, labels[:15])
    with pytest.raises(UserError) as refused:
        fashion_mnist.load_split(tmp_path, "test")
    assert_one_line(refused, f"{image_file} holds 20 images but {label_file} 15 labels")


def test_a_folder_in_place_of_an_idx_file_is_named(tmp_path):
    images, labels = random_split()
    _, label_file = write_split(tmp_path, images, labels)
    label_file.unlink()
    label_file.mkdir()
    with pytest.raises(UserError) as refused:
        fashion_mnist.load_split(tmp_path, "test")
    assert_one_line(refused, f"{label_file}: is a folder, not an idx file")
    with pytest.raises(UserError) as refused:
        fashion_mnist.read_idx(label_file)
    assert_one_line(refused, f"{label_file}: is a folder, not an idx file")


def test_permission_denied_is_named(tmp_path, monkeypatch):
    images, labels = random_split()
    image_file, _ = write_split(tmp_path, images, labels)

    def denied(path, mode):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(fashion_mnist.gzip, "open", denied)
    with pytest.raises(UserError) as refused:
        fashion_mnist.load_split(tmp_path, "test")
    assert_one_line(refused, f"{image_file}: permission denied reading the idx file; make it readable")
