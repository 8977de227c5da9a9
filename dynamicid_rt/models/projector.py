"""Face projector (SPEC §1.3): ArcFace embedding + CLIP ViT-H features -> 4 identity tokens.

The module tree mirrors IP-Adapter-FaceID-PlusV2's ``ProjPlusModel`` so that the release state
dict loads with strict key checking; every size is read from the tensor shapes. The attention
blocks here are shared with the IMR (``dynamicid_rt.models.imr``).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from ..modelfiles.checkpoints import SAACheckpoint, check_keys, read_projector_checkpoint, read_saa_checkpoint

log = logging.getLogger(__name__)

HEAD_WIDTH = 64


def multi_head_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, head_width: int
) -> torch.Tensor:
    """Multi-head attention (b, l, h·d) -> (b, l, h·d), softmax in fp32 (or wider).

    The scale is split over q and k (d^-1/4 each) as the release does, which keeps fp16 logits in range.
    """
    q, k, v = (t.unflatten(-1, (heads, head_width)).transpose(1, 2) for t in (q, k, v))
    scale = head_width**-0.25
    logits = (q * scale) @ (k * scale).transpose(-2, -1)
    # fp16/bf16 logits are upcast for the softmax; fp32/fp64 stay as they are.
    weight = torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(v.dtype)
    return (weight @ v).transpose(1, 2).flatten(2)


class PerceiverAttention(nn.Module):
    """Latents attend to ``concat(features, latents)``; LayerNorms on both inputs, no biases."""

    def __init__(self, dim: int, heads: int, head_width: int = HEAD_WIDTH) -> None:
        super().__init__()
        inner = heads * head_width
        self.heads = heads
        self.head_width = head_width
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features = self.norm1(features)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([features, latents], dim=-2)).chunk(2, dim=-1)
        return self.to_out(multi_head_attention(q, k, v, self.heads, self.head_width))


def feed_forward(dim: int, inner: int) -> nn.Sequential:
    """LayerNorm -> Linear(d->inner) -> GELU -> Linear(inner->d), no biases (keys .0, .1, .3)."""
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


def tensor_shape(state: Mapping[str, object], key: str, ndim: int, what: str, source: str) -> tuple[int, ...]:
    """Shape of ``state[key]``, or a CheckpointError saying the key is missing or malformed."""
    value = state.get(key)
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != ndim:
        if value is None:
            found = "missing"
        else:
            found = f"of shape {tuple(shape)}" if shape is not None else f"a {type(value).__name__} value"
        keys = sorted(state)
        listing = f"{len(keys)} keys: {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}" if keys else "no keys"
        raise CheckpointError(
            f"{what} checkpoint {source} does not fit: key {key!r} ({ndim}-d tensor) is {found}; found {listing}"
        )
    return tuple(int(s) for s in shape)


def count_indexed(state: Mapping[str, object], prefix: str) -> int:
    """Number of consecutive ``{prefix}{i}.`` groups (layer depth) in a state dict."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    depth = 0
    while depth in indices:
        depth += 1
    return depth


def heads_of(inner: int, what: str, source: str) -> int:
    """Head count of an attention width (the release's heads are always 64 wide)."""
    if inner % HEAD_WIDTH:
        raise CheckpointError(
            f"{what} checkpoint {source} does not fit: attention width {inner} is not a multiple of "
            f"the head width {HEAD_WIDTH}"
        )
    return inner // HEAD_WIDTH


def build_from_state(
    module_factory: Callable[[], nn.Module], state: Mapping[str, object], what: str, source: str
) -> nn.Module:
    """Build a module on the meta device, check the state dict against it and load it strictly.

    The module takes the state's tensors as its parameters (no copy, no random initialisation) and
    is returned in eval mode (BatchNorm uses its running statistics).
    """
    with torch.device("meta"):
        module = module_factory()
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_keys(state, expected, what, source)
    module.load_state_dict(dict(state), strict=True, assign=True)
    return module.eval()


class PerceiverResampler(nn.Module):
    """``proj_in`` -> depth × (PerceiverAttention + FeedForward, residual) -> ``proj_out`` -> ``norm_out``."""

    def __init__(self, dim: int, feature_width: int, depth: int, heads: int, ff_inner: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(feature_width, dim)
        self.proj_out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads), feed_forward(dim, ff_inner)]) for _ in range(depth)
        )

    def forward(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(features)
        for attn, ff in self.layers:
            latents = attn(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class FaceProjector(nn.Module):
    """``forward(id_embeds (B, 512), clip_hidden (B, 257, W)) -> id_tokens (B, 4, C)`` (SPEC §1.3)."""

    def __init__(
        self,
        dim: int,
        clip_width: int,
        *,
        id_width: int = 512,
        hidden: int = 1024,
        num_tokens: int = 4,
        depth: int = 4,
        heads: int | None = None,
        ff_inner: int | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(nn.Linear(id_width, hidden), nn.GELU(), nn.Linear(hidden, num_tokens * dim))
        self.norm = nn.LayerNorm(dim)
        self.perceiver_resampler = PerceiverResampler(
            dim, clip_width, depth, heads or dim // HEAD_WIDTH, ff_inner or 4 * dim
        )

    def forward(self, id_embeds: torch.Tensor, clip_hidden: torch.Tensor) -> torch.Tensor:
        x = self.proj(id_embeds).unflatten(-1, (self.num_tokens, self.dim))
        return self.perceiver_resampler(self.norm(x), clip_hidden)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], source: str = "<memory>") -> "FaceProjector":
        """Build the projector that ``state`` (ProjPlusModel keys) describes and load it strictly."""
        what = "face projector"
        hidden, id_width = tensor_shape(state, "proj.0.weight", 2, what, source)
        out_width, _ = tensor_shape(state, "proj.2.weight", 2, what, source)
        (dim,) = tensor_shape(state, "norm.weight", 1, what, source)
        _, clip_width = tensor_shape(state, "perceiver_resampler.proj_in.weight", 2, what, source)
        depth = count_indexed(state, "perceiver_resampler.layers.")
        if depth == 0 or out_width % dim:
            raise CheckpointError(
                f"{what} checkpoint {source} does not fit: found {depth} resampler layers and proj.2 width "
                f"{out_width} for token width {dim} (expected >= 1 layer and a multiple of {dim})"
            )
        inner, _ = tensor_shape(state, "perceiver_resampler.layers.0.0.to_q.weight", 2, what, source)
        ff_inner, _ = tensor_shape(state, "perceiver_resampler.layers.0.1.1.weight", 2, what, source)
        heads = heads_of(inner, what, source)
        module = build_from_state(
            lambda: cls(
                dim,
                clip_width,
                id_width=id_width,
                hidden=hidden,
                num_tokens=out_width // dim,
                depth=depth,
                heads=heads,
                ff_inner=ff_inner,
            ),
            state,
            what,
            source,
        )
        log.debug(
            "face projector from %s: C=%d, clip width %d, depth %d, heads %d", source, dim, clip_width, depth, heads
        )
        return module


def load_face_projector(
    saa_checkpoint: str | Path,
    projector_checkpoint: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> FaceProjector:
    """The face projector of an SAA checkpoint, or of a separate file when one is given.

    Some releases ship an SAA file without the projector; ``projector_checkpoint`` (an SAA-style
    file with a ``proj_module``/``image_proj`` section, or a plain projector state dict) then
    supplies it, and takes precedence when both hold one.
    """
    if projector_checkpoint is not None:
        state, source = read_projector_checkpoint(projector_checkpoint), str(projector_checkpoint)
    else:
        saa: SAACheckpoint = read_saa_checkpoint(saa_checkpoint)
        if saa.projector is None:
            raise CheckpointError(
                f"SAA checkpoint {saa.path} holds no face projector (no 'proj_module' or 'image_proj' "
                f"section); found {saa.found}. Some releases ship the projector in a separate file: give it "
                "as the projector checkpoint (projector_checkpoint=..., ModelPaths.projector)"
            )
        state, source = saa.projector, str(saa.path)
    module = FaceProjector.from_state_dict(state, source=source)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)
