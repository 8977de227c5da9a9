"""Photos and saved identities sent as base64: decoded with caps, then checked as the CLI checks
files. Nothing a client sends is ever used as a path: content only."""
from __future__ import annotations

import base64
import binascii
import io
import re
import zipfile

import numpy as np
from PIL import Image

from .. import ImageError, RequestError, load_photo

# Formats the CLI names in its messages. Others (EPS, PSD...) widen what a crafted file can reach.
PHOTO_FORMATS = ("PNG", "JPEG", "WEBP")
# Decoded pixels a photo may have before load_photo downscales it to 4096 px: a small file that
# declares a huge canvas (a decompression bomb) is refused from its header, before decoding.
MAX_PHOTO_PIXELS = 64 * 1024 * 1024
# A saved identity is tens of kB; its members are few and small once uncompressed.
MAX_IDENTITY_BYTES = 4 * 1024 * 1024
_IDENTITY_MEMBERS = {f"{name}.npy" for name in ("meta", "tokens", "base_tokens", "landmarks", "thumbnail", "embedding")}
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.ASCII)


def decode_base64(text: str, what: str) -> bytes:
    """Bytes of a base64 field (an optional ``data:...;base64,`` prefix and whitespace allowed)."""
    body = _DATA_URL.sub("", text.strip(), count=1)
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{what} is not base64 data; send the file's content base64-encoded (never a path)") from None


def decode_photo(text: str, what: str) -> np.ndarray:
    """The photo in ``text`` (base64) as the pipeline reads photos: RGB uint8, EXIF orientation
    applied, at least 64 px a side, more than 4096 px downscaled (``dynamicid_rt.load_photo``)."""
    data = decode_base64(text, what)
    too_big = f"more than {MAX_PHOTO_PIXELS // 2**20} megapixels; send a smaller photo"
    try:
        image = Image.open(io.BytesIO(data), formats=PHOTO_FORMATS)
    except Image.DecompressionBombError:  # PIL's own limit, far above ours, hit while reading the header
        raise ImageError(f"{what} declares {too_big}") from None
    except Exception:  # PIL raises many types for data that is no image it may open
        raise ImageError(f"{what} is not a PNG, JPEG or WebP image") from None
    width, height = image.size
    if width * height > MAX_PHOTO_PIXELS:
        raise ImageError(f"{what} is {width}x{height} px, {too_big}")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{what} could not be decoded ({exc}); the file may be truncated or corrupt") from None
    image.filename = what  # load_photo names the photo in its messages by this attribute
    return load_photo(image)


def identity_bytes(text: str, what: str) -> bytes:
    """The ``.npz`` bytes of a saved identity, after checking that reading it stays small: an
    ``Identity.save`` archive's members only, each array's declared size within its data."""
    data = decode_base64(text, what)
    if len(data) > MAX_IDENTITY_BYTES:
        raise RequestError(f"{what} is {len(data)} bytes; a saved identity is at most {MAX_IDENTITY_BYTES} bytes")
    problem = _identity_archive_problem(data)
    if problem:
        raise RequestError(f"{what} is not a saved identity ({problem}); send the content of a file Identity.save wrote")
    return data


def _identity_archive_problem(data: bytes) -> str | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            names = {m.filename for m in members}
            if not names <= _IDENTITY_MEMBERS or "tokens.npy" not in names or len(names) != len(members):
                return f"members {sorted(names)[:8]}"
            if sum(m.file_size for m in members) > MAX_IDENTITY_BYTES:
                return "it unpacks to more than the size of an identity"
            for member in members:
                with archive.open(member) as f:
                    read_header = _NPY_HEADER_READERS.get(np.lib.format.read_magic(f))
                    if read_header is None:
                        return f"{member.filename} is not an array numpy.save writes"
                    shape, _, dtype = read_header(f)
                    if dtype.hasobject or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > member.file_size:
                        return f"{member.filename} declares more data than it holds"
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, TypeError):
        return "not an .npz archive"
    return None
