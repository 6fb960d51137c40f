"""The one exception type for problems the user can fix (bad flags, missing files)."""
from pytorch_quantizer.errors import QuantizationError


class UserError(QuantizationError):
    """A problem with the user's input; the CLI prints its message on one line and exits 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) raised in the main thread like Ctrl-C, so every cleanup that runs for an
    interrupt (mlflow run marked KILLED, temporary files removed) runs for it too."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class PeerProcessFailed(UserError):
    """A collective operation of a torchrun run failed because another process of the run stopped
    (that process reports why)."""
