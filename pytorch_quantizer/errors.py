"""Exceptions the library raises for problems in its inputs (files, configuration)."""


class InputError(ValueError):
    """Bad input that the caller can fix; the message says what and how, on one line."""
