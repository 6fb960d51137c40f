"""Loading user-supplied torch files without executing pickled code; writing files atomically."""
from __future__ import annotations

import os
import pickle
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from pytorch_quantizer.errors import QuantizationError


SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"))


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not a regular file to read ("does not exist", "is a folder, not a file", "is a
    named pipe, not a regular file"), or None. Checked before opening: reading a named pipe that
    nobody writes would wait for ever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    kind = next((name for test, name in SPECIAL_FILES if test(mode)), None)
    return f"is {kind}, not a regular file" if kind is not None else None


def safe_torch_load(path: Path, fix: str):
    """``torch.load(path, weights_only=True)`` with every failure turned into a one-line QuantizationError.

    ``fix`` tells the user what to pass instead. A file that holds pickled Python objects other than
    tensors and plain containers is refused (its code is never run).
    """
    import torch

    problem = file_problem(path)
    if problem is not None and problem != "does not exist":
        raise QuantizationError(f"{path} {problem}; {fix}", code="not_a_file")
    if has_no_torch_save_header(path):
        raise QuantizationError(f"{path} is corrupt, truncated or not a torch.save file (it starts with neither a zip "
                         f"archive nor a pickle); {fix}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if unsafe:
            detail = unsafe[0].removeprefix("WeightsUnpickler error:").strip().split(" was not", 1)[0]
            raise QuantizationError(f"{path} would execute pickled code ({detail[:120]}); refusing to load it; {fix}") from None
        raise QuantizationError(f"{path} is corrupt, truncated or not a torch.save file; {fix}") from None
    except IsADirectoryError:
        raise QuantizationError(f"{path} is a folder, not a file; {fix}") from None
    except PermissionError:
        raise QuantizationError(f"{path} cannot be read (permission denied); {fix}") from None
    except Exception as error:  # noqa: BLE001 - whatever torch.load trips over, the cause is the file's content
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise QuantizationError(f"{path} is corrupt, truncated or not a torch.save file ({reason}); {fix}") from None


def check_weights(path: Path, payload: dict, fingerprint: str | None, made: str, fix: str) -> None:
    """A tool file records the fingerprint of the float weights it was ``made`` ("learned for", ...);
    another fingerprint (when this run's is given) is refused in one line naming both."""
    stored = payload.get("weights_fingerprint")
    if fingerprint is not None and stored != fingerprint:
        raise QuantizationError(f"{path} was {made} other weights (fingerprint {str(stored)[:12]}, this run's "
                                f"{fingerprint[:12]}); {fix}", code="made_for_other")


TORCH_SAVE_HEADERS = (b"PK\x03\x04", b"\x80")  # the zip format since torch 1.6; the legacy pickle format


def load_tool_file(path: Path, file_format: str, version: int, description: str, fix: str,
                   unfingerprinted: tuple[int, ...] = ()) -> dict:
    """A tensor-dict file this tool wrote (``{"format": file_format, "version": version, ...}``),
    loaded safely; QuantizationError naming ``description`` when it is another kind of file, and
    saying so when it is of an earlier ``unfingerprinted`` version (which did not record the weights
    it was made for)."""
    payload = safe_torch_load(path, fix)
    if isinstance(payload, dict) and payload.get("format") == file_format and payload.get("version") in unfingerprinted:
        raise QuantizationError(f"{path} was written by an earlier version of this tool ({description} format "
                                f"{payload['version']}), which did not record the weights it was made for; {fix}",
                                code="old_format")
    if not isinstance(payload, dict) or payload.get("format") != file_format or payload.get("version") != version:
        raise QuantizationError(f"{path} is not a {description} of this tool (format {file_format} version {version}); {fix}")
    return payload



def has_no_torch_save_header(path: Path) -> bool:
    """True for a readable file that cannot be a torch.save file (text, an image, random bytes):
    said so plainly instead of letting the unpickler read text as opcodes (a leading ``c`` is GLOBAL)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False  # torch.load reports it below
    return bool(head) and not head.startswith(TORCH_SAVE_HEADERS)


def temporary_prefix(path: Path, pid: int) -> str:
    return f".{path.name}.{pid}."


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files that a writer of ``path`` left behind when it was killed (its process
    id, in the file name, no longer runs); files of live writers are left alone."""
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        pid_text = candidate.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            candidate.unlink(missing_ok=True)
        except PermissionError:  # another user's live process
            continue


def ordinary_mode(path: Path) -> int:
    """The permissions an ordinary write of ``path`` would leave: an existing file keeps its own, a
    new one gets 0666 less the process's umask (a temporary file is created 0600 whatever the umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else by
    setting and restoring it."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
        return mask


def write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(temporary_path)`` into a temporary file beside ``path``, then rename it over ``path``:
    a reader never sees half a file and an interrupted write leaves the previous file intact; the
    file gets the permissions an ordinary write would give it (``ordinary_mode``).
    Temporaries of killed earlier writers are removed first; a full or read-only location is an
    QuantizationError naming the file."""
    try:
        remove_stale_temporaries(path)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path, os.getpid()), suffix=".tmp")
        os.close(handle)
    except OSError as error:
        raise QuantizationError(f"cannot write {path}: {error.strerror or error}; choose a writable folder") from None
    try:
        write(temporary)
        os.chmod(temporary, ordinary_mode(path))
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise QuantizationError(f"cannot write {path}: {error.strerror or error}; free space or choose another location") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
