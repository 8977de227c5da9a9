"""Photos and saved identities sent as base64: decoded with caps, then checked as the CLI checks
files. Nothing a client sends is ever used as a path: content only."""
from __future__ import annotations

import base64
import binascii
import contextlib
import io
import re
import threading
import zipfile

import numpy as np
from PIL import Image

from .. import ImageError, RequestError, load_photo

# Formats the CLI names in its messages. Others (EPS, PSD...) widen what a crafted file can reach.
PHOTO_FORMATS = ("PNG", "JPEG", "WEBP")
# Decoded pixels a photo may have before load_photo downscales it to 4096 px: a small file that
# declares a huge canvas (a decompression bomb) is refused from its header, before decoding.
MAX_PHOTO_PIXELS = 64 * 1024 * 1024
# Working memory of decoding one photo, per pixel, beyond the file's own samples (bands x bytes):
# the RGB result, plus float32 compositing for transparency, plus float64 for 16-bit greyscale
# (dynamicid_rt.identity.photos). A 16-bit RGBA pixel costs 8 + 3 + 28 bytes.
_RGB_BYTES, _ALPHA_BYTES, _WIDE_GREY_BYTES = 3, 28, 8
# Decoded bytes all photos being decoded at once may take; one photo above it is refused from its
# header, the others wait their turn (so N concurrent uploads never take N times the memory).
DEFAULT_DECODE_BUDGET = 1024 * 1024 * 1024
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


class DecodeBudget:
    """Admission control of photo decoding: the estimated working bytes of the photos decoded at
    once stay within ``limit``; a photo waits until its share is free. ``peak`` is the most ever
    reserved (what the memory test reads)."""

    def __init__(self, limit: int = DEFAULT_DECODE_BUDGET) -> None:
        self.limit = int(limit)
        self.peak = 0
        self._used = 0
        self._free = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int, what: str):
        if nbytes > self.limit:
            raise ImageError(f"{what} needs about {nbytes // 2**20} MiB to decode, more than the server's "
                             f"{self.limit // 2**20} MiB for photos; send a smaller photo (fewer pixels, 8-bit, no transparency)")
        with self._free:
            while self._used + nbytes > self.limit:
                self._free.wait()
            self._used += nbytes
            self.peak = max(self.peak, self._used)
        try:
            yield
        finally:
            with self._free:
                self._used -= nbytes
                self._free.notify_all()


def decode_cost(image: Image.Image) -> int:
    """Estimated bytes that decoding ``image`` (opened, not loaded) and making it RGB take."""
    width, height = image.size
    raw = str(image.tile[0].args if image.tile else "")  # the file's sample layout, e.g. "RGBA;16B"
    wide = "16" in raw or image.mode in ("I", "F") or image.mode.startswith("I;16")
    per_pixel = len(image.getbands()) * (2 if wide else 1) + _RGB_BYTES
    if "A" in image.getbands() or "transparency" in image.info:
        per_pixel += _ALPHA_BYTES
    if wide and len(image.getbands()) == 1:
        per_pixel += _WIDE_GREY_BYTES
    return width * height * per_pixel


def decode_photo(text: str, what: str, budget: DecodeBudget | None = None) -> np.ndarray:
    """The photo in ``text`` (base64) as the pipeline reads photos: RGB uint8, EXIF orientation
    applied, at least 64 px a side, more than 4096 px downscaled (``dynamicid_rt.load_photo``).
    With ``budget``, the decoding waits for (and is refused beyond) its share of memory."""
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
    with budget.reserve(decode_cost(image), what) if budget is not None else contextlib.nullcontext():
        try:
            image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageError(f"{what} could not be decoded ({exc}); the file may be truncated or corrupt") from None
        image.filename = what  # load_photo names the photo in its messages by this attribute
        pixels = load_photo(image)
        del image
        return pixels


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
                    if dtype.hasobject:
                        return f"{member.filename} is a pickle (an object array), which is never loaded"
                    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > member.file_size:
                        return f"{member.filename} declares more data than it holds"
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, TypeError):
        return "not an .npz archive"
    return None
