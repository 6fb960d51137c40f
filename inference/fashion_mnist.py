"""Fashion-MNIST from its idx files (the Debian package ``dataset-fashion-mnist`` or any copy).

The idx format: a big-endian header (two zero bytes, a type code 0x08 for uint8, the number of
dimensions d, then d uint32 sizes) followed by the raw array.
"""
import gzip
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset

from inference.errors import UserError
from pytorch_quantizer.formats.safe_io import file_problem

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN = 0.2860
STD = 0.3530
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = 10
IMAGE_SHAPE = (28, 28)
IDX_UINT8 = 0x08
MAX_IDX_DIMENSIONS = 4
READ_CHUNK = 1 << 24
MISSING_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` or point --data at a folder holding "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
)
REPLACE_HINT = (
    "replace it with an intact copy (`apt-get install --reinstall dataset-fashion-mnist`, or the file of the "
    "Fashion-MNIST release) or point --data at a folder of intact idx files"
)


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (gzip-compressed when its name ends in .gz) into a uint8 array.

    The header is checked (magic, type code 0x08, 1 to ``MAX_IDX_DIMENSIONS`` dimensions) and the size
    it declares, prod(sizes) bytes, is compared with the bytes the file holds before the array is
    read: a plain file by its size on disk, a gzip stream by reading at most one byte past the
    declared size in chunks, so a corrupt header never makes it allocate what the file does not hold.
    """
    compressed = path.suffix == ".gz"
    try:
        with (gzip.open if compressed else open)(path, "rb") as handle:
            return parse_idx(path, handle, None if compressed else path.stat().st_size)
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not an idx file; move it away, then {MISSING_HINT}") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied reading the idx file; make it readable "
                        f"(chmod a+r {path}) or copy the files to a folder of yours and pass --data") from None
    except (gzip.BadGzipFile, zlib.error, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path}: corrupt gzip data ({reason}); {REPLACE_HINT}") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read idx file ({error.strerror or error}); {MISSING_HINT}") from None


def parse_idx(path: Path, handle: BinaryIO, file_size: int | None) -> np.ndarray:
    """The array of an open idx stream; ``file_size``: its size on disk when not compressed."""
    magic = handle.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise UserError(f"{path}: not an idx file (header {magic.hex() or 'empty'}, expected 0000 0803 or 0000 0801); "
                        f"{REPLACE_HINT}")
    if magic[2] != IDX_UINT8:
        raise UserError(f"{path}: idx type code 0x{magic[2]:02x}, expected 0x08 (unsigned bytes); {REPLACE_HINT}")
    ndim = magic[3]
    if not 1 <= ndim <= MAX_IDX_DIMENSIONS:
        raise UserError(f"{path}: idx header declares {ndim} dimensions (expected 1 to {MAX_IDX_DIMENSIONS}); "
                        f"{REPLACE_HINT}")
    sizes = handle.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise UserError(f"{path}: truncated idx file (header cut after {4 + len(sizes)} bytes); {REPLACE_HINT}")
    shape = tuple(int.from_bytes(sizes[4 * axis:4 * axis + 4], "big") for axis in range(ndim))
    header = 4 + 4 * ndim
    expected = math.prod(shape)
    if file_size is not None and file_size != header + expected:
        raise size_mismatch(path, file_size, header + expected)
    payload = handle.read(expected) if file_size is not None else read_at_most(handle, expected + 1)
    if len(payload) != expected:
        raise size_mismatch(path, header + len(payload), header + expected)
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def read_at_most(handle: BinaryIO, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``handle``, read in chunks (never a ``limit``-sized buffer up front)."""
    chunks, total = [], 0
    while total < limit:
        chunk = handle.read(min(READ_CHUNK, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def size_mismatch(path: Path, actual: int, expected: int) -> UserError:
    """The error of an idx file whose byte count (``actual``; for a gzip stream read no further than
    one byte past the declared size) differs from the ``expected`` one of its header."""
    if actual < expected:
        what = f"truncated idx file ({actual} bytes, header says {expected})"
    else:
        what = f"idx file longer than its header says ({expected} bytes)"
    return UserError(f"{path}: {what}; {REPLACE_HINT}")


def find_split_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        problem = file_problem(candidate)
        if problem is None:
            return candidate
        if problem != "does not exist":
            raise UserError(f"{candidate}: {problem.replace('a file', 'an idx file')}; move it away, then {MISSING_HINT}")
    raise UserError(f"Fashion-MNIST file {stem}(.gz) not found in {folder}; {MISSING_HINT}")


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 in 0..9 of the ``train`` (60,000) or ``test``
    (10,000) split; any other content is an error naming the file."""
    if not folder.is_dir():
        raise UserError(f"Fashion-MNIST folder {folder} does not exist; {MISSING_HINT}")
    image_stem, label_stem = SPLIT_FILES[split]
    image_file, label_file = find_split_file(folder, image_stem), find_split_file(folder, label_stem)
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.shape[1:] != IMAGE_SHAPE:
        raise UserError(f"{image_file}: holds images of shape {images.shape} where Fashion-MNIST has N x 28 x 28; "
                        f"{REPLACE_HINT}")
    if labels.ndim != 1:
        raise UserError(f"{label_file}: holds labels of shape {labels.shape} where Fashion-MNIST has one label per "
                        f"image; {REPLACE_HINT}")
    if len(images) != len(labels):
        raise UserError(f"{image_file} holds {len(images)} images but {label_file} {len(labels)} labels; "
                        f"{REPLACE_HINT}")
    if len(labels) and labels.max() >= CLASSES:
        bad = int(np.argmax(labels >= CLASSES))
        raise UserError(f"{label_file}: label {labels[bad]} at index {bad} is outside 0..{CLASSES - 1} "
                        f"({int((labels >= CLASSES).sum())} such labels); {REPLACE_HINT}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class InMemoryImages(Dataset):
    """uint8 images held in memory, normalised on access: x = (pixel / 255 - mean) / std.

    Indexing with a list of indices returns a whole batch at once, so a DataLoader with a
    ``BatchSampler`` as sampler and ``batch_size=None`` does no per-image Python work.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float = MEAN, std: float = STD):
        self.images = images
        self.labels = labels
        self.mean = mean
        self.std = std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        pixels = self.images[index].float().div_(255.0).sub_(self.mean).div_(self.std)
        return pixels.unsqueeze(-3), self.labels[index]

    def subset(self, indices: list[int]) -> "InMemoryImages":
        index = torch.as_tensor(indices, dtype=torch.long)
        return InMemoryImages(self.images[index], self.labels[index], self.mean, self.std)
