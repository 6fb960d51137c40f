"""This project's departures from the seed's arithmetic, as one frozen set of switches."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Departures:
    """This project's departures from the seed's arithmetic (submission2019/cnn-quantization).

    All False (the default): what the seed's code computes. Each True selects this project's variant:

    - ``exact_aciq``: ACIQ ratios solved numerically (the seed's table truncates them, e.g. 5.03 for
      Laplace at 4 bits against 5.0286), and a Gaussian clip of each channel with the constant of its
      own allocated bits (the seed uses the layer's bits there; Laplace is per channel in both).
    - ``rectified_aciq``: a non-negative tensor is modelled as ReLU(prior): scale b = E[x | x > 0]
      (or sigma = sqrt(E[x^2 | x > 0])) and range [0, alpha]; the seed fits the prior to the
      pre-activation tensor (b = E|x - mean|) and clips to [0, max(mean, 0) + alpha].
    - ``range_within_data``: clipping ranges stay inside [min, max] and contain 0, whose code is
      clamped into [0, qmax]; the seed keeps a range 2 alpha wide from max(min, mean - alpha) and
      shifts the grid by up to half a step so that 0 is a level even outside the range.
    - ``exact_bit_budget``: per-channel bits whose mean equals the target; the seed's ten-step
      target adjustment returns its last allocation, which misses the target in many cases.
    - ``batch_range``: per-tensor min / max of an evaluated batch over the whole batch; the seed
      averages each image's min / max (activations without clipping).
    - ``calibrate_quantized``: statistics collected through the quantized model (each layer sees
      quantized inputs); the seed collects them on the float model.
    - ``bca_folded``: activation bias correction measured once on calibration images and folded into
      the bias; the seed corrects each evaluated batch online and only its positive outputs.
    - ``zero_bit_zero``: a channel given 0 bits outputs 0; in the seed it outputs its lower range end.
    """

    exact_aciq: bool = False
    rectified_aciq: bool = False
    range_within_data: bool = False
    exact_bit_budget: bool = False
    batch_range: bool = False
    calibrate_quantized: bool = False
    bca_folded: bool = False
    zero_bit_zero: bool = False

    @classmethod
    def all(cls) -> "Departures":
        return cls(**{name: True for name in cls.__dataclass_fields__})

    def enabled(self) -> tuple[str, ...]:
        return tuple(name for name in self.__dataclass_fields__ if getattr(self, name))
