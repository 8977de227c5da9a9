"""The web API's request and response models, in AUTOMATIC1111's shapes (``/sdapi/v1/*``).

Ranges (size, steps, seed...) are not declared here: :meth:`dynamicid_rt.Request.validate` checks
them, so a bad value gets the CLI's own one-line message. The fields that become a Request's are
taken as sent (``Any``) and judged by the Request alone, so the server is exactly as strict as the
Python API (``true`` is no step count, ``"256"`` no width); the server's own fields are strict. Fields A1111 clients send for features
this runtime lacks are declared so that turning one on is refused rather than silently ignored.
"""
from __future__ import annotations

from typing import Any

# A field the Request judges: its JSON value goes to dynamicid_rt.Request unchanged.
ForRequest = Any

from pydantic import BaseModel, ConfigDict, Field


class DynamicIDPerson(BaseModel):
    """One person of ``alwayson_scripts.dynamicid.args``: a photo or a saved identity, and where
    and how they appear. Nothing here is a file name: photos and identities travel as content."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image: str | None = Field(None, description="reference photo (PNG, JPEG or WebP) as base64; a data: URL prefix is allowed")
    identity: str | None = Field(
        None, description="instead of image: an identity saved with Identity.save (.npz content) as base64, made with this model"
    )
    name: str | None = Field(None, description="name in the PNG parameters (default: person1, person2... or the saved identity's)")
    box: ForRequest = Field(
        None, description="region y0, x0, y1, x1 as fractions of the image; give one for every person or for none (equal strips)"
    )
    face_prompt: ForRequest = Field(None, description='expression/pose edit, e.g. "in a happy expression, facing up" (photos only)')
    id_scale: ForRequest = Field(None, description="identity strength, >= 0 (default 1.0)")


class DynamicIDScript(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    args: list[DynamicIDPerson] = Field(default_factory=list, description="one entry per person, at most 4")


class AlwaysOnScripts(BaseModel):
    """A1111's extension arguments. Only ``dynamicid`` exists here; any other name is refused."""

    model_config = ConfigDict(extra="allow")

    dynamicid: DynamicIDScript | None = None


class Txt2ImgRequest(BaseModel):
    """A1111's txt2img request. Defaults are the DynamicID release's (50 steps, CFG 5, the base
    model's scheduler); A1111 clients send their own. Other A1111 fields (hires-fix sizes, eta,
    s_churn, sampler_index...) are accepted and have no effect unless listed here."""

    model_config = ConfigDict(extra="ignore", strict=True)

    prompt: ForRequest = Field("", description="text; A1111's <lora:name:weight> tags name LoRAs of `serve --lora-dir`")
    negative_prompt: ForRequest = ""
    steps: ForRequest = Field(50, description="an integer, 1 to 1000")
    cfg_scale: ForRequest = Field(5.0, description="a number, 0 to 100")
    width: ForRequest = Field(512, description="an integer multiple of 64, 256 to 1024")
    height: ForRequest = Field(512, description="an integer multiple of 64, 256 to 1024")
    seed: ForRequest = Field(-1, description="an integer; -1: random; image k uses seed + k")
    sampler_name: str | None = Field(None, description="A1111, diffusers or our name ('Euler a', 'DPM++ 2M', 'euler_a'...)")
    sampler_index: str | None = Field(None, description="older A1111 clients' sampler field, used when sampler_name is empty")
    scheduler: str | None = Field(None, description="A1111's schedule type: Automatic, Uniform or Karras")
    batch_size: ForRequest = Field(1, description="an integer, 1 to 16")
    n_iter: int = Field(1, description="batches run one after the other, 1 to 100")
    send_images: bool = True
    save_images: bool = Field(False, description="must be false: the server never writes images")
    enable_hr: bool = Field(False, description="must be false: no hires fix here")
    restore_faces: bool = Field(False, description="must be false: no face restoration here")
    tiling: bool = Field(False, description="must be false: no tiling here")
    subseed_strength: float = Field(0.0, description="must be 0: no variation seeds here")
    styles: list[str] = Field(default_factory=list, description="must be empty: no saved styles here")
    script_name: str | None = Field(None, description="must be empty: no selectable scripts here")
    override_settings: dict[str, Any] = Field(default_factory=dict, description="must be empty: settings are fixed at start")
    alwayson_scripts: AlwaysOnScripts = Field(default_factory=AlwaysOnScripts)


class LoraModel(BaseModel):
    """One LoRA of ``serve --lora-dir``, as A1111's ``/sdapi/v1/loras`` lists it."""

    name: str = Field(description="what <lora:NAME:weight> names")
    alias: str
    path: str = Field(description="relative to the LoRA folder (the server's own paths are not shown)")
    metadata: dict[str, Any] = Field(default_factory=dict)


class Txt2ImgResponse(BaseModel):
    images: list[str] = Field(description="PNG files as base64, each with its A1111 'parameters' text chunk")
    parameters: dict[str, Any] = Field(description="the request as run (photo and identity contents left out)")
    info: str = Field(description="A1111's generation info as a JSON text (seeds, infotexts, model...)")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class QueueInfo(BaseModel):
    running: int = Field(description="jobs generating now (0 or 1 per pipeline)")
    waiting: int = Field(description="jobs queued behind it")


class ProgressResponse(BaseModel):
    progress: float = Field(description="fraction of the current job done, 0 to 1")
    eta_relative: float = Field(description="seconds left in the current job (estimate)")
    state: ProgressState
    current_image: str | None = Field(None, description="the live preview of the first image (the tiny autoencoder's decode of the denoised estimate where the model folder has one, else the latent's linear map), PNG as base64")
    textinfo: str | None = None
    queue: QueueInfo


class Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str] = Field(default_factory=dict)


class Scheduler(BaseModel):
    name: str
    label: str


class SDModel(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str = Field(description="the model's name (the server's paths are not shown)")
    config: str | None = None


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong and how to fix it, in one line")
