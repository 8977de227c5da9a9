"""PNG parameters in the form AUTOMATIC1111 writes (a ``parameters`` text chunk), so image browsers
show them and a saved image can restore its settings."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_write

if TYPE_CHECKING:
    from PIL import Image

    from .request import Result

SAMPLER_LABELS = {
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "pndm": "PLMS",
}
_LABEL_TO_SAMPLER = {v: k for k, v in SAMPLER_LABELS.items()}
# A1111's "key: value" pairs; values with commas are JSON-quoted.
_PARAM = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n') else value


def format_parameters(result: "Result", index: int = 0) -> str:
    req = result.request
    fields: list[tuple[str, Any]] = [
        ("Steps", req.steps),
        ("Sampler", SAMPLER_LABELS.get(result.sampler, result.sampler)),
        ("CFG scale", req.guidance),
        ("Seed", result.seeds[index]),
        ("Size", f"{req.width}x{req.height}"),
        ("DynamicID identities", len(req.identities)),
    ]
    if req.identities:
        boxes = ";".join(",".join(f"{v:g}" for v in b) for b in req.resolved_boxes())
        fields += [
            ("ID scale", req.id_scale),
            ("ID boxes", boxes),
            ("ID gating", "on" if result.gating else "off"),
            ("ID boost", req.boost),
            ("ID boost steps", req.boost_steps),
            ("ID mix", req.mix),
            ("Face prompts", json.dumps([i.face_prompt or "" for i in req.identities], ensure_ascii=False)),
            ("People", json.dumps([i.name for i in req.identities], ensure_ascii=False)),
        ]
    fields.append(("Backend", result.backend))
    tail = ", ".join(f"{k}: {_quote(str(v))}" for k, v in fields)
    lines = [req.prompt]
    if req.negative_prompt:
        lines.append(f"Negative prompt: {req.negative_prompt}")
    lines.append(tail)
    return "\n".join(lines)


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse an A1111 ``parameters`` text back into request fields (unknown keys are kept as text)."""
    lines = text.strip().split("\n")
    tail = lines.pop() if lines and _PARAM.match(lines[-1]) and "Steps:" in lines[-1] else ""
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
        "ID scale": ("id_scale", float),
        "ID boost": ("boost", float),
        "ID boost steps": ("boost_steps", int),
        "ID mix": ("mix", float),
    }
    for key, value in raw.items():
        if key in conv:
            name, cast = conv[key]
            out[name] = cast(value)
        elif key == "Sampler":
            out["sampler"] = _LABEL_TO_SAMPLER.get(value, value)
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
