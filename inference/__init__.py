"""Command line, model registry, data loading and evaluation of the PTQ inference simulator."""
