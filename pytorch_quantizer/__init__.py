"""PTQ simulator library: GEMMLOWP fake quantization, ACIQ clipping, bit/bin allocation, bias
correction, statistics observers and model transformation (Banner et al., NeurIPS 2019).

Importing the package does no work: ACIQ constants are solved on first use, kernels load on demand.
"""

__version__ = "0.1.0"
