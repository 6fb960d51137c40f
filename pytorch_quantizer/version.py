"""The library version, recorded in the files it writes."""

__version__ = "0.2.0"
