"""Evaluation and calibration data of a run.

- ImageNet: ``--data DIR`` with ``DIR/val/<class>/<image>`` (class folders by WordNet id, any subset
  of classes, or all of the model's classes by sorted name: see ``image_files``); without ``--data``,
  the 20 labelled ImageNet validation photos shipped in the foolbox package.
- Fashion-MNIST: the idx files of ``--data DIR`` or of the Debian package; the 10,000 test images.

Calibration images (``-sm collect``, ``-ac``, ``-bca``) come from, in order of precedence:
``--calib-data DIR`` (any folder of images, labels ignored; never the evaluated folder),
``--calib-holdout N`` (N seeded images of the evaluated set, which then evaluates the rest),
``--calib-fold I/K`` (k-fold cross-validation: part I of K seeded parts of the evaluated set is
evaluated, the other K - 1 calibrate), the dataset's own disjoint split (Fashion-MNIST train,
ImageNet ``DIR/train``), and as a last resort the evaluated images themselves, which
``CalibrationSet.overlaps_eval`` records and callers report.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from inference import fashion_mnist
from inference.distributed import ProcessInfo
from inference.errors import UserError
from inference.image_batches import ThreadedImageBatches
from inference.image_files import (
    class_folder_images, foolbox_imagenet_folder, image_transform, sample_imagenet_photos, unlabelled_images,
)
from inference.models import ModelSpec

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderOptions:
    batch_size: int = 256
    workers: int = 2
    subset: int | None = None
    shuffle: bool = False
    seed: int = 0
    process: ProcessInfo = field(default_factory=ProcessInfo)
    skip_bad_images: bool = False


@dataclass(frozen=True)
class CalibrationChoice:
    """The user's calibration source: ``folder`` (--calib-data), ``holdout`` images of the evaluated
    set (--calib-holdout) or all but part ``fold = (I, K)`` of it (--calib-fold I/K); none: the
    dataset's default. ``images``: -cs."""

    folder: Path | None = None
    holdout: int | None = None
    images: int = 5120
    fold: tuple[int, int] | None = None

    def __post_init__(self):
        chosen = [flag for flag, value in (("--calib-data", self.folder), ("--calib-holdout", self.holdout),
                                           ("--calib-fold", self.fold)) if value is not None]
        if len(chosen) > 1:
            both = "both" if len(chosen) == 2 else "all"
            raise UserError(f"{', '.join(chosen[:-1])} and {chosen[-1]} {both} choose the calibration images: "
                            "pass one of them")
        if self.holdout is not None and self.holdout <= 0:
            raise UserError(f"--calib-holdout {self.holdout}: must be a positive number of images")
        if self.fold is not None:
            part, parts = self.fold
            if parts < 2 or not 1 <= part <= parts:
                raise UserError(f"--calib-fold {part}/{parts}: needs 2 or more parts K and a part I from 1 to K")
        if self.images <= 0:
            raise UserError(f"-cs {self.images}: must be a positive number of images")


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration images (labels unused), where they come from, and whether they are evaluated too."""

    dataset: Dataset
    source: str
    overlaps_eval: bool


@dataclass(frozen=True)
class CalibrationData:
    """The seeded calibration loader of ``images`` images drawn from a ``CalibrationSet``."""

    loader: DataLoader | ThreadedImageBatches
    source: str
    overlaps_eval: bool
    images: int


@dataclass(frozen=True)
class RunData:
    """The evaluated images of a run and its calibration choice, settled before any work.

    ``chosen_calibration`` is built eagerly for --calib-data / --calib-holdout (their errors come
    before the run); the default split is only opened when calibration is needed.
    """

    spec: ModelSpec
    data_dir: Path | None
    evaluation: Dataset
    choice: CalibrationChoice
    chosen_calibration: CalibrationSet | None = None

    def calibration_set(self) -> CalibrationSet:
        return self.chosen_calibration or default_calibration_set(self.spec, self.data_dir)

    def calibration_overlaps_eval(self) -> bool:
        """Whether calibration would read evaluated images, known without opening the default split."""
        if self.chosen_calibration is not None:
            return self.chosen_calibration.overlaps_eval
        return self.spec.dataset != "fashion_mnist" and not (self.data_dir is not None and (self.data_dir / "train").is_dir())

    def calibration_loader(self, options: LoaderOptions) -> CalibrationData:
        """``choice.images`` images drawn (seeded by ``options.seed``) from the calibration set."""
        chosen = self.calibration_set()
        shuffled = replace(options, subset=self.choice.images, shuffle=True)
        images = min(self.choice.images, len(chosen.dataset))
        return CalibrationData(make_loader(chosen.dataset, shuffled), chosen.source, chosen.overlaps_eval, images)

    def calibration_record(self) -> dict:
        """What the results JSON and mlflow record of an explicitly chosen calibration source."""
        if self.chosen_calibration is None:
            return {}
        return {"calibration": self.chosen_calibration.source,
                "calibration_images": min(self.choice.images, len(self.chosen_calibration.dataset)),
                "calibration_overlaps_eval": self.chosen_calibration.overlaps_eval}


def check_data_dir(data_dir: Path) -> None:
    if not data_dir.exists():
        raise UserError(f"--data {data_dir}: folder does not exist")
    if not data_dir.is_dir():
        raise UserError(f"--data {data_dir}: not a folder")


def evaluated_folder(spec: ModelSpec, data_dir: Path | None) -> Path:
    """The folder whose images are evaluated (the idx folder for Fashion-MNIST)."""
    if spec.dataset == "fashion_mnist":
        return data_dir or fashion_mnist.DEFAULT_DIR
    return data_dir / "val" if data_dir is not None else foolbox_imagenet_folder()


def evaluation_dataset(spec: ModelSpec, data_dir: Path | None) -> Dataset:
    """All evaluated images of ``spec``'s dataset, in a fixed order."""
    if data_dir is not None:
        check_data_dir(data_dir)
    if spec.dataset == "fashion_mnist":
        return fashion_mnist.InMemoryImages(*fashion_mnist.load_split(data_dir or fashion_mnist.DEFAULT_DIR, "test"))
    transform = image_transform(spec.preprocessing)
    if data_dir is None:
        return sample_imagenet_photos(transform)
    return class_folder_images(data_dir / "val", spec.num_classes, transform)


def default_calibration_set(spec: ModelSpec, data_dir: Path | None) -> CalibrationSet:
    """The dataset's own split disjoint from evaluation, else (with a warning) the evaluated images."""
    if data_dir is not None:
        check_data_dir(data_dir)
    if spec.dataset == "fashion_mnist":
        folder = data_dir or fashion_mnist.DEFAULT_DIR
        dataset = fashion_mnist.InMemoryImages(*fashion_mnist.load_split(folder, "train"))
        return CalibrationSet(dataset, f"Fashion-MNIST train split ({folder})", False)
    if data_dir is not None and (data_dir / "train").is_dir():
        dataset = class_folder_images(data_dir / "train", spec.num_classes, image_transform(spec.preprocessing))
        return CalibrationSet(dataset, f"ImageNet train ({data_dir / 'train'})", False)
    LOG.warning("no ImageNet train/ folder: calibrating on the evaluated images; pass --calib-data DIR or "
                "--calib-holdout N for calibration images disjoint from the evaluated ones")
    return CalibrationSet(evaluation_dataset(spec, data_dir), "evaluated images (no train/ split available)", True)


def check_calibration_folder(spec: ModelSpec, data_dir: Path | None, folder: Path) -> None:
    """--calib-data must be a folder of image files that neither is, holds, nor lies in the evaluated folder."""
    if spec.dataset != "imagenet":
        raise UserError(f"--calib-data takes image files for ImageNet models; {spec.name} calibrates on the "
                        "Fashion-MNIST training split by default, or on --calib-holdout N test images")
    if not folder.exists():
        raise UserError(f"--calib-data {folder}: folder does not exist; pass a folder of calibration images")
    if not folder.is_dir():
        raise UserError(f"--calib-data {folder}: not a folder; pass a folder of calibration images")
    evaluated = evaluated_folder(spec, data_dir).resolve()
    calibration = folder.resolve()
    if calibration == evaluated or evaluated.is_relative_to(calibration) or calibration.is_relative_to(evaluated):
        relation = "is" if calibration == evaluated else "overlaps"
        raise UserError(f"--calib-data {folder} {relation} the evaluated folder {evaluated}: calibration images must "
                        "not be evaluated; pass another folder, or --calib-holdout N to calibrate on part of it")


def seeded_order(count: int, seed: int) -> list[int]:
    """The permutation of ``range(count)`` that --calib-holdout and --calib-fold cut (``--seed``)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()


def holdout_split(dataset: Dataset, holdout: int, seed: int) -> tuple[Dataset, Dataset]:
    """(evaluated rest, held-out calibration images): ``holdout`` indices of a seeded permutation,
    both kept in the dataset's order."""
    if holdout >= len(dataset):
        raise UserError(f"--calib-holdout {holdout}: the evaluated set has {len(dataset)} images, so at most "
                        f"{len(dataset) - 1} can be held out for calibration")
    order = seeded_order(len(dataset), seed)
    return dataset.subset(sorted(order[holdout:])), dataset.subset(sorted(order[:holdout]))


def fold_split(dataset: Dataset, part: int, parts: int, seed: int) -> tuple[Dataset, Dataset]:
    """(evaluated part, calibration rest) of k-fold cross-validation: the seeded permutation of
    ``seeded_order`` cut into ``parts`` slices as equal as can be (the i-th is positions
    [(i - 1) n / K, i n / K) of it), slice ``part`` (1-based) evaluated, both kept in the dataset's
    order. Over I = 1..K every image is evaluated exactly once."""
    if len(dataset) < parts:
        raise UserError(f"--calib-fold {part}/{parts}: the evaluated set has {len(dataset)} images, fewer than the "
                        f"{parts} parts; use at most {len(dataset)} parts")
    order = seeded_order(len(dataset), seed)
    start, stop = (part - 1) * len(dataset) // parts, part * len(dataset) // parts
    return dataset.subset(sorted(order[start:stop])), dataset.subset(sorted(order[:start] + order[stop:]))


def prepare_data(spec: ModelSpec, data_dir: Path | None, choice: CalibrationChoice, seed: int) -> RunData:
    """Open the evaluated images and the chosen calibration images; every data error is raised here."""
    if choice.folder is not None:
        check_calibration_folder(spec, data_dir, choice.folder)
    evaluation = evaluation_dataset(spec, data_dir)
    if len(evaluation) == 0:
        raise UserError(f"no images to evaluate for {spec.name} (data folder {data_dir}); check --data")
    chosen = None
    if choice.holdout is not None:
        evaluation, held_out = holdout_split(evaluation, choice.holdout, seed)
        chosen = CalibrationSet(held_out, f"the {choice.holdout} images held out of the evaluated set "
                                          f"{evaluated_folder(spec, data_dir)} (--calib-holdout, seed {seed})", False)
    elif choice.fold is not None:
        part, parts = choice.fold
        evaluation, rest = fold_split(evaluation, part, parts, seed)
        chosen = CalibrationSet(rest, f"the {len(rest)} images of the evaluated set {evaluated_folder(spec, data_dir)} "
                                      f"outside part {part} of {parts} (--calib-fold, seed {seed})", False)
    elif choice.folder is not None:
        folder_images = unlabelled_images(choice.folder, image_transform(spec.preprocessing))
        chosen = CalibrationSet(folder_images, f"the {len(folder_images)} image files under {choice.folder} (--calib-data)",
                                False)
    return RunData(spec, data_dir, evaluation, choice, chosen)


def make_loader(dataset: Dataset, options: LoaderOptions) -> DataLoader | ThreadedImageBatches:
    """Deterministic order (seeded shuffle with ``options.shuffle``), first ``options.subset`` images,
    cut into batches; under torchrun this process's share of whole batches (``ProcessInfo.shard``).

    In-memory datasets are indexed a batch at a time; file datasets decode in ``options.workers``
    threads (``ThreadedImageBatches``), which with ``options.skip_bad_images`` leave undecodable files
    out and list them in ``loader.skipped``.
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
    return ThreadedImageBatches(dataset, batches, options.workers, options.skip_bad_images)


def evaluation_loader(spec: ModelSpec, data_dir: Path | None, options: LoaderOptions) -> DataLoader | ThreadedImageBatches:
    """The loader of all evaluated images (no calibration choice)."""
    return make_loader(prepare_data(spec, data_dir, CalibrationChoice(), options.seed).evaluation, options)
