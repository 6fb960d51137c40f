"""Safe file formats: loads that never execute pickled code, atomic writes, checked statistics,
rounding, QAT and saved-model files, and the fingerprint of float weights."""
