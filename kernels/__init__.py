"""Fused fake-quantization kernels as torch.library custom ops (namespace ``ptq_kernels``).

C++/CUDA sources live in ``csrc/``; ``build.py`` compiles and loads them; ``fake.py`` holds the
fake (meta) kernels. Importing this package loads nothing: use ``pytorch_quantizer.quantizers.backend``.
"""
