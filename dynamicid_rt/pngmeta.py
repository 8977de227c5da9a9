"""PNG parameters in the form AUTOMATIC1111 writes (a ``parameters`` text chunk), so image browsers
show them and a saved image can restore its settings."""
from __future__ import annotations

import json
import numbers
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .atomic import atomic_write
from .errors import RequestError
from .sampler_names import canonical_sampler

if TYPE_CHECKING:
    from PIL import Image

    from .request import Result

# Our sampler -> A1111 (>= 1.9) "Sampler" and "Schedule type". A1111 writes "Automatic" for a
# sampler's own default schedule, which for DPM++ 2M is Karras: plain DPM++ 2M is "Uniform" there.
A1111_SAMPLERS = {
    "ddim": ("DDIM", "Automatic"),
    "pndm": ("PLMS", "Automatic"),  # diffusers' PNDM with skip_prk_steps (SD1.5's) is PLMS
    "euler": ("Euler", "Automatic"),
    "euler_a": ("Euler a", "Automatic"),
    "dpmpp_2m": ("DPM++ 2M", "Uniform"),
    "dpmpp_2m_karras": ("DPM++ 2M", "Karras"),
}
# Written as "Version": A1111 parses a "v1.x" value and turns on its backward-compatibility
# options for old versions, so the value must not look like one.
VERSION = f"dynamicid-rt {__version__}"
# A1111's "key: value" pairs; values with commas are JSON-quoted.
_PARAM = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n') else value


def format_parameters(result: "Result", index: int = 0) -> str:
    """The settings of image ``index`` of ``result`` as AUTOMATIC1111 (>= 1.9) writes them in a
    PNG ``parameters`` chunk, plus DynamicID's own fields."""
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
    if result.model is not None:
        fields += [("Model hash", result.model.hash), ("Model", result.model.name), ("VAE", result.model.vae)]
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
            from .identity_check import parameters_text

            fields.append(("ID match", parameters_text(result.identity_scores[index])))
    fields += [("Backend", result.backend), ("Version", VERSION)]
    tail = ", ".join(f"{k}: {_quote(str(v))}" for k, v in fields if v != "")  # A1111 leaves out empty fields
    lines = [req.prompt]
    if req.negative_prompt:
        lines.append(f"Negative prompt: {req.negative_prompt}")
    lines.append(tail)
    return "\n".join(lines)


def _format_id_scale(value: Any) -> str:
    """One number, or per-person numbers joined by ";" like the boxes (no comma: no quoting)."""
    if isinstance(value, numbers.Real):
        return str(value)
    return ";".join(str(float(v)) for v in value)


def _parse_id_scale(text: str) -> float | list[float]:
    return [float(v) for v in text.split(";")] if ";" in text else float(text)


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse an A1111 ``parameters`` text (1.6's "Sampler: DPM++ 2M Karras" or >= 1.9's separate
    "Schedule type") back into request fields. Keys we do not use, and a sampler we cannot run,
    are kept as text under "extra"."""
    lines = text.strip().split("\n")
    # A1111's rule: the last line holds the settings when it has at least three "key: value" pairs.
    tail = lines.pop() if lines and len(_PARAM.findall(lines[-1])) >= 3 else ""
    prompt_lines, negative = [], []
    for line in lines:
        if line.startswith("Negative prompt:") or negative:
            negative.append(line.removeprefix("Negative prompt:").strip())
        else:
            prompt_lines.append(line)
    out: dict[str, Any] = {"prompt": "\n".join(prompt_lines).strip(), "negative_prompt": "\n".join(negative).strip()}
    raw = {}
    for key, value in _PARAM.findall(tail):
        value = value.strip()
        if value.startswith('"'):
            value = json.loads(value)
        raw[key.strip()] = value
    conv = {
        "Steps": ("steps", int),
        "CFG scale": ("guidance", float),
        "Seed": ("seed", int),
        "ID scale": ("id_scale", _parse_id_scale),
        "ID boost": ("boost", float),
        "ID boost steps": ("boost_steps", int),
        "ID mix": ("mix", float),
    }
    for key, value in raw.items():
        if key in conv:
            name, cast = conv[key]
            out[name] = cast(value)
        elif key == "Sampler":
            sampler = sampler_from_a1111(value, raw.get("Schedule type"))
            if sampler is not None:
                out["sampler"] = sampler
            else:
                out.setdefault("extra", {})[key] = value
        elif key == "Schedule type":
            pass  # read with "Sampler"
        elif key == "Size":
            w, _, h = value.partition("x")
            out["width"], out["height"] = int(w), int(h)
        elif key == "ID boxes":
            out["boxes"] = [tuple(float(v) for v in b.split(",")) for b in value.split(";") if b]
        elif key == "ID gating":
            out["gating"] = value
        elif key == "Face prompts":
            out["face_prompts"] = json.loads(value)
        elif key == "People":
            out["people"] = json.loads(value)
        else:
            out.setdefault("extra", {})[key] = value
    return out


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
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    path = Path(path)
    with atomic_write(path) as f:
        image.save(f, format="PNG", pnginfo=info)
    return path


def read_parameters(path: str | Path) -> str | None:
    """The ``parameters`` text of a PNG, or None when it has none."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.info.get("parameters") or getattr(im, "text", {}).get("parameters")
