"""PNG parameters in the form AUTOMATIC1111 writes (a ``parameters`` text chunk), so image browsers
show them and a saved image can restore its settings. The text is read by :mod:`.infotext` (linear
time, capped); every field is converted here, and a value that does not convert is kept as text."""
from __future__ import annotations

import json
import logging
import math
import numbers
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .._version import __version__
from ..errors import DynamicIDError, ImageError, RequestError
from ..files.atomic import atomic_write
from ..files.checks import check_regular_file
from ..sampling.names import canonical_sampler
from .infotext import MAX_TEXT_CHARS, a1111_lines, exact_prompt_fields, quote, read_infotext

if TYPE_CHECKING:
    from PIL import Image

    from ..results import Result

log = logging.getLogger(__name__)

# Our sampler -> A1111 (>= 1.9) "Sampler" and "Schedule type". A1111 writes "Automatic" for a
# sampler's own default schedule, which for DPM++ 2M is Karras: plain DPM++ 2M is "Uniform" there.
A1111_SAMPLERS = {
    "ddim": ("DDIM", "Automatic"),
    "pndm": ("PLMS", "Automatic"),  # diffusers' PNDM with skip_prk_steps (SD1.5's) is PLMS
    "euler": ("Euler", "Automatic"),
    "euler_a": ("Euler a", "Automatic"),
    "dpmpp_2m": ("DPM++ 2M", "Uniform"),
    "dpmpp_2m_karras": ("DPM++ 2M", "Karras"),
    "lcm": ("LCM", "Automatic"),  # A1111 >= 1.8
}
# Written as "Version": A1111 parses a "v1.x" value and turns on its backward-compatibility
# options for old versions, so the value must not look like one.
VERSION = f"dynamicid-rt {__version__}"
MAX_LIST_ITEMS = 64  # boxes, strengths, face prompts, people, LoRAs: a handful each in practice
_INT = re.compile(r"[+-]?[0-9]{1,20}")
_SIZE = re.compile(r"([0-9]{1,6})x([0-9]{1,6})")
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
TAESD_VAE = "taesd"  # the "VAE" value of an image decoded by the tiny autoencoder (Request.decoder "taesd")


def format_parameters(result: "Result", index: int = 0, *, lora_hashes: Mapping[str, str] | None = None) -> str:
    """The settings of image ``index`` of ``result`` as AUTOMATIC1111 (>= 1.9) writes them in a
    PNG ``parameters`` chunk, plus DynamicID's own fields. ``lora_hashes`` (LoRA name -> short
    hash; default ``result.lora_hashes``) is written as A1111's "Lora hashes" field; the
    ``<lora:name:w>`` tags stay in the prompt."""
    req = result.request
    sampler, schedule = A1111_SAMPLERS.get(result.sampler, (result.sampler, "Automatic"))
    fields: list[tuple[str, Any]] = [
        ("Steps", req.steps),
        ("Sampler", sampler),
        ("Schedule type", schedule),
        ("CFG scale", req.guidance),
        ("Seed", result.seeds[index]),
        ("Size", f"{req.width}x{req.height}"),
    ]
    # The decoder of the final image, where A1111 names its VAE choice: the tiny autoencoder as "taesd".
    vae = TAESD_VAE if getattr(req, "decoder", "vae") == "taesd" else (result.model.vae if result.model is not None else "")
    if result.model is not None:
        fields += [("Model hash", result.model.hash), ("Model", result.model.name)]
    fields.append(("VAE", vae))
    if getattr(req, "init_image", None) is not None:  # img2img and inpainting, as A1111 writes them
        fields.append(("Denoising strength", req.strength))
        if req.mask is not None:
            fields.append(("Mask blur", req.mask_blur))
    if lora_hashes is None:  # the LoRAs the pipeline merged (a result-like object may have none)
        lora_hashes = getattr(result, "lora_hashes", None)
    if lora_hashes:
        fields.append(("Lora hashes", format_lora_hashes(lora_hashes)))
    fields.append(("DynamicID identities", len(req.identities)))
    if req.identities:
        boxes = ";".join(",".join(f"{v:g}" for v in b) for b in req.resolved_boxes())
        fields += [
            ("ID scale", _format_id_scale(req.id_scale)),
            ("ID boxes", boxes),
            ("ID gating", "on" if result.gating else "off"),
            ("ID boost", req.boost),
            ("ID boost steps", req.boost_steps),
            ("ID mix", req.mix),
            ("Face prompts", json.dumps([i.face_prompt or "" for i in req.identities], ensure_ascii=False)),
            ("People", json.dumps([i.name for i in req.identities], ensure_ascii=False)),
        ]
        if result.identity_scores:
            fields.append(("ID match", ", ".join(m.label() for m in result.identity_scores[index])))
    lines = a1111_lines(req.prompt, req.negative_prompt)
    exact = exact_prompt_fields(req.prompt, req.negative_prompt, lines)
    fields += [("Backend", result.backend), ("Version", VERSION)]
    # A1111 leaves out empty fields; the exact prompt fields are quoted already.
    tail = ", ".join([f"{k}: {quote(str(v))}" for k, v in fields if v != ""] + [f"{k}: {v}" for k, v in exact])
    return f"{lines}\n{tail}"


def format_lora_hashes(hashes: Mapping[str, str]) -> str:
    """A1111's "Lora hashes" value, ``name: hash, name: hash``. As A1111 does, commas and colons
    are dropped from the names (the value could not be split otherwise)."""
    parts = []
    for name, short in hashes.items():
        clean = str(name).replace(",", "").replace(":", "").strip()
        if not clean or not isinstance(short, str) or not re.fullmatch(r"[0-9A-Za-z]{1,64}", short):
            raise RequestError(f"LoRA hash {name!r}: {short!r}: give a name and its short hex hash (A1111: 12 hex digits)")
        parts.append(f"{clean}: {short}")
    return ", ".join(parts)


def _format_id_scale(value: Any) -> str:
    """One number, or per-person numbers joined by ";" like the boxes (no comma: no quoting)."""
    if isinstance(value, numbers.Real):
        return str(value)
    return ";".join(str(float(v)) for v in value)


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse an A1111 ``parameters`` text (1.6's "Sampler: DPM++ 2M Karras" or >= 1.9's separate
    "Schedule type") back into request fields. Keys we do not use, a sampler we cannot run and
    values that do not read as their field's type are kept as text under "extra".

    Raises only :class:`~dynamicid_rt.errors.RequestError` (text that is not a str, longer than
    :data:`~dynamicid_rt.formats.infotext.MAX_TEXT_CHARS`, or with too many fields)."""
    info = read_infotext(text)
    raw = dict(info.fields)
    out: dict[str, Any] = {
        "prompt": raw.pop("Prompt", info.prompt),  # exact texts, where the lines could not hold them
        "negative_prompt": raw.pop("Negative prompt", info.negative_prompt),
    }
    schedule = raw.pop("Schedule type", None)  # read with "Sampler"
    for key, value in raw.items():
        name, read = _FIELDS.get(key, (None, None))
        try:
            if key == "Sampler":
                name, converted = "sampler", sampler_from_a1111(value, schedule)
                if converted is None:
                    raise ValueError("a sampler dynamicid-rt does not have")
            elif key == "VAE" and value == TAESD_VAE:
                name, converted = "decoder", "taesd"
            elif key == "Size":
                size = _SIZE.fullmatch(value)
                if size is None:
                    raise ValueError("not WIDTHxHEIGHT")
                out["width"], out["height"] = int(size[1]), int(size[2])
                continue
            elif read is None:
                out.setdefault("extra", {})[key] = value
                continue
            else:
                converted = read(value)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            log.warning("image parameters: %s %r not read (%s); kept as text", key, value[:80], exc)
            out.setdefault("extra", {})[key] = value
            continue
        out[name] = converted
    return out


def _int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError("not a whole number")
    return int(text)


def _float(text: str) -> float:
    if len(text) > 64:
        raise ValueError("too long for a number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _floats(text: str, count: int | None = None) -> list[float]:
    values = text.split(";" if count is None else ",")
    if len(values) > MAX_LIST_ITEMS or (count is not None and len(values) != count):
        raise ValueError(f"expected {count or f'at most {MAX_LIST_ITEMS}'} numbers")
    return [_float(v) for v in values]


def _id_scale(text: str) -> float | list[float]:
    return _floats(text) if ";" in text else _float(text)


def _boxes(text: str) -> list[tuple[float, ...]]:
    boxes = [b for b in text.split(";") if b]
    if len(boxes) > MAX_LIST_ITEMS:
        raise ValueError(f"more than {MAX_LIST_ITEMS} boxes")
    return [tuple(_floats(b, count=4)) for b in boxes]


def _gating(text: str) -> str:
    if text not in ("on", "off", "auto"):
        raise ValueError("not on, off or auto")
    return text


def _texts(text: str) -> list[str]:
    """A JSON list of texts (face prompts, names)."""
    values = json.loads(text)
    if not isinstance(values, list) or len(values) > MAX_LIST_ITEMS or not all(isinstance(v, str) for v in values):
        raise ValueError(f"not a JSON list of at most {MAX_LIST_ITEMS} texts")
    return values


def parse_lora_hashes(text: str) -> dict[str, str]:
    """A1111's "Lora hashes" value (``name: hash, name: hash``) as {name: hash}."""
    out = {}
    for part in text.split(","):
        name, colon, short = part.rpartition(":")
        if not colon or not name.strip() or not re.fullmatch(r"[0-9A-Za-z]{1,64}", short.strip()):
            raise ValueError(f"{part.strip()!r} is not 'name: hash'")
        out[name.strip()] = short.strip()
    if len(out) > MAX_LIST_ITEMS:
        raise ValueError(f"more than {MAX_LIST_ITEMS} LoRAs")
    return out


# A1111 field -> (our name, reader); "Sampler" and "Size" are read in parse_parameters.
_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "Steps": ("steps", _int),
    "CFG scale": ("guidance", _float),
    "Seed": ("seed", _int),
    "ID scale": ("id_scale", _id_scale),
    "ID boost": ("boost", _float),
    "ID boost steps": ("boost_steps", _int),
    "ID mix": ("mix", _float),
    "ID boxes": ("boxes", _boxes),
    "ID gating": ("gating", _gating),
    "Face prompts": ("face_prompts", _texts),
    "People": ("people", _texts),
    "Lora hashes": ("lora_hashes", parse_lora_hashes),
    "Denoising strength": ("strength", _float),
    "Mask blur": ("mask_blur", _int),
}


def sampler_from_a1111(sampler: str, schedule: str | None) -> str | None:
    """Our sampler for A1111's "Sampler" and "Schedule type" (absent before 1.9, where the sampler
    name carried the schedule: "DPM++ 2M Karras"); None when we have no such sampler."""
    if schedule == "Uniform":  # the sampler's plain schedule, as ours run it
        schedule = None
    elif schedule == "Automatic" and sampler == "DPM++ 2M":  # >= 1.9: DPM++ 2M's own schedule is Karras
        schedule = "Karras"
    try:
        return canonical_sampler(sampler, schedule)
    except RequestError:
        return None


def save_png(image: "Image.Image", path: str | Path, parameters: str) -> Path:
    """Write ``image`` as PNG with its parameters, atomically."""
    from PIL import Image, PngImagePlugin

    if not isinstance(image, Image.Image):
        raise RequestError(f"image is a {type(image).__name__}; pass a PIL image (e.g. Result.images[0])")
    if not isinstance(parameters, str):
        raise RequestError(f"parameters={parameters!r}: must be text (format_parameters makes it)")
    try:
        parameters.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(f"parameters hold U+{ord(parameters[exc.start]):04X} at position {exc.start}, which is not text "
                           "(a lone surrogate); give the text in UTF-8") from None
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    with atomic_write(path) as f:
        image.save(f, format="PNG", pnginfo=info)
    return Path(path)


def read_parameters(path: str | Path) -> str | None:
    """The parameters text of an image, or None when it has none: a PNG's ``parameters`` text
    chunk (one before the image data, where A1111 and we write it), or the EXIF UserComment of a
    JPEG or WebP (A1111's place for them). Raises :class:`~dynamicid_rt.errors.ImageError` for
    anything that is not a readable image file; no pixel data is decoded."""
    from PIL import Image

    file = check_regular_file(path, "image", ImageError)
    try:
        with Image.open(file) as im:
            text = im.info.get("parameters") if im.format == "PNG" else _exif_comment(im)
    except DynamicIDError:
        raise
    except Exception as exc:  # Pillow's parsers raise many types on hostile files (zTXt bombs, bad chunks)
        raise ImageError(f"cannot read parameters from {file} ({type(exc).__name__}: {exc}); it is not a readable image") from exc
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise ImageError(f"{file}: its parameters are {len(text)} characters, more than the {MAX_TEXT_CHARS} read here")
    return str(text) if text else None


def _exif_comment(im: "Image.Image") -> str | None:
    """The EXIF UserComment: an 8-byte character-code header, then the text (A1111: "UNICODE",
    UTF-16 big-endian unless a byte-order mark says otherwise)."""
    raw_exif = im.info.get("exif")
    if raw_exif is not None and len(raw_exif) > 4 * MAX_TEXT_CHARS:
        raise ImageError(f"{im.filename}: its EXIF block is {len(raw_exif)} bytes; refusing to parse that much")
    comment = im.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if isinstance(comment, str) or comment is None:
        return comment
    code, body = bytes(comment[:8]), bytes(comment[8:])
    if code == b"UNICODE\0":
        encoding = "utf-16" if body[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-16-be"
    elif code == b"ASCII\0\0\0":
        encoding = "ascii"
    else:  # undefined code: UTF-8 is what other tools write
        encoding, body = "utf-8", bytes(comment) if code.strip(b"\0") else body
    return body.decode(encoding, errors="replace").rstrip("\0")
