"""The UNet's feed, in the contract's input names (SPEC §4 ``unet``), built in one place.

A request's identity inputs are packed once per generation into :class:`IdentityInputs`, each under
its contract name; :func:`unet_feed` adds the text states and a step's sample, timestep and boost
for a group of images. The sampler's denoiser (:class:`~dynamicid_rt.denoiser.guided_unet.GuidedUNet`, which
binds :func:`constant_inputs` once per chunk and sends :func:`step_inputs` each step) and the
activation maps both feed the UNet through these functions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..identity.value import stack_identity_tokens
from ..request import Request

_WHOLE_IMAGE = ((0.0, 0.0, 1.0, 1.0),)


@dataclass(frozen=True)
class IdentityInputs:
    """The identity inputs of one generation, float32, named as the UNet takes them."""

    id_tokens: np.ndarray  # (4N, C): the conditional rows' ID tokens, person after person
    uncond_tokens: np.ndarray  # (4N, C): the unconditional rows' (the encoder's empty-face tokens)
    id_boxes: np.ndarray  # (M, 4): y0, x0, y1, x1 of each person's region (one region: they mix)
    id_scale: np.ndarray  # (N,): each person's strength
    id_gating: np.ndarray  # (1,): 1 keeps each person's tokens inside their own region
    id_mix: np.ndarray  # (1,): the first person's share where several share one region


def identity_inputs(request: Request, unconditional: np.ndarray, context_dim: int, gating: bool) -> IdentityInputs:
    """``request``'s people as UNet inputs; ``unconditional`` are the (4, C) empty-face tokens."""
    unconditional = np.asarray(unconditional, np.float32)
    controls = {"id_gating": np.array([1.0 if gating else 0.0], np.float32), "id_mix": np.array([request.mix], np.float32)}
    if not request.identities:
        # No people: plain SD1.5 (with the SAA LoRA); SPEC §4: N = 1 with the unconditional tokens
        # and id_scale 0, so the ID branch is present but adds nothing.
        return IdentityInputs(unconditional, unconditional, np.array(_WHOLE_IMAGE, np.float32), np.zeros(1, np.float32), **controls)
    return IdentityInputs(
        id_tokens=stack_identity_tokens(request.identities, context_dim),
        uncond_tokens=np.tile(unconditional, (len(request.identities), 1)),
        id_boxes=np.asarray(request.resolved_boxes(), np.float32).reshape(-1, 4),
        id_scale=np.asarray(request.id_scales(), np.float32),
        **controls,
    )


def constant_inputs(identity: IdentityInputs, states: np.ndarray, images: int, guided: bool) -> dict[str, np.ndarray]:
    """The inputs that stay fixed over the steps, for ``images`` images; ``states`` are the
    (negative, prompt) text states (2, 77, C). With guidance each image is two rows:
    [unconditional] * images + [conditional] * images."""
    states = np.asarray(states, np.float32)
    if guided:
        context = np.repeat(states, images, axis=0)  # [negative]*n + [prompt]*n
        tokens = np.concatenate([np.repeat(identity.uncond_tokens[None], images, 0), np.repeat(identity.id_tokens[None], images, 0)])
    else:
        context = np.repeat(states[1:], images, axis=0)
        tokens = np.repeat(identity.id_tokens[None], images, 0)
    return {
        "encoder_hidden_states": context,
        "id_tokens": tokens,
        "id_boxes": identity.id_boxes,
        "id_scale": identity.id_scale,
        "id_gating": identity.id_gating,
        "id_mix": identity.id_mix,
    }


def step_inputs(sample: np.ndarray, timestep: float, boost: float, guided: bool) -> dict[str, np.ndarray]:
    """The inputs of one step for latents ``sample`` (images, 4, h, w), rows as :func:`constant_inputs`."""
    rows = np.concatenate([sample, sample]) if guided else sample
    return {
        "sample": rows.astype(np.float32),
        "timestep": np.full((len(rows),), timestep, np.float32),
        "id_boost": np.array([boost], np.float32),
    }


def with_conditioning(sample: np.ndarray, conditioning: np.ndarray | None) -> np.ndarray:
    """``sample`` (images, 4, h, w) with an inpainting UNet's channels after it, per image (the
    UNet's ``sample`` input then has 9 channels); as it is without them."""
    if conditioning is None:
        return sample
    return np.concatenate([sample, np.broadcast_to(conditioning, (len(sample), *conditioning.shape[1:]))], axis=1)


def unet_feed(
    identity: IdentityInputs, states: np.ndarray, sample: np.ndarray, timestep: float, boost: float, guided: bool
) -> dict[str, np.ndarray]:
    """Every UNet input for one call on latents ``sample``."""
    return {**step_inputs(sample, timestep, boost, guided), **constant_inputs(identity, states, len(sample), guided)}
