"""Options of the methods a recipe runs besides the quantizer itself (frozen, validated on creation)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pytorch_quantizer.errors import QuantizationError

DEFAULT_ROUNDING_STEPS = 1000
DEFAULT_ROUNDING_BATCH = 32
DEFAULT_QAT_LR = 1e-3  # chosen on the training loss of short runs, never on evaluated images


class Rounding(str, Enum):
    """How integer-grid weights are rounded: to nearest (the seed's), learned layer by layer
    (AdaRound, Nagel et al. 2020) or block by block (BRECQ, Li et al. 2021)."""

    NEAREST = "nearest"
    ADAROUND = "adaround"
    BLOCK = "block"


@dataclass(frozen=True)
class Methods:
    """The methods published after the seed, applied around the quantizer.

    ``equalize``: cross-layer equalization and high-bias absorption of the float model (Nagel et
    al. 2019) before quantization. ``rounding``: learned rounding of integer-grid weights on the
    calibration images, ``rounding_steps`` Adam steps of ``rounding_batch`` images per layer / block;
    ``qdrop``: with block rounding, the probability that an activation element stays float while
    learning (QDrop, Wei et al. 2022); ``learn_step_sizes``: with block rounding, the step sizes of
    the block's activation grids (fixed by calibration statistics) learned with its rounding, by LSQ
    gradients, as BRECQ and QDrop do, with Adam at ``step_size_lr`` annealed along a cosine (None:
    their 4e-5, set for 20,000 steps per block; with fewer steps a step size moves at most about
    ``step_size_lr`` x steps / 2, so the same reach at N steps is 0.8 / N); ``joint_blocks``: with
    block rounding, that many pairs of consecutive blocks, those whose relative output error at
    nearest rounding rises most from one to the next, learned together as one unit (after MRECG's
    mixed reconstruction granularity, Ma et al. 2023; ``methods.joint_blocks``); ``rounding_groups``: each
    step's gradient summed over that many groups of calibration batches (batch k in group k mod G), one pass per group, so that the rounding
    learned under torchrun is that of one process with the same groups (``methods.grouped_steps``;
    None: one pass per step, or one group per process under torchrun). ``qat_epochs``:
    quantization-aware fine-tuning of the other seeds' kinds (STE) on labelled training batches at
    learning rate ``qat_lr``.
    """

    equalize: bool = False
    rounding: Rounding | str = Rounding.NEAREST
    qdrop: float = 0.0
    learn_step_sizes: bool = False
    step_size_lr: float | None = None
    joint_blocks: int = 0
    rounding_steps: int = DEFAULT_ROUNDING_STEPS
    rounding_batch: int = DEFAULT_ROUNDING_BATCH
    rounding_groups: int | None = None
    qat_epochs: int = 0
    qat_lr: float = DEFAULT_QAT_LR

    def __post_init__(self):
        try:
            object.__setattr__(self, "rounding", Rounding(self.rounding))
        except ValueError:
            raise QuantizationError(f"Methods.rounding {self.rounding!r}: use one of "
                                    f"{', '.join(repr(r.value) for r in Rounding)}", field="rounding") from None
        if not 0.0 <= self.qdrop < 1.0:
            raise QuantizationError(f"Methods.qdrop {self.qdrop} is not a probability in [0, 1)", field="qdrop")
        if self.qdrop and self.rounding != Rounding.BLOCK:
            raise QuantizationError("Methods.qdrop drops activation quantization while learning blocks: set "
                                    "rounding='block'", code="qdrop_without_block", field="qdrop")
        if self.learn_step_sizes and self.rounding != Rounding.BLOCK:
            raise QuantizationError("Methods.learn_step_sizes learns activation step sizes block by block: set "
                                    "rounding='block'", code="step_sizes_without_block", field="learn_step_sizes")
        if self.step_size_lr is not None and not (isinstance(self.step_size_lr, (int, float))
                                                  and self.step_size_lr > 0):
            raise QuantizationError(f"Methods.step_size_lr must be positive, got {self.step_size_lr!r}",
                                    field="step_size_lr")
        if self.step_size_lr is not None and not self.learn_step_sizes:
            raise QuantizationError("Methods.step_size_lr is the learning rate of learned step sizes: set "
                                    "learn_step_sizes=True", code="step_size_lr_without_learning", field="step_size_lr")
        if not isinstance(self.joint_blocks, int) or self.joint_blocks < 0:
            raise QuantizationError(f"Methods.joint_blocks must be a non-negative integer, got {self.joint_blocks!r}",
                                    field="joint_blocks")
        if self.joint_blocks and self.rounding != Rounding.BLOCK:
            raise QuantizationError("Methods.joint_blocks joins blocks of block reconstruction: set rounding='block'",
                                    code="joint_blocks_without_block", field="joint_blocks")
        for name in ("rounding_steps", "rounding_batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise QuantizationError(f"Methods.{name} must be a positive integer, got {getattr(self, name)!r}",
                                        field=name)
        if self.rounding_groups is not None and (not isinstance(self.rounding_groups, int) or self.rounding_groups < 1):
            raise QuantizationError(f"Methods.rounding_groups must be a positive integer or None, got "
                                    f"{self.rounding_groups!r}", field="rounding_groups")
        if not isinstance(self.qat_epochs, int) or self.qat_epochs < 0:
            raise QuantizationError(f"Methods.qat_epochs must be a non-negative integer, got {self.qat_epochs!r}",
                                    field="qat_epochs")
        if not self.qat_lr > 0:
            raise QuantizationError(f"Methods.qat_lr must be positive, got {self.qat_lr!r}", field="qat_lr")
        if self.qat_epochs and (self.equalize or self.learns_rounding):
            method = "equalize" if self.equalize else "rounding"
            raise QuantizationError(f"Methods.{method} is a post-training method and qat_epochs replaces the weights "
                                    "it works on: use one of them", code="post_training_with_qat", field=method)

    @property
    def learns_rounding(self) -> bool:
        return self.rounding != Rounding.NEAREST


@dataclass(frozen=True)
class Statistics:
    """Where activation ranges come from. ``per_batch``: each quantized batch's own statistics (the
    seed's default, no calibration); else the calibration images' (fixed ranges).
    ``image_averaged_range``: while calibrating, min / max as each image's averaged over a batch
    (the seed's ``-sba``); ``both_granularities``: also observe the other granularity (per tensor /
    per channel) in the same pass, for a statistics file that serves either."""

    per_batch: bool = False
    image_averaged_range: bool = False
    both_granularities: bool = False
