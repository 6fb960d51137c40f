"""Methods that transform the float model or learn on calibration data around the quantizer:
cross-layer equalization, AdaRound and block reconstruction, QAT, activation bias correction, the
other seeds' activation calibration."""
