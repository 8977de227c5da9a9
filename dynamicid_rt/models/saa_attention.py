"""Semantic-Activated Attention (SPEC §1.5): the attention processors of the SD1.5 UNet and
:class:`SAAUNet`, the ``unet`` engine of §4 (built by :func:`dynamicid_rt.models.saa.install_saa`).

Self-attention is plain fused attention on the LoRA-merged weights; cross-attention runs the SAA
processor, which adds the identity branch to the text branch while sharing the query.

Per-call inputs never live on the processors: :class:`SAAUNet` computes everything shared by the
layers once per call (region masks and box coverage per resolution, the token mixing weights, the
gating flag) and hands it down through diffusers' ``cross_attention_kwargs``. Sizes are computed
with tensor operations only, so one traced ONNX graph serves every batch, latent size, identity
count, box count and gating setting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

TOKENS_PER_ID = 4
GATE_THRESHOLD = 0.3  # normalised activations below this are zeroed (SPEC §1.5 step 3)
_NORM_EPS = 1e-12  # guards the min-max division when every position has the same activation
_EDGE_MARGIN = 1e-4  # box edges: restores exact decimal products before flooring in fp32


@dataclass
class SAAInputs:
    """What every SAA layer of one UNet call shares (built once in :meth:`SAAUNet.forward`).

    ``levels`` maps a resolution level (0 = full latent size) to ``(masked, inside)``:
    ``masked`` (L, 4N) bool, True where a token's logit is −∞ (gating already folded in);
    ``inside`` (L,) bool, True at positions inside any box.
    """

    tokens: torch.Tensor  # (B, 4N, C) in the model dtype
    token_scale: torch.Tensor  # (4N,) fp32: each person's id_scale repeated over their 4 tokens
    boost: torch.Tensor  # (1,) fp32
    gate: torch.Tensor  # (1,) bool
    token_mix: torch.Tensor  # (4N,) fp32 logit multipliers (all ones unless mixing)
    levels: dict[int, tuple[torch.Tensor, torch.Tensor]]
    # Set only by SAAUNet.activation_maps: each SAA layer appends its per-identity map (B, N, L).
    record: list[torch.Tensor] | None = None
    # Set only by SAAUNet.prepare(project_tokens=True) for repeated calls with the same tokens:
    # each SAA layer's (k_z, v_z) = (to_k_ip, to_v_ip)(tokens), (B, 4N, width), keyed by layer path.
    token_kv: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, width = x.shape
    return x.view(b, n, heads, width // heads).transpose(1, 2)


def _text_attention(attn: "Attention", hidden: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard attention with the merged projections: returns (q, O) in (B, heads, L, d)."""
    q = _split_heads(attn.to_q(hidden), attn.heads)
    k = _split_heads(attn.to_k(context), attn.heads)
    v = _split_heads(attn.to_v(context), attn.heads)
    return q, F.scaled_dot_product_attention(q, k, v)


def _project_out(attn: "Attention", out: torch.Tensor) -> torch.Tensor:
    b, heads, n, d = out.shape
    out = out.transpose(1, 2).reshape(b, n, heads * d)
    return attn.to_out[1](attn.to_out[0](out))


class SelfAttnProcessor:
    """Self-attention (attn1): fused attention on the LoRA-merged weights.

    ``saa`` is accepted (and unused) so diffusers passes the shared kwargs without warning.
    """

    def __call__(
        self,
        attn: "Attention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        saa: SAAInputs | None = None,
    ) -> torch.Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return _project_out(attn, _text_attention(attn, hidden_states, context)[1])


class SAAAttnProcessor(nn.Module):
    """Cross-attention (attn2) with the identity branch of SPEC §1.5.

    Holds only weights and the layer's resolution level (static structure); the per-call inputs
    arrive as ``saa``. Without ``saa`` (the bare diffusers UNet called directly) it is plain
    text cross-attention.
    """

    def __init__(self, width: int, context_dim: int, level: int, key: str = "") -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(context_dim, width, bias=False)
        self.to_v_ip = nn.Linear(context_dim, width, bias=False)
        self.level = level
        self.key = key  # the layer's module path: names its entry in SAAInputs.token_kv

    def project_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k_z, v_z)`` (B, 4N, width): the identity tokens through to_k_ip / to_v_ip."""
        return self.to_k_ip(tokens), self.to_v_ip(tokens)

    def __call__(
        self,
        attn: "Attention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        saa: SAAInputs | None = None,
    ) -> torch.Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, out = _text_attention(attn, hidden_states, context)
        if saa is not None:
            out = out + self._identity_branch(q, saa).to(out.dtype)
        return _project_out(attn, out)

    def _identity_branch(self, q: torch.Tensor, saa: SAAInputs) -> torch.Tensor:
        heads, d = q.shape[1], q.shape[3]
        k_z, v_z = saa.token_kv[self.key] if saa.token_kv is not None else self.project_tokens(saa.tokens)
        k_z, v_z = _split_heads(k_z, heads), _split_heads(v_z, heads)
        # (B, heads, L, 4N): tiny next to the text logits, so everything below runs in fp32.
        logits = torch.matmul(q, k_z.transpose(-1, -2)).float() * (d**-0.5)
        masked, inside = saa.levels[self.level]

        act = logits.sum(dim=(1, 3))  # unmasked logits summed over heads and tokens: (B, L)
        lo = act.amin(dim=-1, keepdim=True)
        hi = act.amax(dim=-1, keepdim=True)
        act = (act - lo) / (hi - lo + _NORM_EPS)
        act = torch.where(act < GATE_THRESHOLD, torch.zeros_like(act), act)
        act = torch.where(inside, act + saa.boost, act / (saa.boost + 1.0))
        act = torch.where(saa.gate, act, torch.ones_like(act))

        # Mix before masking: masks are empty whenever mixing is on (one box), and 0·(−∞) would be NaN.
        logits = (logits * saa.token_mix).masked_fill(masked, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if saa.record is not None:
            # How much each identity's tokens draw, gated: (B, N, L), summed over heads.
            per_id = probs.sum(dim=1).unflatten(-1, (-1, TOKENS_PER_ID)).sum(-1).transpose(1, 2)
            saa.record.append(act[:, None, :] * per_id)
        # id_scale[j] scales the value rows of person j's tokens (SPEC §1.5 step 4).
        out = torch.matmul(probs, v_z.float() * saa.token_scale[:, None])
        return act[:, None, :, None] * out


def _grid_shape(lat_h, lat_w, n_pos):
    """``(h', w')`` of a layer with ``n_pos`` positions: k = int(√(H·W // L)), w' = W // k, h' = H // k.

    Sizes are Python ints in eager mode (no device round trip, so the ``meta`` device and CUDA graph
    capture work) and 0-d tensors while tracing (so the graph serves every latent size)."""
    if isinstance(n_pos, torch.Tensor):
        k = torch.floor(torch.sqrt((lat_h * lat_w // n_pos).to(torch.float32))).to(torch.int64)
    else:
        k = math.isqrt(lat_h * lat_w // n_pos)
    return lat_h // k, lat_w // k


def _box_scale(grid_h, grid_w, device: torch.device) -> torch.Tensor:
    """``(h', w', h', w')`` as fp32 on the boxes' device, multiplying boxes ``(y0, x0, y1, x1)``."""
    if isinstance(grid_h, torch.Tensor):
        return torch.stack([grid_h, grid_w, grid_h, grid_w]).to(device, torch.float32)
    return torch.tensor([grid_h, grid_w, grid_h, grid_w], dtype=torch.float32, device=device)


def _region_masks(
    boxes: torch.Tensor,
    latent_hw: tuple[int | torch.Tensor, int | torch.Tensor],
    layer_hw: tuple[int | torch.Tensor, int | torch.Tensor],
    block: torch.Tensor,
    block_has_box: torch.Tensor,
    gate: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked (L, 4N), inside (L,))`` for a layer of ``layer_hw`` positions (SPEC §1.5 box grid)."""
    n_pos = layer_hw[0] * layer_hw[1]
    grid_h, grid_w = _grid_shape(*latent_hw, n_pos)  # position p sits at row p // w', column p % w'
    pos = torch.arange(n_pos, device=boxes.device)
    row = pos // grid_w
    col = pos - row * grid_w  # p % w', written without Mod for TensorRT's parser
    row, col = row.to(torch.float32)[None, :], col.to(torch.float32)[None, :]
    # int(y0·h') with exact decimal arithmetic: in fp32, 0.53·100 lands just below 53, so a margin far
    # below one cell restores the exact product before flooring (float64 Python has its own misses).
    edges = torch.floor(boxes.to(torch.float32) * _box_scale(grid_h, grid_w, boxes.device) + _EDGE_MARGIN)
    y0, x0, y1, x1 = edges[:, 0:1], edges[:, 1:2], edges[:, 2:3], edges[:, 3:4]
    in_box = ((row >= y0) & (row < y1) & (col >= x0) & (col < x1)).to(torch.float32)  # (M, L)
    inside = in_box.amax(dim=0) > 0.5
    # Token block j (identity j) is masked where some box covers p but box j does not; blocks
    # without a box of their own (mixing: one box, several identities) are never masked.
    own = in_box.index_select(0, block) > 0.5  # (4N, L)
    masked = inside[None, :] & ~own & block_has_box[:, None] & gate
    return masked.transpose(0, 1), inside


class SAAUNet(nn.Module):
    """The ``unet`` engine of SPEC §4: SD1.5 UNet with merged LoRA and SAA cross-attention."""

    def __init__(self, unet: "UNet2DConditionModel") -> None:
        super().__init__()
        self.unet = unet
        self._levels = tuple(
            sorted({p.level for p in unet.attn_processors.values() if isinstance(p, SAAAttnProcessor)})
        )

    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        id_tokens: torch.Tensor,
        id_boxes: torch.Tensor,
        id_scale: torch.Tensor,
        id_boost: torch.Tensor,
        id_gating: torch.Tensor,
        id_mix: torch.Tensor,
        record: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Noise prediction (B, 4, h, w); shapes as in the engine table, SPEC §4. ``record`` is for
        :meth:`activation_maps` only (not part of the engine contract)."""
        saa = self.prepare(
            sample.shape[-2:], id_tokens, id_boxes, id_scale, id_boost, id_gating, id_mix, record=record
        )
        return self.denoise(sample, timestep, encoder_hidden_states, saa)

    def denoise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, saa: SAAInputs
    ) -> torch.Tensor:
        """The UNet step on identity inputs from :meth:`prepare` (reused across the steps of a generation)."""
        return self.unet(
            sample, timestep, encoder_hidden_states, cross_attention_kwargs={"saa": saa}, return_dict=False
        )[0]

    def prepare(
        self,
        latent_hw: "tuple[int | torch.Tensor, int | torch.Tensor] | torch.Size",
        id_tokens: torch.Tensor,
        id_boxes: torch.Tensor,
        id_scale: torch.Tensor,
        id_boost: torch.Tensor,
        id_gating: torch.Tensor,
        id_mix: torch.Tensor,
        record: list[torch.Tensor] | None = None,
        project_tokens: bool = False,
    ) -> SAAInputs:
        """What every SAA layer shares for latents of ``latent_hw``: region masks per level, token
        scales and mixing weights, all on the inputs' device. ``project_tokens`` also runs every
        layer's to_k_ip/to_v_ip once, for a caller that reuses the result over many steps."""
        lat_h, lat_w = latent_hw
        device = id_tokens.device
        n_tokens, n_boxes = id_tokens.shape[1], id_boxes.shape[0]
        boxes = id_boxes.to(torch.float32)
        gate = id_gating.to(torch.float32) > 0.5
        mix = id_mix.to(torch.float32)

        token = torch.arange(n_tokens, device=device)
        block = token // TOKENS_PER_ID
        block_has_box = block < n_boxes
        mixing = gate & (n_boxes == 1) & (n_tokens > TOKENS_PER_ID)
        token_mix = torch.where(
            mixing, torch.where(token < TOKENS_PER_ID, mix, 1.0 - mix), torch.ones_like(mix)
        )
        box_of_block = torch.where(block_has_box, block, torch.zeros_like(block))  # any valid row without a box

        levels = {}
        size = (lat_h, lat_w)
        for level in range(max(self._levels, default=-1) + 1):
            if level in self._levels:
                levels[level] = _region_masks(boxes, (lat_h, lat_w), size, box_of_block, block_has_box, gate)
            # Each downsampler is a stride-2 3x3 conv with padding 1: ceil(n / 2).
            size = ((size[0] - 1) // 2 + 1, (size[1] - 1) // 2 + 1)

        tokens = id_tokens.to(self.dtype)
        token_kv = None
        if project_tokens:
            token_kv = {p.key: p.project_tokens(tokens) for p in self.unet.attn_processors.values() if isinstance(p, SAAAttnProcessor)}
        return SAAInputs(
            tokens=tokens,
            token_scale=id_scale.to(torch.float32).index_select(0, block),
            boost=id_boost.to(torch.float32),
            gate=gate,
            token_mix=token_mix,
            levels=levels,
            record=record,
            token_kv=token_kv,
        )

    @torch.no_grad()
    def activation_maps(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Each identity's SAA activation map for one call with the engine inputs: (B, N, h, w) at
        latent size, the gated identity attention of every SAA layer resized and averaged, each map
        scaled to [0, 1]."""
        record: list[torch.Tensor] = []
        sample = inputs[0]
        self.forward(*inputs, record=record)
        lat_h, lat_w = sample.shape[-2:]
        maps = []
        for layer in record:
            k = int((lat_h * lat_w // layer.shape[-1]) ** 0.5)
            grid = layer.unflatten(-1, (lat_h // k, lat_w // k))
            maps.append(F.interpolate(grid, size=(lat_h, lat_w), mode="bilinear", align_corners=False))
        mean = torch.stack(maps).mean(0)
        peak = mean.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]
        return (mean / peak).clamp(0, 1)
