"""Optimisation profiles and shape dictionaries, all read from the contract (``dynamicid_rt.contract``).

A dynamic plan is built for the contract's min/opt/max ranges (opt: 512², batch 2 for classifier-free
guidance, 2 identities). A static plan fixes the image size for one resolution (CUDA graphs need
shapes that repeat) and the UNet batch to one image, with guidance (2) or without (1, few-step
samplers); the number of people stays dynamic, so one static plan serves one to four faces.
"""
from __future__ import annotations

from dataclasses import dataclass

from dynamicid_rt.contract import ENGINES, EngineSpec, ModelDims
from dynamicid_rt.errors import RequestError

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]
LATENT_FACTOR = 8  # pixels per latent position (SD1.5 VAE)


def sized_engines() -> list[str]:
    """Engines whose shapes depend on the image size (``EngineSpec.sized``): the ones a static plan exists for."""
    return [name for name, spec in ENGINES.items() if spec.sized]


@dataclass(frozen=True)
class StaticSize:
    """A fixed image size for static plans (``--static 512x512``)."""

    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> "StaticSize":
        w, sep, h = text.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) % 64 or int(h) % 64:
            raise RequestError(f"static size {text!r}: expected WIDTHxHEIGHT in multiples of 64, e.g. 512x512")
        return cls(int(w), int(h))

    @property
    def tag(self) -> str:
        return f"{self.width}x{self.height}"


def engine_profile(spec: EngineSpec, dims: ModelDims, static: StaticSize | None = None) -> Profile:
    """``{input: (min, opt, max)}`` for every input of ``spec``; with ``static`` the size is fixed,
    the batch spans one image without and with guidance (the UNet's 1..2, tuned for 2), and only
    the identity axes stay dynamic."""
    if static is None or not spec.sized:
        return spec.profile(dims)
    fixed = {"h": static.height // LATENT_FACTOR, "w": static.width // LATENT_FACTOR}
    batch = spec.axis("B")
    free = [a for a in spec.axes if a.name not in fixed and a.name != "B"]
    lo = spec.shapes(dims, **fixed, B=batch.min, **{a.name: a.min for a in free})
    mid = spec.shapes(dims, **fixed, B=batch.opt, **{a.name: a.opt for a in free})
    hi = spec.shapes(dims, **fixed, B=batch.opt, **{a.name: a.max for a in free})
    return {t.name: (lo[t.name], mid[t.name], hi[t.name]) for t in spec.inputs}


def check_static_size(spec: EngineSpec, static: StaticSize) -> None:
    """A static size must lie inside the contract's range for h and w."""
    for axis, pixels in (("h", static.height), ("w", static.width)):
        a = spec.axis(axis)
        if not a.min * LATENT_FACTOR <= pixels <= a.max * LATENT_FACTOR:
            raise RequestError(
                f"static size {static.tag}: {pixels} px is outside the {spec.name} engine's range "
                f"{a.min * LATENT_FACTOR}..{a.max * LATENT_FACTOR} px"
            )


def is_dynamic(profile: Profile) -> bool:
    return any(lo != hi for lo, _, hi in profile.values())


def unet_axes(width: int, height: int, batch: int, people: int, guidance: bool) -> dict[str, int]:
    """The UNet's axis values for one generation: B = 2·batch with classifier-free guidance; with
    no people the contract still feeds one (unconditional) identity and one box."""
    n = max(people, 1)
    return {
        "B": 2 * batch if guidance else batch,
        "h": height // LATENT_FACTOR,
        "w": width // LATENT_FACTOR,
        "N": n,
        "M": n,
    }


def request_shapes(
    engine: str, dims: ModelDims, width: int, height: int, batch: int = 1, people: int = 2, guidance: bool = True
) -> dict[str, Shape]:
    """Shapes of every input and output of ``engine`` for one generation request."""
    axes = unet_axes(width, height, batch, people, guidance)
    spec = ENGINES[engine]
    if spec.one_image_per_call:
        axes = {"B": 1, "h": axes["h"], "w": axes["w"]}  # the pipeline decodes one image at a time
    names = {a.name for a in spec.axes}
    return spec.shapes(dims, **{k: v for k, v in axes.items() if k in names})


def out_of_profile(profile: Profile, shapes: dict[str, Shape]) -> list[str]:
    """One line per input whose shape lies outside the plan's profile (empty when all fit)."""
    problems = []
    for name, (lo, _, hi) in profile.items():
        shape = shapes.get(name)
        if shape is None:
            problems.append(f"{name}: missing")
        elif len(shape) != len(lo) or any(not low <= d <= high for d, low, high in zip(shape, lo, hi)):
            problems.append(f"{name}: {list(shape)} outside {list(lo)}..{list(hi)}")
    return problems
