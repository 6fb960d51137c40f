"""The one exception type of the library."""
from __future__ import annotations


class QuantizationError(ValueError):
    """Bad input that the caller can fix: a configuration, a model, a file. The message says what
    and how, on one line, and names configuration fields (``weights.per_channel``), never CLI flags.

    ``code``: a stable name of the problem (e.g. ``"allocation_needs_per_channel"``) that a front end
    (the CLI) maps to its own wording; ``field``: the configuration field concerned, where there is
    one; ``detail``: the cause in a few words, for a front end that words the rest itself.
    """

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None,
                 detail: str | None = None):
        super().__init__(message)
        self.code = code
        self.field = field
        self.detail = detail
