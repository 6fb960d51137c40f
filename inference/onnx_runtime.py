"""An exported ONNX model run by onnxruntime (CPU execution provider), called like a torch model."""
from __future__ import annotations

from pathlib import Path

import torch

from inference.errors import UserError


class RuntimeModel(torch.nn.Module):
    """An onnxruntime session (CPU execution provider) called like a model: images -> logits.
    ``integer_kernels``: nodes of the session's optimized graph that compute in integers
    (QLinear*, *Integer), the Conv / Gemm that onnxruntime fused with their Q / DQ."""

    def __init__(self, path: Path):
        super().__init__()
        import tempfile
        from collections import Counter

        import onnx
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        with tempfile.TemporaryDirectory() as folder:
            options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
            try:
                self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as error:  # noqa: BLE001 - onnxruntime raises its own classes for any refusal
                raise UserError(f"--verify-onnx: onnxruntime cannot load {path}: {first_line(error)}") from None
            operators = Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
        self.integer_kernels = sum(count for op, count in operators.items()
                                   if op.startswith("QLinear") or op.endswith("Integer"))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        try:
            (logits,) = self.session.run(["logits"], {"images": images.detach().float().cpu().numpy()})
        except Exception as error:  # noqa: BLE001
            raise UserError(f"--verify-onnx: onnxruntime failed on a batch: {first_line(error)}") from None
        return torch.from_numpy(logits).to(images.device)


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
