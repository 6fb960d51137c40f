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
import io
import logging
import re
from pathlib import Path

from torch.utils.data import Dataset

from inference.errors import UserError
from inference.models import REPO_ROOT, Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WNID_LIST = REPO_ROOT / "inference" / "imagenet_wnids.txt"
WNID_PATTERN = re.compile(r"n\d{8}")
UNLABELLED = -1
LOG = logging.getLogger(__name__)


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
        return self.transform(decode_rgb(self.files[index])), self.labels[index]

    def subset(self, indices: list[int]) -> "LabelledImageFiles":
        return LabelledImageFiles([self.files[i] for i in indices], [self.labels[i] for i in indices], self.transform)


class BadImageFile(UserError):
    """An image file that cannot be read or decoded; ``path`` names it (``--skip-bad-images`` drops it)."""

    def __init__(self, path: Path, problem: str, fix: str):
        super().__init__(f"image file {path} {problem}; {fix}, or pass --skip-bad-images to skip such files")
        self.path = path


@functools.cache
def quiet_decompression_bomb_warnings() -> None:
    """PIL warns on stderr, outside the CLI's one-line format, about images above its pixel limit;
    ``decode_rgb`` says so itself, once per file, through logging (warning filters are process-wide,
    so this is installed once rather than around each decode in the decoding threads)."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def decode_rgb(path: Path):
    """The image of ``path`` fully decoded to RGB (PIL decodes lazily, so ``convert`` is inside the guard).

    A file that cannot be read, is empty, is no image PIL knows, is truncated or has a broken header
    raises ``BadImageFile``: PIL reports these as ``UnidentifiedImageError`` / ``OSError`` ("image
    file is truncated"), ``ValueError`` / ``SyntaxError`` / ``EOFError`` from its format plugins, and
    ``DecompressionBombError`` for absurd pixel counts.
    """
    from PIL import Image, UnidentifiedImageError

    quiet_decompression_bomb_warnings()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadImageFile(path, f"cannot be read ({error.strerror or error})",
                           "make it readable or remove it") from None
    if not data:
        raise BadImageFile(path, "cannot be decoded as an image (empty file, 0 bytes)", "remove or replace it")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > Image.MAX_IMAGE_PIXELS:
                LOG.warning("image file %s has %d x %d pixels (%.0f megapixels), more than PIL's limit of %.0f "
                            "megapixels for untrusted files; decoded anyway (it is resized to the model's input)",
                            path, image.width, image.height, image.width * image.height / 1e6,
                            Image.MAX_IMAGE_PIXELS / 1e6)
            return image.convert("RGB")
    except UnidentifiedImageError:
        reason = "not an image format PIL recognises"
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        reason = one_line(error)
    raise BadImageFile(path, f"cannot be decoded as an image ({reason})", "remove or replace it")


def one_line(error: BaseException, limit: int = 120) -> str:
    """The first line of ``error``'s message (its type when empty), at most ``limit`` characters."""
    text = (str(error).splitlines() or [""])[0].strip() or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
    empty = [name for name, paths in images.items() if not paths]
    if empty:
        more = f" (and {len(empty) - 1} more class folders)" if len(empty) > 1 else ""
        removable = " or remove the folder" if all(WNID_PATTERN.fullmatch(name) for name in images) else ""
        LOG.warning("class folder %s holds no images%s, so its class is left out; add its images%s",
                    root / empty[0], more, removable)
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
