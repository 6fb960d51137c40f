"""Evaluation and calibration data for the registry's datasets.

- ImageNet: ``--data DIR`` in ImageFolder layout (``DIR/val/<wnid>/*.JPEG``, calibration from
  ``DIR/train`` when present); without ``--data``, the 20 labelled ImageNet validation photos shipped
  in the foolbox package (label = last number of ``imagenet_NN_LABEL.jpg``).
- Fashion-MNIST: the idx files of ``--data DIR`` or of the Debian package; the 10,000 test images
  are evaluated, calibration draws from the 60,000 training images.

Calibration is disjoint from evaluation except in one documented fallback: ImageNet without a
``train/`` folder calibrates on the evaluated images themselves; ``CalibrationData.overlaps_eval``
says so and callers must report it.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from inference import fashion_mnist
from inference.distributed import ProcessInfo
from inference.errors import UserError
from inference.models import ModelSpec, Preprocessing

LOG = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class LoaderOptions:
    batch_size: int = 256
    workers: int = 2
    subset: int | None = None
    shuffle: bool = False
    seed: int = 0
    process: ProcessInfo = field(default_factory=ProcessInfo)


@dataclass
class CalibrationData:
    loader: DataLoader
    source: str
    overlaps_eval: bool


def image_transform(preprocessing: Preprocessing):
    from torchvision import transforms

    mode = transforms.InterpolationMode(preprocessing.interpolation)
    return transforms.Compose([
        transforms.Resize(preprocessing.resize, interpolation=mode),
        transforms.CenterCrop(preprocessing.crop),
        transforms.ToTensor(),
        transforms.Normalize(preprocessing.mean, preprocessing.std),
    ])


class LabelledImageFiles(Dataset):
    """Image files with integer labels, loaded as RGB and transformed on access."""

    def __init__(self, files: list[Path], labels: list[int], transform):
        self.files = files
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB")), self.labels[index]


def foolbox_imagenet_folder() -> Path:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise UserError("the embedded ImageNet sample needs the foolbox package (pip install --no-deps foolbox, "
                        "build_all.sh does); or pass --data DIR with DIR/val in ImageFolder layout")
    return Path(spec.origin).parent / "data"


def sample_imagenet_photos(transform) -> LabelledImageFiles:
    """The 20 ImageNet validation photos of the foolbox package, in file-name order."""
    files = sorted(foolbox_imagenet_folder().glob("imagenet_*.jpg"))
    if not files:
        raise UserError(f"no imagenet_*.jpg photos in {foolbox_imagenet_folder()}; reinstall foolbox or pass --data")
    return LabelledImageFiles(files, [int(path.stem.rsplit("_", 1)[1]) for path in files], transform)


def image_folder(root: Path, num_classes: int, transform) -> Dataset:
    """An ImageFolder whose sorted class folders must be exactly the model's classes (else labels shift)."""
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise UserError(f"folder {root} does not exist; --data must contain val/ in ImageFolder layout (val/<class>/<image>)")
    classes = [entry for entry in root.iterdir() if entry.is_dir()]
    if not classes:
        raise UserError(f"folder {root} has no class subfolders with images; expected ImageFolder layout {root}/<class>/<image>")
    try:
        dataset = ImageFolder(str(root), transform=transform)
    except FileNotFoundError:
        raise UserError(f"folder {root} holds no images ({', '.join(IMAGE_SUFFIXES[:3])}, ...) in its class subfolders") from None
    if len(dataset.classes) != num_classes:
        raise UserError(f"folder {root} has {len(dataset.classes)} class folders but the model has {num_classes} classes; "
                        "labels follow sorted folder names, so all class folders must be present")
    return dataset


def check_data_dir(data_dir: Path) -> None:
    if not data_dir.exists():
        raise UserError(f"--data {data_dir}: folder does not exist")
    if not data_dir.is_dir():
        raise UserError(f"--data {data_dir}: not a folder")


def evaluation_dataset(spec: ModelSpec, data_dir: Path | None) -> Dataset:
    if data_dir is not None:
        check_data_dir(data_dir)
    if spec.dataset == "fashion_mnist":
        return fashion_mnist.InMemoryImages(*fashion_mnist.load_split(data_dir or fashion_mnist.DEFAULT_DIR, "test"))
    transform = image_transform(spec.preprocessing)
    if data_dir is None:
        return sample_imagenet_photos(transform)
    return image_folder(data_dir / "val", spec.num_classes, transform)


def make_loader(dataset: Dataset, options: LoaderOptions) -> DataLoader:
    """Deterministic order (seeded shuffle with ``options.shuffle``), first ``options.subset`` images,
    cut into batches; under torchrun this process's share of whole batches (``ProcessInfo.shard``).

    In-memory datasets are indexed a batch at a time in the main process (workers would only add
    start-up cost); file datasets decode in ``options.workers`` worker processes.
    """
    generator = torch.Generator().manual_seed(options.seed)
    if options.shuffle:
        order = torch.randperm(len(dataset), generator=generator).tolist()
    else:
        order = list(range(len(dataset)))
    if options.subset is not None:
        order = order[: options.subset]
    batches = options.process.shard([order[start:start + options.batch_size]
                                     for start in range(0, len(order), options.batch_size)])
    if isinstance(dataset, fashion_mnist.InMemoryImages):
        return DataLoader(dataset, sampler=batches, batch_size=None)
    return DataLoader(dataset, batch_sampler=batches, num_workers=options.workers, pin_memory=torch.cuda.is_available())


def evaluation_loader(spec: ModelSpec, data_dir: Path | None, options: LoaderOptions) -> DataLoader:
    dataset = evaluation_dataset(spec, data_dir)
    if len(dataset) == 0:
        raise UserError(f"no images to evaluate for {spec.name} (data folder {data_dir}); check --data")
    return make_loader(dataset, options)


def calibration_data(spec: ModelSpec, data_dir: Path | None, num_images: int, options: LoaderOptions) -> CalibrationData:
    """``num_images`` calibration images drawn (seeded) from a split disjoint from evaluation when one exists."""
    if data_dir is not None:
        check_data_dir(data_dir)
    shuffled = LoaderOptions(options.batch_size, options.workers, num_images, True, options.seed, options.process)
    if spec.dataset == "fashion_mnist":
        folder = data_dir or fashion_mnist.DEFAULT_DIR
        dataset = fashion_mnist.InMemoryImages(*fashion_mnist.load_split(folder, "train"))
        return CalibrationData(make_loader(dataset, shuffled), f"Fashion-MNIST train split ({folder})", False)
    transform = image_transform(spec.preprocessing)
    if data_dir is not None and (data_dir / "train").is_dir():
        dataset = image_folder(data_dir / "train", spec.num_classes, transform)
        return CalibrationData(make_loader(dataset, shuffled), f"ImageNet train ({data_dir / 'train'})", False)
    dataset = evaluation_dataset(spec, data_dir)
    LOG.warning("no ImageNet train/ folder: calibrating on the evaluated images (calibration overlaps evaluation)")
    return CalibrationData(make_loader(dataset, shuffled), "evaluated images (no train/ split available)", True)
