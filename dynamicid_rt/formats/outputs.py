"""Output images: the path is checked before any model work, and written atomically in the format
its extension names (PNG with a ``parameters`` chunk; JPEG and WebP with the parameters in the
EXIF UserComment, as AUTOMATIC1111 writes them)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ..errors import OutputError
from ..files.atomic import TMP_SUFFIX, atomic_write

if TYPE_CHECKING:
    from PIL import Image

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(path.anchor or ".")


def _check_folder_writable(folder: Path) -> None:
    """Create and remove a probe file: the only test that also holds for root, read-only mounts
    and network folders."""
    probe = folder / f".probe.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"output folder {folder} is not writable ({exc.strerror}); choose another --out folder") from exc


def check_output_path(path: str | Path, inputs: Iterable[str | Path] = (), image_format: str | None = None) -> Path:
    """The absolute output path, after checking that writing it is safe; creates nothing.

    Refused with :class:`OutputError`: a folder, a path under a file, one of ``inputs`` (the
    request's photos: a user's file is never a write target), an unwritable folder, an extension
    that is not an image format or differs from ``image_format``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise OutputError(f"output {path!r} must be a file path (str or Path), not {type(path).__name__}")
    try:
        path = Path(path).expanduser().absolute()
    except (ValueError, RuntimeError) as exc:  # a NUL character, an unknown ~user
        raise OutputError(f"output {path!r} is not a valid path ({exc})") from None
    suffix = path.suffix.lower()
    if path.is_dir():
        raise OutputError(f"output {path} is a folder; give a file name such as {path / 'image.png'}")
    if not suffix:
        raise OutputError(f"output {path} has no extension; end it with .png, .jpg or .webp")
    if suffix not in IMAGE_FORMATS:
        raise OutputError(f"output {path}: extension {path.suffix} is not an image format written here; use .png, .jpg or .webp")
    if image_format is not None and IMAGE_FORMATS[suffix] != image_format.upper():
        raise OutputError(f"output {path} names {IMAGE_FORMATS[suffix]} but {image_format.upper()} was asked; make the extension match")
    for given in inputs:
        if given is not None and _same_file(path, Path(given).expanduser()):
            raise OutputError(f"output {path} is one of the input files ({given}); choose another --out so the input is kept")
    folder = _existing_ancestor(path)
    if not folder.is_dir():
        raise OutputError(f"output {path}: {folder} is not a folder; choose an --out inside a folder")
    if path.exists() and not path.is_file():
        raise OutputError(f"output {path} exists and is not a regular file; choose another --out")
    _check_folder_writable(folder)
    return path


def save_image(image: "Image.Image", path: str | Path, parameters: str) -> Path:
    """Write ``image`` atomically in the format of ``path``'s extension, with its parameters."""
    path = Path(path)
    image_format = IMAGE_FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise OutputError(f"output {path}: extension {path.suffix or '(none)'} is not .png, .jpg or .webp")
    if image_format == "PNG":
        from .pngmeta import save_png

        return save_png(image, path, parameters)
    exif = image.getexif()
    # EXIF UserComment: an 8-byte character-code header, then the text (A1111's layout).
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + parameters.encode("utf-16-be")
    options = {"quality": 95} if image_format == "JPEG" else {"quality": 95, "method": 4}
    with atomic_write(path) as f:
        image.convert("RGB").save(f, format=image_format, exif=exif, **options)
    return path
