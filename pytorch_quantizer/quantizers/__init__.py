"""One-tensor quantizers: the recipe configuration, the registry of quantizer kinds, quantization
of one tensor from its statistics (plan, then apply), the other seeds' quantizers, and the kernel
backend behind them."""
