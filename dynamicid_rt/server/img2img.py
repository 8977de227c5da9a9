"""A1111's ``/sdapi/v1/img2img``: the txt2img request plus the picture to start from and, for
inpainting, its mask. What this runtime does is A1111's "masked content: original" over the
"whole picture"; other inpainting modes and the features txt2img refuses are refused the same way."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from .. import RequestError
from .plan import Arrival, Plan, make_plan
from .schema import Txt2ImgRequest

INPAINT_ORIGINAL = 1  # A1111's inpainting_fill: 0 fill, 1 original, 2 latent noise, 3 latent nothing


class Img2ImgRequest(Txt2ImgRequest):
    """A1111's img2img request (the txt2img fields, and these)."""

    init_images: list[str] = Field(default_factory=list, description="exactly one picture (PNG, JPEG or WebP) as base64")
    denoising_strength: float = Field(0.75, description="how much to change, 0 to 1: int(steps x strength) steps run")
    mask: str | None = Field(None, description="inpainting: white = repaint, as base64; the rest stays bit-exact")
    mask_blur: int = Field(4, description="the mask's blur in pixels, 0 to 64")
    inpainting_fill: int = Field(INPAINT_ORIGINAL, description="must be 1 (original) with a mask")
    inpaint_full_res: bool = Field(False, description="must be false (whole picture) with a mask")
    inpainting_mask_invert: int = Field(0, description="1 repaints where the mask is black")
    initial_noise_multiplier: float = Field(1.0, description="must be 1")


def _refuse_unsupported(body: Img2ImgRequest) -> None:
    if len(body.init_images) != 1:
        raise RequestError(f"init_images has {len(body.init_images)} pictures: send exactly one (base64)")
    if body.initial_noise_multiplier != 1.0:
        raise RequestError(f"initial_noise_multiplier={body.initial_noise_multiplier!r}: only 1 is available here; leave it out")
    if body.mask is None:
        return
    if body.inpainting_fill != INPAINT_ORIGINAL:
        raise RequestError(
            f"inpainting_fill={body.inpainting_fill!r}: only 1 (masked content: original) is available here; send inpainting_fill=1"
        )
    if body.inpaint_full_res:
        raise RequestError("inpaint_full_res=true: only the whole picture is inpainted here; send inpaint_full_res=false")
    if body.inpainting_mask_invert not in (0, 1):
        raise RequestError(f"inpainting_mask_invert={body.inpainting_mask_invert!r}: must be 0 or 1")


def make_img2img_plan(body: Img2ImgRequest, arrival: Arrival) -> Plan:
    """Check ``body`` and build its plan (the txt2img checks, then the picture and mask's own);
    the pictures are decoded under the service's memory budget, as the people's photos are."""
    _refuse_unsupported(body)
    plan = make_plan(body, arrival)
    start: dict[str, object] = {"init_image": arrival.decode_photo(body.init_images[0], "init_images[0]"),
                                "strength": body.denoising_strength, "mask_blur": body.mask_blur}
    if body.mask is not None:
        mask = arrival.decode_photo(body.mask, "mask")[..., 0]
        start["mask"] = np.subtract(255, mask, dtype=np.uint8) if body.inpainting_mask_invert else mask
    plan.requests = [request.with_updates(**start) for request in plan.requests]
    for request in plan.requests:
        request.validate(people=len(plan.people))  # sizes, strength, mask: the CLI's messages
    for key in ("init_images", "mask"):
        if plan.echo.get(key):
            plan.echo[key] = "<base64 picture left out>"
    return plan
