"""Atomic file writes: a reader never sees a half-written output or cache file.

The temporary beside the target is named ``.<name>.<pid>.<random>.dynamicid-tmp``: a write cut short
removes it, and one killed outright (SIGKILL, power loss) is swept by the next write to that folder
once its process is gone. Files are created with mode 0666 minus the umask, like any other tool's.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Iterator

from ..errors import OutputError

TMP_SUFFIX = ".dynamicid-tmp"

# Why a write fails that the user must fix, and how (the errors a full or locked disk gives).
_WRITE_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another folder",
    errno.EACCES: "permission denied; check the folder's permissions or choose another folder",
    errno.EPERM: "operation not permitted; check the folder's permissions or choose another folder",
    errno.EROFS: "the file system is read-only; choose a folder on a writable disk",
}
# Libraries that write in Rust or C++ (safetensors, torch's zip writer) report the OS error as text.
_WRITE_ERROR_TEXTS = {os.strerror(code): code for code in _WRITE_ADVICE}


def write_error(path: str | Path, exc: BaseException) -> OutputError | None:
    """The one-line error for a file that could not be written because of the disk (full,
    read-only, no permission), as for ``--out``; None for any other failure (a bug to report)."""
    code = exc.errno if isinstance(exc, OSError) else next((c for text, c in _WRITE_ERROR_TEXTS.items() if text in str(exc)), None)
    if code not in _WRITE_ADVICE:
        return None
    return OutputError(f"{path} cannot be written: {_WRITE_ADVICE[code]}")


# Free space below which a failure of a write-heavy stage is blamed on the disk, whatever a library
# reports (ONNX Runtime reads back a graph that a full disk cut short as "InvalidProtobuf").
LOW_SPACE_BYTES = 64 * 1024 * 1024


def disk_error(folder: str | Path, exc: BaseException) -> OutputError | None:
    """:func:`write_error`, or the full-disk error when ``folder``'s disk is (nearly) full whatever
    ``exc`` says: a full disk anywhere in an export gives the one line."""
    error = write_error(folder, exc)
    if error is not None:
        return error
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free < LOW_SPACE_BYTES:
        return OutputError(f"{folder} cannot be written: {_WRITE_ADVICE[errno.ENOSPC]} ({free // 2**20} MiB left; "
                           f"the export stopped with {type(exc).__name__})")
    return None


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file beside ``path`` and move it into place only on success. A full
    disk or a permission error raises :func:`write_error`'s OutputError; so do a path that is no
    path, a folder, and any other error of the file system (``/proc``, a path under a file)."""
    if not isinstance(path, (str, os.PathLike)):
        raise OutputError(f"output path {path!r} must be a file path (str or Path), not {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name inside it")
    try:
        with _atomic_write(path, mode) as f:
            yield f
    except Exception as exc:
        error = write_error(path, exc)
        if error is None and isinstance(exc, OSError):
            error = OutputError(f"{path} cannot be written ({exc.strerror or exc}); choose another file or folder")
        if error is None:
            raise
        raise error from exc


@contextlib.contextmanager
def _atomic_write(path: Path, mode: str) -> Iterator[IO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    # os.open applies the umask (tempfile.mkstemp would make the file 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sweep_stale_temporaries(folder: Path) -> None:
    """Delete temporaries of our naming whose writing process is gone."""
    try:
        candidates = list(Path(folder).glob(f".*{TMP_SUFFIX}"))
    except OSError:
        return
    for tmp in candidates:
        pid = tmp.name[: -len(TMP_SUFFIX)].rsplit(".", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists but belongs to someone else (or the platform cannot tell)
    return True
