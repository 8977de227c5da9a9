"""An A1111 txt2img request as checked DynamicID work: the people (decoded photos or saved
identities) and one :class:`dynamicid_rt.Request` per ``n_iter`` batch. Everything a client can
get wrong is found here, before the job is queued, with the CLI's own messages: the Request's
checks (the only ones of its fields), the LoRA tags, each photo decoded and its face found, each
person named by index and name."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import Person, Request, RequestError, canonical_sampler
from .schema import DynamicIDPerson, Txt2ImgRequest
from .uploads import identity_bytes

MAX_N_ITER = 100
MAX_NAME = 64
# Features A1111 clients can turn on that this runtime does not have: (field, value when off).
_UNSUPPORTED = (
    ("enable_hr", False, "hires fix"),
    ("restore_faces", False, "face restoration"),
    ("tiling", False, "tiling"),
    ("subseed_strength", 0.0, "variation seeds"),
    ("styles", [], "saved styles"),
    ("script_name", None, "selectable scripts"),
    ("override_settings", {}, "per-request settings"),
    ("save_images", False, "saving on the server (save the returned images on the client)"),
)


@dataclass
class PersonInput:
    """One person before encoding: a decoded photo (with its edit) or a saved identity."""

    name: str
    pixels: np.ndarray | None = None
    face_prompt: str | None = None
    identity: Person | None = None


@dataclass
class Plan:
    """What a txt2img job runs: ``requests[j]`` is batch j (seeds follow on), people still to encode."""

    requests: list[Request]
    people: list[PersonInput]
    sampler_name: str  # as the client asked, for A1111's info
    send_images: bool
    echo: dict = field(default_factory=dict)  # the request as received, photo contents left out

    @property
    def total_steps(self) -> int:
        return sum(r.steps_to_run() for r in self.requests)  # img2img runs int(steps × strength)


@dataclass(frozen=True)
class Arrival:
    """What a request is checked with when it arrives, from the service: saved identities
    (``load_identity(npz_bytes, what)``), photos (``decode_photo(base64, what)`` under the memory
    budget), faces (``find_face(pixels, what)``, raising when there is none) and LoRA tags
    (``lora_tags(prompt)`` -> (file, weight) pairs)."""

    load_identity: Callable[[bytes, str], Person]
    decode_photo: Callable[[str, str], np.ndarray]
    find_face: Callable[[np.ndarray, str], None]
    lora_tags: Callable[[str], list[tuple[Path, float]]]


def _sampler(body: Txt2ImgRequest) -> str:
    name = body.sampler_name or body.sampler_index or "default"
    schedule = body.scheduler
    if schedule is not None and schedule.strip().lower() == "uniform":  # A1111: the sampler's plain schedule
        schedule = None
    return canonical_sampler(name, schedule)


def _refuse_unsupported(body: Txt2ImgRequest) -> None:
    for name, off, feature in _UNSUPPORTED:
        if getattr(body, name) != off:
            raise RequestError(f"{name}={getattr(body, name)!r}: {feature} is not available in dynamicid-rt; leave it out")
    others = sorted(set(body.alwayson_scripts.model_extra or ()))
    if others:
        raise RequestError(f"alwayson_scripts {others}: only the 'dynamicid' script exists here")
    if not 1 <= body.n_iter <= MAX_N_ITER:
        raise RequestError(f"n_iter={body.n_iter}: must be an integer from 1 to {MAX_N_ITER}")


def _real(value: object) -> object:
    """A JSON integer where a real number goes, as the real number (A1111 reads 7 as 7.0); every
    other value goes to the Request as sent, to be judged there (true is no number)."""
    return float(value) if type(value) is int else value


def _id_scale(people: list[DynamicIDPerson]) -> object:
    scales = [1.0 if p.id_scale is None else _real(p.id_scale) for p in people]
    # One value for everyone is written as one number, as the CLI's single --id-scale is; the
    # Request judges the values (a bool or a string is refused there).
    same = scales and all(type(v) is type(scales[0]) and v == scales[0] for v in scales)
    return scales[0] if same else scales


def _boxes(people: list[DynamicIDPerson]) -> list | None:
    given = [p.box is not None for p in people]
    if any(given) and not all(given):
        raise RequestError("dynamicid: give a box for every person or for none (none: equal vertical strips)")
    return [[_real(v) for v in p.box] if isinstance(p.box, list) else p.box for p in people] if people and all(given) else None


def make_plan(body: Txt2ImgRequest, arrival: Arrival) -> Plan:
    """Check ``body`` and build its plan; raises :class:`RequestError`/:class:`ImageError`
    (:class:`CheckpointError` for a LoRA file that does not fit)."""
    _refuse_unsupported(body)
    people = list(body.alwayson_scripts.dynamicid.args) if body.alwayson_scripts.dynamicid else []
    seed = secrets.randbelow(2**32) if body.seed == -1 and type(body.seed) is int else body.seed
    base = Request(
        prompt=body.prompt, negative_prompt=body.negative_prompt, boxes=_boxes(people), width=body.width,
        height=body.height, steps=body.steps, guidance=_real(body.cfg_scale), sampler=_sampler(body), seed=seed,
        batch=body.batch_size, id_scale=_id_scale(people),
    )
    base.validate(people=len(people))  # the Request's checks and messages, before any photo is decoded
    base = base.with_updates(loras=arrival.lora_tags(base.prompt))  # each file read and checked
    images = base.batch * body.n_iter
    if base.seed + images > 2**32:
        raise RequestError(f"seed={base.seed} with {images} images: image seeds run past 2**32-1; choose a smaller seed")
    inputs = [_person_input(k, p, arrival) for k, p in enumerate(people)]
    requests = [base.with_updates(seed=base.seed + j * base.batch) for j in range(body.n_iter)]
    return Plan(requests=requests, people=inputs, sampler_name=body.sampler_name or body.sampler_index or "default",
                send_images=body.send_images, echo=_echo(body))


def _person_input(k: int, person: DynamicIDPerson, arrival: Arrival) -> PersonInput:
    what = f"dynamicid args[{k}]"
    if person.name is not None and (len(person.name) > MAX_NAME or not person.name.isprintable()):
        raise RequestError(f"{what}.name: must be printable text of at most {MAX_NAME} characters")
    if person.face_prompt is not None and not isinstance(person.face_prompt, str):
        raise RequestError(f"{what}.face_prompt={person.face_prompt!r}: must be text")
    if (person.image is None) == (person.identity is None):
        raise RequestError(f"{what}: give exactly one of image (a base64 photo) or identity (a base64 saved identity)")
    if person.image is not None:
        name = person.name or f"person{k + 1}"
        pixels = arrival.decode_photo(person.image, f"{what}.image ({name!r})")
        arrival.find_face(pixels, f"{what}.image ({name!r})")
        # "" is no edit, as the CLI's --face-prompt "" is.
        return PersonInput(name=name, pixels=pixels, face_prompt=person.face_prompt or None)
    if person.face_prompt:
        raise RequestError(f"{what}: face_prompt edits a photo; a saved identity already carries its edit, leave it out")
    identity = arrival.load_identity(identity_bytes(person.identity, f"{what}.identity"), f"{what}.identity")  # type: ignore[arg-type]
    return PersonInput(name=person.name or identity.name or f"person{k + 1}", identity=identity)


def _echo(body: Txt2ImgRequest) -> dict:
    echo = body.model_dump(mode="json")
    for person in (echo.get("alwayson_scripts", {}).get("dynamicid") or {}).get("args", []):
        for key in ("image", "identity"):
            if person.get(key) is not None:
                person[key] = f"<{len(person[key])} base64 characters>"
    return echo
