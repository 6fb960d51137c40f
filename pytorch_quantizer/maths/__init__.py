"""Pure tensor maths, no state and no modules: GEMMLOWP quantization, ACIQ clipping, bit / bin
allocation, bias correction, statistics, entropy, the level sets of the other seeds, weight grids."""
