"""Weight bias and variance correction (eq. 12-13 of Banner et al.), per output channel c.

mu_c, sigma_c: mean and std of the float weights of channel c; mu_hat_c, sigma_hat_c: of the
quantized weights.

    variance correction:  w <- (w_hat - mu_hat_c) * sigma_c / sigma_hat_c + mu_hat_c
    mean correction:      w <- w - mean_c(w) + mu_c

(variance first, so that the mean correction also fixes whatever the first step left).
"""
from __future__ import annotations

import torch

from pytorch_quantizer.primitives import broadcast_shape, channels_first


def correct_weights(float_weight: torch.Tensor, quantized_weight: torch.Tensor, mean: bool = True,
                    variance: bool = False, axis: int = 0) -> torch.Tensor:
    shape = broadcast_shape(float_weight, axis)
    reference = channels_first(float_weight.double(), axis)
    corrected = quantized_weight.double()
    if variance:
        rows = channels_first(corrected, axis)
        quantized_mean = rows.mean(dim=1).reshape(shape)
        quantized_std = rows.std(dim=1, unbiased=False)
        gain = torch.where(quantized_std > 0, reference.std(dim=1, unbiased=False) / quantized_std,
                           torch.ones_like(quantized_std))
        corrected = (corrected - quantized_mean) * gain.reshape(shape) + quantized_mean
    if mean:
        rows = channels_first(corrected, axis)
        corrected = corrected - rows.mean(dim=1).reshape(shape) + reference.mean(dim=1).reshape(shape)
    return corrected.to(quantized_weight.dtype)
