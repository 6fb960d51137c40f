"""--export-onnx / --verify-onnx in a run: the library's ONNX QDQ export of the calibrated model,
then, when asked, onnxruntime beside the simulator on every evaluated batch."""
from __future__ import annotations

from pathlib import Path

import torch

from inference.errors import UserError


def export_and_verify(network, path: Path, verify: bool, example: torch.Tensor, loader, device: torch.device,
                      process) -> dict:
    """Write the export; with ``verify`` run it beside the simulator. Returns the figures for the results."""
    from inference.onnx_runtime import RuntimeModel
    from pytorch_quantizer.api.evaluation import evaluate
    from pytorch_quantizer.api.functions import export_onnx

    if process.distributed:
        raise UserError("--export-onnx writes one file from one process: run without torchrun")
    exported = export_onnx(network, path, example)
    figures = {"onnx_file": str(path), "onnx_encodings": str(exported.encodings_path),
               "onnx_quantized_tensors": exported.quantized_tensors}
    if not verify:
        return figures
    runtime_model = RuntimeModel(path)
    runtime, fidelity = evaluate(runtime_model, loader, device, reference=network.module)
    return figures | {"onnx_integer_kernels": runtime_model.integer_kernels, "onnx_top1": runtime.top1,
                      "onnx_top5": runtime.top5, "onnx_simulator_top1": fidelity.reference.top1,
                      "onnx_top1_agreement": fidelity.top1_agreement,
                      "onnx_max_abs_logit_diff": fidelity.max_abs_logit_diff,
                      "onnx_mean_abs_logit_diff": fidelity.mean_abs_logit_diff,
                      "onnx_max_flipped_margin": fidelity.max_flipped_margin}
