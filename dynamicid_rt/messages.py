"""One-line user messages for the errors the command line reports (exit code 1)."""
from __future__ import annotations

import errno

_OS_ADVICE = {
    errno.ENOENT: "does not exist; check the path",
    errno.EACCES: "cannot be read or written here (permission denied); check its permissions or choose another path",
    errno.EPERM: "cannot be read or written here (operation not permitted); check its permissions",
    errno.EISDIR: "is a folder where a file was expected; give the file inside it",
    errno.ENOTDIR: "is not a folder (a file stands where a folder was expected); check the path",
    errno.ENOSPC: "cannot be written: the disk is full; free some space",
    errno.EROFS: "cannot be written: the file system is read-only; choose another path",
}


def user_message(exc: BaseException) -> str:
    """``exc`` as one line saying what is wrong and how to fix it."""
    if isinstance(exc, OSError) and exc.errno in _OS_ADVICE:
        where = exc.filename if exc.filename is not None else "a file"
        return f"{where} {_OS_ADVICE[exc.errno]}"
    return " ".join(str(exc).split()) or type(exc).__name__
