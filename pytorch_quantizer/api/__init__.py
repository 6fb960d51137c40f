"""The public API, re-exported by ``pytorch_quantizer``: the recipe (configuration, methods),
``quantize`` / ``save`` / ``load`` / ``export_onnx``, evaluation, and the one exception type."""
