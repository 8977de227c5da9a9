"""Input files checked before they are opened: a FIFO or a device would block or never end, a
folder or a symlink loop would fail with an error that names the wrong cause."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import DynamicIDError


def check_regular_file(path: object, what: str, error: type[DynamicIDError]) -> Path:
    """``path`` as a Path after checking it names a regular file (symlinks followed); otherwise
    ``error`` saying what it is instead. ``what`` names the file in the message ("photo")."""
    if not isinstance(path, (str, os.PathLike)):
        raise error(f"{what} must be a file path (str or Path), not {type(path).__name__}")
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{what} {file} is a symlink loop; point it at a real file") from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            dangling = os.path.lexists(file)
            raise error(f"{what} {file} {'is a broken symlink' if dangling else 'does not exist'}; check the path") from exc
        raise error(f"{what} {file} cannot be read ({exc.strerror}); check its permissions") from exc
    except ValueError as exc:  # a NUL character in the path
        raise error(f"{what} {file!r} is not a valid path ({exc})") from exc
    if stat.S_ISDIR(mode):
        raise error(f"{what} {file} is a folder; give the path of a file inside it")
    if not stat.S_ISREG(mode):
        raise error(f"{what} {file} is not a regular file (it is a FIFO, device or socket); give the path of a file")
    return file
