"""What ``pytorch_quantizer.quantize`` returns: the quantized copy of a model as an ``nn.Module``."""
from __future__ import annotations

import torch
from torch import nn

from pytorch_quantizer.api.options import Methods
from pytorch_quantizer.api.recipe import RecipeReport, RecipeState
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.model import report
from pytorch_quantizer.model.quantized_model import QuantizedModel
from pytorch_quantizer.quantizers.config import QuantConfig


class QuantizedNetwork(nn.Module):
    """``qmodel(images)`` runs the quantized copy (BatchNorm folded, weights quantized once,
    activations quantized by hooks) until ``remove()``, which takes the hooks off and returns the
    copy with its float weights. The caller's model is never modified.

    ``config`` / ``methods``: the recipe; ``state``: what the recipe computed from data (what
    ``save`` writes); ``report``: what was done, with ``report.unquantized_layers`` the layers with
    weights that run in float because the simulator does not quantize their kind;
    ``fingerprint``: of the float weights it was made from; ``quantized``: the ``QuantizedModel``
    (plans, statistics, hooks) for the export and the per-layer figures."""

    def __init__(self, quantized: QuantizedModel, config: QuantConfig, methods: Methods, state: RecipeState,
                 recipe_report: RecipeReport, fingerprint: str, input_shape: tuple[int, ...]):
        super().__init__()
        self.module = quantized.model
        self.quantized = quantized
        self.config, self.methods, self.state, self.report = config, methods, state, recipe_report
        self.fingerprint, self.input_shape = fingerprint, tuple(input_shape)
        self._removed = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._removed:
            raise QuantizationError("this quantized model was removed (remove()); quantize the model again",
                                    code="removed")
        return self.module(images)

    def train(self, mode: bool = True) -> "QuantizedNetwork":
        """A quantized simulation runs in eval mode (BatchNorm is folded); fine-tuning is
        ``Methods(qat_epochs=...)``."""
        if mode:
            raise QuantizationError("a quantized model runs in eval mode; fine-tune with Methods(qat_epochs=N)",
                                    code="train_mode")
        return super().train(False)

    def remove(self) -> nn.Module:
        """Take the quantization off: hooks removed, float (BN-folded) weights back. Returns that copy."""
        if not self._removed:
            self.quantized.__exit__(None, None, None)
            self._removed = True
        return self.module

    def __enter__(self) -> "QuantizedNetwork":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def layer_report(self) -> list[dict]:
        """Per quantized tensor: bits, clipping value, MSE and SQNR (of what ran so far; errors of
        activations only with ``quantize(..., measure_error=True)``), entropy."""
        return report.layer_report(self.quantized)

    def entropy(self) -> dict[str, float]:
        """Entropy and Huffman bits of the integer codes (with ``QuantConfig.measure_entropy``)."""
        return report.entropy_summary(self.quantized)
