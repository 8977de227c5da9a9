"""Synthetic portraits for the tiny test bundle (numpy + PIL only, deterministic for a seed).

Faces are drawn as skin-coloured ellipses with eyes, brows, nose and lips at the positions the tiny
face models of :mod:`dynamicid_rt.tiny.face_models` expect, so the tiny detector finds them. The
true face boxes (the skin ellipse's bounding box, in image pixels) are stored next to the images
in ``faces.json`` (:data:`TRUTH_FILE`, read with :func:`load_truth`).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .face_models import EYE_CENTRES, MOUTH_CENTRE, NOSE_TIP

TRUTH_FILE = "faces.json"
_SUPERSAMPLE = 2  # drawn at twice the size, then downscaled, for smooth edges

Color = tuple[int, int, int]


@dataclass(frozen=True)
class _Person:
    skin: Color
    hair: Color
    iris: Color
    brow: Color
    lips: Color
    clothes: Color
    aspect: float  # face height / width
    hair_scale: float  # how far the hair reaches around the face


_PEOPLE = {
    "a": _Person(skin=(228, 186, 152), hair=(36, 30, 30), iris=(60, 100, 170), brow=(50, 40, 35),
                 lips=(192, 62, 76), clothes=(40, 60, 120), aspect=1.3, hair_scale=1.18),
    "b": _Person(skin=(152, 104, 76), hair=(20, 18, 18), iris=(70, 45, 30), brow=(25, 20, 20),
                 lips=(170, 50, 60), clothes=(40, 92, 62), aspect=1.15, hair_scale=1.06),
}


@dataclass(frozen=True)
class _Face:
    person: str
    cx: float
    cy: float
    half_width: float
    smiling: bool = False

    @property
    def half_height(self) -> float:
        return self.half_width * _PEOPLE[self.person].aspect

    def box(self) -> list[float]:
        return [self.cx - self.half_width, self.cy - self.half_height, self.cx + self.half_width, self.cy + self.half_height]


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill: Color) -> None:
    s = _SUPERSAMPLE
    draw.ellipse([(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s], fill=fill)


def _draw_face(draw: ImageDraw.ImageDraw, face: _Face, height: int) -> None:
    p = _PEOPLE[face.person]
    s = _SUPERSAMPLE
    ax, ay = face.half_width, face.half_height

    def at(ux: float, uy: float) -> tuple[float, float]:
        return face.cx + ux * ax, face.cy + uy * ay

    # Shoulders and neck (clothes), hair behind the head, then the skin ellipse over them.
    draw.rounded_rectangle([(face.cx - 1.7 * ax) * s, (face.cy + 1.25 * ay) * s, (face.cx + 1.7 * ax) * s, (height + 10) * s],
                           radius=int(0.6 * ax * s), fill=p.clothes)
    draw.rectangle([(face.cx - 0.45 * ax) * s, (face.cy + 0.6 * ay) * s, (face.cx + 0.45 * ax) * s, (face.cy + 1.4 * ay) * s], fill=p.clothes)
    _ellipse(draw, face.cx, face.cy - 0.18 * ay, p.hair_scale * ax, 1.02 * ay, p.hair)
    _ellipse(draw, face.cx, face.cy, ax, ay, p.skin)
    for side, (ex, ey) in zip((-1, 1), EYE_CENTRES):
        x, y = at(ex, ey)
        _ellipse(draw, x, y, 0.16 * ax, 0.07 * ay, (246, 246, 242))
        _ellipse(draw, x, y, 0.065 * ay, 0.065 * ay, p.iris)
        _ellipse(draw, x, y, 0.03 * ay, 0.03 * ay, (15, 15, 15))
        brow = [at(side * u, -0.33 - 0.07 * np.sin(np.pi * (u - 0.15) / 0.47)) for u in np.linspace(0.15, 0.62, 9)]
        draw.line([(bx * s, by * s) for bx, by in brow], fill=p.brow, width=max(2, int(0.05 * ay * s)))
    shade = tuple(int(c * 0.86) for c in p.skin)
    nose = [at(0.0, -0.05), at(NOSE_TIP[0] - 0.07, NOSE_TIP[1] + 0.04), at(NOSE_TIP[0] + 0.07, NOSE_TIP[1] + 0.04)]
    draw.line([(x * s, y * s) for x, y in nose], fill=shade, width=max(2, int(0.03 * ax * s)), joint="curve")
    mx, my = at(*MOUTH_CENTRE)
    if face.smiling:
        # A wide open smile: lower half-ellipse of lips with a band of teeth.
        box = [(mx - 0.4 * ax) * s, (my - 0.14 * ay) * s, (mx + 0.4 * ax) * s, (my + 0.14 * ay) * s]
        draw.chord(box, 0, 180, fill=p.lips)
        teeth = [(mx - 0.3 * ax) * s, (my - 0.06 * ay) * s, (mx + 0.3 * ax) * s, (my + 0.06 * ay) * s]
        draw.chord(teeth, 0, 180, fill=(240, 240, 235))
    else:
        _ellipse(draw, mx, my, 0.3 * ax, 0.07 * ay, p.lips)
        draw.line([((mx - 0.28 * ax) * s, my * s), ((mx + 0.28 * ax) * s, my * s)], fill=tuple(c // 2 for c in p.lips), width=2)


def _background(width: int, height: int, top: Color, bottom: Color) -> Image.Image:
    t = np.linspace(0.0, 1.0, height * _SUPERSAMPLE)[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)
    return Image.fromarray(np.broadcast_to(rows, (height * _SUPERSAMPLE, width * _SUPERSAMPLE, 3)).astype(np.uint8))


def _finish(canvas: Image.Image, rng: np.random.Generator) -> Image.Image:
    small = canvas.resize((canvas.width // _SUPERSAMPLE, canvas.height // _SUPERSAMPLE), Image.Resampling.LANCZOS)
    noisy = np.asarray(small, dtype=np.float32) + rng.normal(0.0, 3.0, (small.height, small.width, 3))
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def _portrait(size: tuple[int, int], faces: list[_Face], top: Color, bottom: Color, rng: np.random.Generator) -> Image.Image:
    canvas = _background(*size, top, bottom)
    draw = ImageDraw.Draw(canvas)
    for face in faces:
        _draw_face(draw, face, size[1])
    return _finish(canvas, rng)


def _landscape(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Sky, sun, mountains, hills, a lake and trees: nothing skin-coloured."""
    w, h = size
    s = _SUPERSAMPLE
    canvas = _background(w, h, (120, 170, 230), (205, 222, 240))
    draw = ImageDraw.Draw(canvas)
    _ellipse(draw, 0.8 * w, 0.18 * h, 0.06 * w, 0.06 * w, (252, 232, 120))
    peaks = [(0, 0.55), (0.18, 0.3), (0.35, 0.5), (0.55, 0.25), (0.75, 0.48), (0.9, 0.35), (1, 0.5), (1, 1), (0, 1)]
    draw.polygon([(x * w * s, y * h * s) for x, y in peaks], fill=(108, 118, 140))
    draw.polygon([(x * w * s, y * h * s) for x, y in [(0.47, 0.33), (0.55, 0.25), (0.62, 0.32)]], fill=(240, 244, 248))
    hills = [(x, 0.62 + 0.05 * np.sin(7 * x)) for x in np.linspace(0, 1, 40)] + [(1, 1), (0, 1)]
    draw.polygon([(x * w * s, y * h * s) for x, y in hills], fill=(72, 140, 66))
    _ellipse(draw, 0.35 * w, 0.85 * h, 0.22 * w, 0.07 * h, (58, 98, 150))
    for x in rng.uniform(0.05, 0.95, 7):
        base = 0.66 + 0.05 * np.sin(7 * x)
        draw.rectangle([(x * w - 3) * s, (base * h - 8) * s, (x * w + 3) * s, (base * h + 14) * s], fill=(60, 45, 40))
        draw.polygon([((x * w - 16) * s, (base * h - 4) * s), ((x * w + 16) * s, (base * h - 4) * s), (x * w * s, (base * h - 50) * s)],
                     fill=(30, 88, 42))
    return _finish(canvas, rng)


def _save_png(image: Image.Image, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_portraits(samples_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the sample photos into ``samples_dir`` and ``faces.json`` with their true face boxes.

    Returns ``{file name: path}`` of the images: person_a.png, person_b.png (different people,
    different sizes and positions), two_faces.png (a large, b small), no_face.png (a landscape),
    person_a_smiling.png (a again, with an open smile).
    """
    samples_dir = Path(samples_dir)
    samples_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes: dict[str, tuple[tuple[int, int], list[_Face], Color, Color]] = {
        "person_a.png": ((384, 384), [_Face("a", 176, 168, 62)], (196, 208, 224), (150, 165, 190)),
        "person_b.png": ((320, 416), [_Face("b", 168, 196, 74)], (178, 204, 178), (120, 150, 130)),
        "two_faces.png": ((512, 384), [_Face("a", 150, 176, 70), _Face("b", 396, 150, 38)], (205, 200, 215), (160, 160, 180)),
        "person_a_smiling.png": ((384, 384), [_Face("a", 196, 178, 66, smiling=True)], (196, 208, 224), (150, 165, 190)),
    }
    paths: dict[str, Path] = {}
    truth: dict[str, list[dict]] = {}
    for name, (size, faces, top, bottom) in scenes.items():
        paths[name] = samples_dir / name
        _save_png(_portrait(size, faces, top, bottom, rng), paths[name])
        truth[name] = [
            {"person": f.person, "box": [round(v, 2) for v in f.box()], "expression": "happy" if f.smiling else "neutral"}
            for f in faces
        ]
    paths["no_face.png"] = samples_dir / "no_face.png"
    _save_png(_landscape((448, 320), rng), paths["no_face.png"])
    truth["no_face.png"] = []
    fd, tmp = tempfile.mkstemp(prefix=TRUTH_FILE, suffix=".tmp", dir=samples_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(truth, f, indent=1, sort_keys=True)
    os.replace(tmp, samples_dir / TRUTH_FILE)
    return paths


def load_truth(samples_dir: Path) -> dict[str, list[dict]]:
    """The true faces of each sample written by :func:`write_portraits`: ``{file name: [{"person",
    "box" (x0, y0, x1, y1) pixels, "expression"}]}``."""
    return json.loads((Path(samples_dir) / TRUTH_FILE).read_text())
