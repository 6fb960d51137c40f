"""Weight bias and variance correction (eq. 12-13 of Banner et al.), per output channel c, and the
seed's online activation bias correction (``correct_positive_outputs``).

mu_c, sigma_c: mean and std of the float weights of channel c; mu_hat_c, sigma_hat_c: of the
quantized weights.

    variance correction:  w <- (w_hat - mu_hat_c) * sigma_c / sigma_hat_c + mu_hat_c
    mean correction:      w <- w - mean_c(w) + mu_c

(variance first, so that the mean correction also fixes whatever the first step left).
"""
from __future__ import annotations

import torch

from pytorch_quantizer.maths.primitives import broadcast_shape, channels_first


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


def correct_positive_outputs(reference: torch.Tensor, quantized: torch.Tensor, axis: int = 1,
                             eps: float = 1e-8) -> torch.Tensor:
    """The seed's activation bias correction (-bca) of one batch of Conv outputs, per channel c:

        q_bias_c = (sum y_c - sum y_hat_c) / (#{y_c > 0} + eps),   y_hat <- y_hat + 1[y_hat > 0] * q_bias_c

    y: the output before activation quantization (after the fused ReLU where there is one), y_hat:
    the quantized output; sums and counts run over the batch's images and positions.
    """
    shape = broadcast_shape(quantized, axis)
    reference_rows = channels_first(reference, axis)
    quantized_rows = channels_first(quantized, axis)
    positives = (reference_rows > 0).sum(dim=1).to(quantized.dtype)
    q_bias = (reference_rows.sum(dim=1) - quantized_rows.sum(dim=1)) / (positives + eps)
    return quantized + (quantized > 0).to(quantized.dtype) * q_bias.reshape(shape)
