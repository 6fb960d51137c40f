"""Image files on disk as datasets: class folders (labelled by WordNet id or by sorted folder name),
folders of unlabelled calibration images, and the 20 photos shipped in the foolbox package.

Labels of a class-folder tree:
- every class folder is a WordNet id (``n`` + 8 digits): label = its index in the standard
  ImageNet-1k order (``imagenet_wnids.txt``, line k = class k), so any subset of classes keeps the
  model's labels; a WordNet id outside that list is an error naming it;
- otherwise: label = rank of the folder name in sorted order, and all of the model's classes must be
  present (else labels would shift).
"""
from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from torch.utils.data import Dataset

from inference.errors import UserError
from inference.models import REPO_ROOT, Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WNID_LIST = REPO_ROOT / "inference" / "imagenet_wnids.txt"
WNID_PATTERN = re.compile(r"n\d{8}")
UNLABELLED = -1


def image_transform(preprocessing: Preprocessing):
    """Resize the short side, centre-crop, to tensor, normalise: the model's own evaluation transform."""
    from torchvision import transforms

    mode = transforms.InterpolationMode(preprocessing.interpolation)
    return transforms.Compose([
        transforms.Resize(preprocessing.resize, interpolation=mode),
        transforms.CenterCrop(preprocessing.crop),
        transforms.ToTensor(),
        transforms.Normalize(preprocessing.mean, preprocessing.std),
    ])


class LabelledImageFiles(Dataset):
    """Image files with integer labels (``UNLABELLED`` for calibration images), loaded as RGB and
    transformed on access."""

    def __init__(self, files: list[Path], labels: list[int], transform):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files = files
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB")), self.labels[index]

    def subset(self, indices: list[int]) -> "LabelledImageFiles":
        return LabelledImageFiles([self.files[i] for i in indices], [self.labels[i] for i in indices], self.transform)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in the standard class order."""
    wnids = tuple(WNID_LIST.read_text().split())
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise RuntimeError(f"{WNID_LIST} must list 1000 distinct WordNet ids, found {len(set(wnids))}")
    return wnids


def class_labels(root: Path, class_names: list[str], num_classes: int) -> dict[str, int]:
    """{folder name: label} by the rule in the module docstring."""
    wnid_folders = [name for name in class_names if WNID_PATTERN.fullmatch(name)]
    if wnid_folders and num_classes == 1000:
        other = sorted(set(class_names) - set(wnid_folders))
        if other:
            raise UserError(f"folder {root} mixes WordNet-id class folders with {other[0]!r}; "
                            "name every class folder by its WordNet id (e.g. n01440764) or none")
        index = {wnid: label for label, wnid in enumerate(imagenet_wnids())}
        unknown = sorted(name for name in class_names if name not in index)
        if unknown:
            raise UserError(f"folder {root}: class folder {unknown[0]} is not an ImageNet-1k WordNet id "
                            f"({len(unknown)} unknown); rename or remove it (the ids are listed in {WNID_LIST})")
        return {name: index[name] for name in class_names}
    if len(class_names) != num_classes:
        raise UserError(f"folder {root} has {len(class_names)} class folders but the model has {num_classes} classes; "
                        "labels follow sorted folder names, so all class folders must be present "
                        "(or name the folders by ImageNet WordNet id to evaluate a subset of classes)")
    return {name: label for label, name in enumerate(sorted(class_names))}


def class_folder_images(root: Path, num_classes: int, transform) -> LabelledImageFiles:
    """The images of ``root/<class>/<image>``, labelled per the module docstring, in sorted path order."""
    if not root.is_dir():
        raise UserError(f"folder {root} does not exist; --data must contain val/ in ImageFolder layout (val/<class>/<image>)")
    folders = sorted(entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not folders:
        raise UserError(f"folder {root} has no class subfolders with images; expected ImageFolder layout {root}/<class>/<image>")
    images = {folder.name: sorted(path for path in folder.rglob("*") if is_image_file(path)) for folder in folders}
    if not any(images.values()):
        raise UserError(f"folder {root} holds no images ({', '.join(IMAGE_SUFFIXES[:3])}, ...) in its class subfolders")
    labels = class_labels(root, list(images), num_classes)
    files = [path for name in images for path in images[name]]
    return LabelledImageFiles(files, [labels[name] for name in images for _ in images[name]], transform)


def unlabelled_images(root: Path, transform) -> LabelledImageFiles:
    """Every image file under ``root`` (searched recursively, sorted by path), labels ``UNLABELLED``."""
    if not root.exists():
        raise UserError(f"--calib-data {root}: folder does not exist; pass a folder of calibration images")
    if not root.is_dir():
        raise UserError(f"--calib-data {root}: not a folder; pass a folder of calibration images")
    files = sorted(path for path in root.rglob("*") if is_image_file(path))
    if not files:
        raise UserError(f"--calib-data {root}: no image files ({', '.join(IMAGE_SUFFIXES[:3])}, ...) in it or its "
                        "subfolders; pass a folder of calibration images")
    return LabelledImageFiles(files, [UNLABELLED] * len(files), transform)


def foolbox_imagenet_folder() -> Path:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise UserError("the embedded ImageNet sample needs the foolbox package (pip install --no-deps foolbox, "
                        "build_all.sh does); or pass --data DIR with DIR/val in ImageFolder layout")
    return Path(spec.origin).parent / "data"


def sample_imagenet_photos(transform) -> LabelledImageFiles:
    """The 20 ImageNet validation photos of the foolbox package, in file-name order
    (label = last number of ``imagenet_NN_LABEL.jpg``)."""
    files = sorted(foolbox_imagenet_folder().glob("imagenet_*.jpg"))
    if not files:
        raise UserError(f"no imagenet_*.jpg photos in {foolbox_imagenet_folder()}; reinstall foolbox or pass --data")
    return LabelledImageFiles(files, [int(path.stem.rsplit("_", 1)[1]) for path in files], transform)
