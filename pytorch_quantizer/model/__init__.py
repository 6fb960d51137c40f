"""The hooked model: a BN-folded copy with a plan per Conv2d / Linear layer, weights quantized
once, activation hooks keyed by module name, observers that collect statistics, and its measures."""
