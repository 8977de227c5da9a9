"""Generation requests and results: plain dataclasses, validated before any model runs."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from .contract import decoder_engines
from .errors import RequestError
from .modelfiles.lora import check_lora_refs
from .sampling.masks import boxes_from_mask, latent_mask, mask_alpha
from .sampling.img2img import steps_run
from .sampling.names import canonical_sampler
from .sampling.start_image import SIZE_RANGE as START_SIZE_RANGE
from .sampling.start_image import check_start_image, image_array

if TYPE_CHECKING:
    from PIL import Image


Box = tuple[float, float, float, float]  # (y0, x0, y1, x1) in [0, 1] of the image
MAX_IDENTITIES = 4
SIZE_RANGE = START_SIZE_RANGE  # the sides the UNet's profiles take
# Bounds of the numeric settings: wide enough for any use, narrow enough that nothing overflows
# (guidance 1e300 made NaN at step 2, -1e300 an image of noise).
NUMBER_RANGES = {"guidance": (0.0, 100.0), "boost": (0.0, 100.0), "mix": (0.0, 1.0)}
ID_SCALE_RANGE = (0.0, 10.0)
MAX_PROMPT_CHARS = 16384  # CLIP reads 77 tokens; this keeps hostile input (and the PNG parameters) bounded


def check_text(name: str, value: object) -> str:
    """``value`` if it is text the tokenizer and the image parameters can take, else a RequestError:
    not a str, longer than :data:`MAX_PROMPT_CHARS`, or not encodable as UTF-8 (a lone surrogate,
    which is what Python makes of a command-line byte that is not UTF-8)."""
    if not isinstance(value, str):
        raise RequestError(f"{name}={value!r}: must be text (use \"\" for none)")
    if len(value) > MAX_PROMPT_CHARS:
        raise RequestError(f"{name} is {len(value)} characters long; at most {MAX_PROMPT_CHARS} are accepted (CLIP reads 77 tokens)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        raise RequestError(
            f"{name} holds U+{ord(bad):04X} at position {exc.start}, which is not text (a byte that is not UTF-8, or a lone "
            "surrogate); give the text in UTF-8"
        ) from None
    return value


def default_boxes(count: int) -> list[Box]:
    """N equal vertical strips (the release's default layout)."""
    return [(0.0, i / count, 1.0, (i + 1) / count) for i in range(count)]


@runtime_checkable
class Person(Protocol):
    """What a request needs of each person; :class:`dynamicid_rt.Identity` is one.

    Declared here so that requests (layer 1) do not depend on identity encoding (layer 5).
    """

    tokens: np.ndarray  # (4, C) float32 ID tokens, as the UNet takes them
    name: str
    face_prompt: str | None  # the expression/pose edit the tokens carry, for the PNG parameters


@dataclass
class Request:
    """Everything one generation needs. Defaults are the release's (SPEC §1.5).

    Each check runs once: the fields when the Request is made, the cross-checks at the first
    :meth:`validate`. Assigning a field undoes both, so the next :meth:`validate` makes them again
    (changing a list in place does not: assign a new one, or make a new Request).
    """

    prompt: str
    identities: Sequence[Person] = ()
    negative_prompt: str = ""
    boxes: Sequence[Box] | None = None  # one per identity; a single box with several identities mixes them
    width: int = 512
    height: int = 512
    steps: int = 50
    guidance: float = 5.0
    sampler: str = "default"  # "default": the base model's scheduler (PNDM for SD1.5); aliases: sampler_names.canonical_sampler
    seed: int | None = None  # None: a random seed, reported in the result
    batch: int = 1
    id_scale: float | Sequence[float] = 1.0  # identity strength: one for everyone, or one per identity
    gating: Literal["auto", "on", "off"] | bool = "auto"  # auto: on for two or more identities
    boost: float = 4.0
    boost_steps: int = 3
    mix: float = 0.5  # share of the first identity when several share one box
    initial_latents: np.ndarray | None = None  # unit-Gaussian (batch, 4, height/8, width/8)
    activation_maps: bool = False  # also return each person's SAA activation map (backends that can)
    check_identities: bool = False  # measure each person's likeness in every result (Result.identity_scores)
    best_of: int = 1  # generate this many seeds and return them best first (implies check_identities)
    # User LoRAs as (path, scale) pairs, merged into the UNet and text encoder (dynamicid_rt.modelfiles.lora).
    loras: Sequence[tuple[str | Path, float]] = ()
    tcd_gamma: float = 0.3  # the tcd sampler's stochasticity (diffusers' eta), from 0 to 1
    decoder: str = "vae"  # final images: "vae" (the full VAE) or "taesd" (the tiny autoencoder, fast)
    # img2img: start from this picture (a PIL image or (H, W, 3) uint8 array of width x height),
    # running the last int(steps x strength) steps (A1111's "Denoising strength").
    init_image: "Image.Image | np.ndarray | None" = None
    strength: float = 0.75
    # Inpainting: repaint only where this mask (the init image's size) is white; the rest of the
    # picture stays as it was, bit for bit. ``mask_blur``: A1111's "Mask blur", in pixels.
    mask: "Image.Image | np.ndarray | None" = None
    mask_blur: int = 4

    # How far this Request is checked: "" not since a field was assigned, "fields", or "validated".
    _checked: ClassVar[str] = ""
    _sampler_name: ClassVar[str] = ""

    def resolved_boxes(self) -> list[Box]:
        if self.boxes is None:
            if self.identities and self.mask is not None:
                return boxes_from_mask(self.mask_alpha(), len(self.identities))  # type: ignore[arg-type]
            return default_boxes(len(self.identities)) if self.identities else []
        return [tuple(float(v) for v in b) for b in self.boxes]  # type: ignore[misc]

    def steps_to_run(self) -> int:
        """The sampler steps each image runs: ``steps``, or img2img's ``int(steps × strength)``."""
        return self.steps if self.init_image is None else steps_run(self.steps, self.strength)

    def init_pixels(self) -> np.ndarray | None:
        """The init image as (height, width, 3) uint8, or None for a txt2img request."""
        return None if self.init_image is None else image_array(self.init_image, "init_image", "RGB")

    def mask_alpha(self) -> np.ndarray | None:
        """The mask, blurred by ``mask_blur``, as (height, width) alpha in [0, 1] (1 = repaint)."""
        return None if self.mask is None else mask_alpha(image_array(self.mask, "mask", "L"), self.mask_blur)

    def mask_cells(self) -> np.ndarray | None:
        """The latent cells the sampler repaints, (1, 1, height/8, width/8) of 0 and 1 (None: no mask)."""
        alpha = self.mask_alpha()
        return None if alpha is None else latent_mask(alpha)

    def id_scales(self) -> list[float]:
        """Each identity's strength (SPEC §1.5 σ): a single number applies to everyone."""
        if _is_number(self.id_scale):
            return [float(self.id_scale)] * len(self.identities)
        return [float(v) for v in self.id_scale]

    def gating_on(self) -> bool:
        if isinstance(self.gating, bool):
            return self.gating
        if self.gating == "auto":
            return len(self.identities) >= 2
        return self.gating == "on"

    @property
    def sampler_name(self) -> str:
        """``sampler`` in our spelling: one of :data:`~dynamicid_rt.sampling.names.SAMPLERS`, or
        "default" (resolved once, when the fields are checked)."""
        if not self._checked:
            self.check_fields()
        return self._sampler_name

    def __post_init__(self) -> None:
        self.check_fields()  # a Request that exists is well-formed; validate() adds the cross-checks

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name in _FIELD_NAMES:
            object.__setattr__(self, "_checked", "")  # the checks made so far may no longer hold

    def validate(self, people: int | None = None) -> None:
        """Raise RequestError naming the first inconsistent field and how to fix it. ``people``:
        check the settings for that many identities before their faces are encoded. A Request
        validated already, and not assigned to since, passes at once."""
        if not self._checked:
            self.check_fields()  # a field was assigned since the Request was made
        if people is not None:
            self._check_consistency(people)
        elif self._checked != "validated":
            self._check_consistency(len(self.identities))
            self._checked = "validated"

    def check_fields(self) -> None:
        """Each field on its own: types, ranges, encodable text, box shapes. Runs when a Request
        is made (and in :meth:`validate`); every per-field validator belongs here."""
        self._validate_types()
        self._validate_texts()
        lo, hi = SIZE_RANGE
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v % 64 or not lo <= v <= hi:
                raise RequestError(f"{name}={v!r}: must be a multiple of 64 between {lo} and {hi} (e.g. 512 or 768)")
        if not isinstance(self.steps, (int, np.integer)) or not 1 <= self.steps <= 1000:
            raise RequestError(f"steps={self.steps!r}: must be an integer from 1 to 1000")
        if not isinstance(self.batch, (int, np.integer)) or not 1 <= self.batch <= 16:
            raise RequestError(f"batch={self.batch!r}: must be an integer from 1 to 16")
        if not isinstance(self.sampler, str):
            raise RequestError(f"sampler={self.sampler!r}: must be a sampler name such as 'default' or 'euler_a'")
        sampler_name = canonical_sampler(self.sampler)  # raises for unknown names, listing the choices
        for name, (lo_v, hi_v) in NUMBER_RANGES.items():
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v) or not lo_v <= v <= hi_v:
                raise RequestError(f"{name}={v!r}: must be a number from {lo_v:g} to {hi_v:g}")
        if not 0 <= self.boost_steps <= 1000:
            raise RequestError(f"boost_steps={self.boost_steps!r}: must be an integer from 0 to 1000")
        self._validate_id_scale_values()
        if self.gating not in ("auto", "on", "off", True, False):
            raise RequestError(f"gating={self.gating!r}: use 'auto', 'on' or 'off'")
        if self.seed is not None and not (isinstance(self.seed, (int, np.integer)) and 0 <= self.seed < 2**32):
            raise RequestError(f"seed={self.seed!r}: must be an integer in [0, 2**32)")
        self._validate_boxes()
        if self.initial_latents is not None:
            shape = (self.batch, 4, self.height // 8, self.width // 8)
            try:
                lat = np.asarray(self.initial_latents, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise RequestError(f"initial_latents is not an array of numbers ({exc}); pass a float array of shape {shape}") from None
            if lat.shape != shape:
                raise RequestError(f"initial_latents has shape {lat.shape}; expected {shape} for this size and batch")
            if not np.all(np.isfinite(lat)):
                raise RequestError("initial_latents holds NaN or infinite values")
        if not isinstance(self.best_of, (int, np.integer)) or isinstance(self.best_of, bool) or not 1 <= self.best_of <= 64:
            raise RequestError(f"best_of={self.best_of!r}: must be an integer from 1 to 64")
        check_lora_refs(self.loras)  # files exist, scales finite and >= 0; weights are read at generation
        if not _is_number(self.tcd_gamma) or not 0.0 <= self.tcd_gamma <= 1.0:
            raise RequestError(f"tcd_gamma={self.tcd_gamma!r}: must be a number from 0 to 1 (0.3 is the usual value)")
        if not isinstance(self.decoder, str) or self.decoder not in decoder_engines():
            raise RequestError(f"decoder={self.decoder!r}: use one of {', '.join(decoder_engines())}")
        self._validate_start_image()
        self._sampler_name = sampler_name
        if not self._checked:
            self._checked = "fields"

    def _check_consistency(self, n: int) -> None:
        """The fields against each other and against ``n`` identities."""
        if n > MAX_IDENTITIES:
            raise RequestError(f"{n} identities given; at most {MAX_IDENTITIES} people per image are supported")
        if n == 0 and self.boxes:
            raise RequestError("boxes were given but no identities: add a face or drop the boxes")
        boxes = n if self.boxes is None else len(self.boxes)  # the default layout has one box per identity
        if n and boxes not in (n, 1):
            raise RequestError(f"{boxes} boxes for {n} identities: give one box per identity (or one box to mix them)")
        if not _is_number(self.id_scale) and len(self.id_scale) != n:
            raise RequestError(
                f"id_scale has {len(self.id_scale)} value(s) for {n} identities: give one number for everyone or one per identity"
            )
        if n and self.mask is not None and self.boxes is None:
            self.resolved_boxes()  # the mask's regions must give each person a box
        if self.best_of > 1 and n == 0:
            raise RequestError("best_of ranks results by each person's likeness: add at least one face, or set best_of=1")
        if self.best_of > 1 and (self.batch != 1 or self.initial_latents is not None):
            raise RequestError("best_of draws one image per seed: use batch=1 and no initial_latents with it")

    def _validate_start_image(self) -> None:
        """img2img and inpainting: strength and blur in range, image and mask of the request's size."""
        check_start_image(self.init_image, self.strength, self.mask, self.mask_blur, self.width, self.height)

    def _validate_texts(self) -> None:
        """Text the tokenizer and the PNG parameters can take: UTF-8 encodable (no lone surrogate,
        which is what a byte that is not UTF-8 becomes in a command-line argument) and bounded."""
        check_text("prompt", self.prompt)
        check_text("negative_prompt", self.negative_prompt)
        for i, person in enumerate(self.identities):
            if person.face_prompt is not None:
                check_text(f"identities[{i}].face_prompt", person.face_prompt)
            if not isinstance(person.name, str):
                raise RequestError(f"identities[{i}].name={person.name!r}: must be text")
            check_text(f"identities[{i}].name", person.name)

    def _validate_boxes(self) -> None:
        for i, b in enumerate(self.boxes or ()):
            if isinstance(b, (str, bytes)) or not isinstance(b, Sequence) or len(b) != 4 or not all(_is_number(v) for v in b):
                raise RequestError(f"box {i} {b!r}: expected four numbers (y0, x0, y1, x1), e.g. (0, 0, 1, 0.5)")
            if not all(math.isfinite(v) for v in b):
                raise RequestError(f"box {i} {b!r}: expected four finite numbers y0,x0,y1,x1")
            y0, x0, y1, x1 = (float(v) for v in b)
            if not all(0.0 <= v <= 1.0 for v in (y0, x0, y1, x1)):
                raise RequestError(f"box {i} {tuple(b)}: coordinates must lie in [0, 1] (fractions of the image)")
            if not (y1 > y0 and x1 > x0):
                raise RequestError(f"box {i} {tuple(b)}: empty box; need y1 > y0 and x1 > x0 (order is y0,x0,y1,x1)")
            # The coarsest SAA layer is 1/64 of the image: a box must cover at least one of its cells.
            if (int(y1 * self.height / 64) - int(y0 * self.height / 64)) < 1 or (int(x1 * self.width / 64) - int(x0 * self.width / 64)) < 1:
                raise RequestError(f"box {i} {tuple(b)}: too small for a {self.width}x{self.height} image (at least 64 px each way)")

    def _validate_types(self) -> None:
        """Wrong types (None, a float step count) get a RequestError, never a TypeError deep inside."""
        for name in ("prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise RequestError(f"{name}={getattr(self, name)!r}: must be text (use \"\" for none)")
        if self.identities is None or isinstance(self.identities, (str, bytes)) or not isinstance(self.identities, Sequence):
            raise RequestError(f"identities={self.identities!r}: must be a list of identities from Pipeline.encode_identity (or [])")
        for i, person in enumerate(self.identities):
            if not isinstance(person, Person):
                raise RequestError(f"identities[{i}] is a {type(person).__name__}: pass identities from Pipeline.encode_identity")
        for name in ("width", "height", "steps", "batch", "boost_steps"):
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise RequestError(f"{name}={v!r}: must be a whole number (an int, not {type(v).__name__})")
        if self.boxes is not None and (isinstance(self.boxes, (str, bytes)) or not isinstance(self.boxes, Sequence)):
            raise RequestError(f"boxes={self.boxes!r}: must be a list of (y0, x0, y1, x1) boxes, or None for the default layout")
        if isinstance(self.seed, (bool, np.bool_)):
            raise RequestError(f"seed={self.seed!r}: must be an integer in [0, 2**32) or None")

    def _validate_id_scale_values(self) -> None:
        scales = self.id_scale
        if _is_number(scales):
            values = [scales]
        elif (isinstance(scales, Sequence) and not isinstance(scales, (str, bytes))) or np.ndim(scales) == 1:
            values = list(scales)
        else:
            raise RequestError(f"id_scale={scales!r}: give a number, or a list with one number per identity")
        lo, hi = ID_SCALE_RANGE
        for v in values:
            if not _is_number(v) or not math.isfinite(v) or not lo <= v <= hi:
                raise RequestError(f"id_scale={scales!r}: every value must be a finite number >= {lo:g} and <= {hi:g} (1.0 is the release's strength)")

    def with_updates(self, **changes) -> "Request":
        return replace(self, **changes)


def _is_number(value: object) -> bool:
    """A real number, not a bool (True would silently mean 1.0)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


_FIELD_NAMES = frozenset(f.name for f in fields(Request))
