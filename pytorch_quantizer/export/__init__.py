"""Export of a calibrated quantized model for integer runtimes (ONNX QDQ)."""
