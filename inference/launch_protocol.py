"""How the processes started by ``launch.py`` hand their one error line to it: through torchrun's
per-process error file (TORCHELASTIC_ERROR_FILE, read back by torchrun into ChildFailedError),
in the format torchrun reads ({"message": text, "timestamp": seconds})."""
from __future__ import annotations

import json
import os
import time

LAUNCHER_VARIABLE = "PTQ_LAUNCHED"
ERROR_FILE_VARIABLE = "TORCHELASTIC_ERROR_FILE"


def launched() -> bool:
    """True in a process started by ``launch.py`` through torchrun (which names its error file)."""
    return os.environ.get(LAUNCHER_VARIABLE) == "1" and bool(os.environ.get(ERROR_FILE_VARIABLE))


def record_for_launcher(line: str, consequence: bool = False) -> None:
    """``consequence``: this process failed only because another one stopped (its line comes first)."""
    with open(os.environ[ERROR_FILE_VARIABLE], "w") as handle:
        json.dump({"message": line, "timestamp": str(int(time.time())), "consequence": consequence}, handle)


def first_error_line(failures) -> str | None:
    """The line of the process that failed first (torchrun's ProcessFailure objects): causes before
    consequences, then the earliest, then the lowest rank; None if no process recorded one."""
    recorded = [failure for failure in failures if isinstance(failure.message, str) and failure.message
                and os.path.isfile(failure.error_file)]
    if not recorded:
        return None
    return min(recorded, key=lambda failure: (bool(failure.error_file_data.get("consequence")), failure.timestamp,
                                              failure.local_rank)).message
