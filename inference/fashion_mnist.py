"""Fashion-MNIST from its idx files (the Debian package ``dataset-fashion-mnist`` or any copy).

The idx format: a big-endian header (two zero bytes, a type code 0x08 for uint8, the number of
dimensions d, then d uint32 sizes) followed by the raw array.
"""
import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from inference.errors import UserError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN = 0.2860
STD = 0.3530
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MISSING_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` or point --data at a folder holding "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
)


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (gzip-compressed when its name ends in .gz) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise UserError(f"{path}: cannot read idx file ({error}); {MISSING_HINT}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not a uint8 idx file (bad header); {MISSING_HINT}")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    shape = tuple(int(size) for size in np.frombuffer(raw[4:header_end], dtype=">u4"))
    expected = header_end + int(np.prod(shape))
    if len(raw) != expected:
        raise UserError(f"{path}: truncated idx file ({len(raw)} bytes, header says {expected}); {MISSING_HINT}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(shape)


def find_split_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise UserError(f"Fashion-MNIST file {stem}(.gz) not found in {folder}; {MISSING_HINT}")


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the ``train`` (60,000) or ``test`` (10,000) split."""
    if not folder.is_dir():
        raise UserError(f"Fashion-MNIST folder {folder} does not exist; {MISSING_HINT}")
    image_stem, label_stem = SPLIT_FILES[split]
    images = read_idx(find_split_file(folder, image_stem))
    labels = read_idx(find_split_file(folder, label_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"Fashion-MNIST {split} files in {folder} disagree: images {images.shape}, labels {labels.shape}")
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
