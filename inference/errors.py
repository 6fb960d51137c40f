"""The one exception type for problems the user can fix (bad flags, missing files)."""
from pytorch_quantizer.errors import InputError


class UserError(InputError):
    """A problem with the user's input; the CLI prints its message on one line and exits 2."""
