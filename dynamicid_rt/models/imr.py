"""Expression / pose editing (SPEC §1.4): keypoint encoder and IMR, loading the release state dicts.

``IMREditor`` is the ``imr`` engine of SPEC §4: ``forward(id_tokens (1,4,C), landmarks (2,1,96,96),
text_pooled (2,C)) -> id_tokens (1,4,C)``, row 0 of ``landmarks``/``text_pooled`` being the source
and row 1 the target. Every size is read from the tensor shapes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from ..modelfiles.checkpoints import read_state_dict
from .projector import (
    HEAD_WIDTH,
    PerceiverAttention,
    build_from_state,
    count_indexed,
    feed_forward,
    heads_of,
    multi_head_attention,
    tensor_shape,
)

log = logging.getLogger(__name__)

LANDMARK_SIZE = 96


class ConvBlock(nn.Module):
    """Conv -> BatchNorm (-> + input when residual) -> ReLU; keys ``conv_block.0`` / ``conv_block.1``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, residual: bool) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return torch.relu(out)


# One conv as (cin, cout, kernel) and its block layout, read from the state dict.
ConvShape = tuple[int, int, int]


class KeyPointEncoder(nn.Module):
    """Landmark raster (B, 1, 96, 96) -> (B, C).

    Block 0 is a stride-1 "same" conv; blocks 1 .. n-2 open with a stride-2 conv followed by residual
    3×3 convs; the last block's convs have no padding (3×3 then 1×1 down to 1×1 spatially).
    """

    def __init__(self, blocks: list[list[ConvShape]]) -> None:
        super().__init__()
        last = len(blocks) - 1
        self.blocks = nn.ModuleList()
        for b, convs in enumerate(blocks):
            layers = []
            for j, (cin, cout, k) in enumerate(convs):
                stride = 2 if (0 < b < last and j == 0) else 1
                padding = 0 if b == last else k // 2
                residual = 0 < b < last and j > 0 and cin == cout and k == 3
                layers.append(ConvBlock(cin, cout, k, stride, padding, residual))
            self.blocks.append(nn.Sequential(*layers))
        self.out_dim = blocks[-1][-1][1]

    def forward(self, landmarks: torch.Tensor) -> torch.Tensor:
        x = landmarks
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)

    def output_size(self, size: int = LANDMARK_SIZE) -> int:
        """Spatial side of the feature map for a ``size``×``size`` input."""
        for block in self.blocks:
            for layer in block:
                conv = layer.conv_block[0]
                size = (size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        return size

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], source: str = "<memory>") -> "KeyPointEncoder":
        """Build the encoder that ``state`` (release keys, BatchNorm running stats included) describes."""
        what = "keypoint encoder"
        state = _with_batch_counters(state)
        blocks: list[list[ConvShape]] = []
        for b in range(count_indexed(state, "blocks.")):
            convs = []
            for j in range(count_indexed(state, f"blocks.{b}.")):
                cout, cin, kh, kw = tensor_shape(state, f"blocks.{b}.{j}.conv_block.0.weight", 4, what, source)
                if kh != kw:
                    raise CheckpointError(f"{what} checkpoint {source}: non-square kernel {kh}x{kw} in block {b}.{j}")
                convs.append((cin, cout, kh))
            blocks.append(convs)
        if len(blocks) < 2 or not all(blocks):
            raise CheckpointError(
                f"{what} checkpoint {source} does not fit: expected blocks.{{k}}.{{j}}.conv_block.* for at least "
                f"2 blocks; found {len(blocks)} block(s) in {len(state)} keys"
            )
        chain = [c for convs in blocks for c in convs]
        if chain[0][0] != 1 or any(a[1] != b[0] for a, b in zip(chain, chain[1:])):
            raise CheckpointError(
                f"{what} checkpoint {source} does not fit: conv channels do not chain from 1 input channel "
                f"({' -> '.join(f'{c[0]}->{c[1]}' for c in chain)})"
            )
        module = build_from_state(lambda: cls(blocks), state, what, source)
        side = module.output_size()
        if side != 1:
            raise CheckpointError(
                f"{what} checkpoint {source} does not fit: it maps a {LANDMARK_SIZE}x{LANDMARK_SIZE} raster to "
                f"{side}x{side} (expected 1x1); its stages are {[len(c) for c in blocks]}"
            )
        return module


def _with_batch_counters(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add missing BatchNorm ``num_batches_tracked`` counters (unused at inference; some savers drop them)."""
    out = dict(state)
    for key in state:
        if key.endswith(".running_mean"):
            out.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return out


class SelfAttention(nn.Module):
    """LayerNorm -> multi-head self-attention, no biases (release ``MultAttention``)."""

    def __init__(self, dim: int, heads: int, head_width: int = HEAD_WIDTH) -> None:
        super().__init__()
        inner = heads * head_width
        self.heads = heads
        self.head_width = head_width
        self.norm1 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        return self.to_out(multi_head_attention(self.to_q(x), k, v, self.heads, self.head_width))


def _layers(depth: int, dim: int, heads: int, ff_inner: int) -> nn.ModuleList:
    return nn.ModuleList(
        nn.ModuleList([PerceiverAttention(dim, heads), SelfAttention(dim, heads), feed_forward(dim, ff_inner)])
        for _ in range(depth)
    )


class IMR(nn.Module):
    """``forward(id_tokens (B,T,C), src_keypoints, tgt_keypoints, src_text, tgt_text (each (B,C)))``.

    Disentangles the tokens from the source landmarks/prompt, then entangles them with the target's.
    """

    def __init__(
        self,
        dim: int,
        width: int,
        *,
        num_queries: int = 4,
        disentangle_depth: int = 1,
        entangle_depth: int = 1,
        heads: int | None = None,
        ff_inner: int | None = None,
    ) -> None:
        super().__init__()
        heads = heads or width // HEAD_WIDTH
        ff_inner = ff_inner or 4 * width
        self.width = width
        self.num_queries = num_queries
        self.feature_fusion = nn.Sequential(
            nn.LayerNorm(2 * dim),
            nn.Linear(2 * dim, width),
            nn.GELU(),
            nn.LayerNorm(width),
            nn.Linear(width, num_queries * width),
            nn.GELU(),
        )
        self.norm_in = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, width)
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, dim)
        self.disentangleNet = _layers(disentangle_depth, width, heads, ff_inner)
        self.entangleNet = _layers(entangle_depth, width, heads, ff_inner)

    def fuse(self, keypoints: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, C), (B, C) -> (B, num_queries, D) conditioning latents."""
        return self.feature_fusion(torch.cat([keypoints, text], dim=-1)).unflatten(-1, (self.num_queries, self.width))

    def forward(
        self,
        id_tokens: torch.Tensor,
        src_keypoints: torch.Tensor,
        tgt_keypoints: torch.Tensor,
        src_text: torch.Tensor,
        tgt_text: torch.Tensor,
    ) -> torch.Tensor:
        src = self.fuse(src_keypoints, src_text)
        tgt = self.fuse(tgt_keypoints, tgt_text)
        x = self.proj_in(self.norm_in(id_tokens))
        for net, latents in ((self.disentangleNet, src), (self.entangleNet, tgt)):
            for cross, self_attn, ff in net:
                x = cross(latents, x) + x
                x = self_attn(x) + x
                x = ff(x) + x
        return self.proj_out(self.norm_out(x))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], source: str = "<memory>") -> "IMR":
        """Build the IMR that ``state`` (release keys) describes and load it strictly."""
        what = "IMR"
        (dim,) = tensor_shape(state, "norm_in.weight", 1, what, source)
        width, _ = tensor_shape(state, "proj_in.weight", 2, what, source)
        fused, _ = tensor_shape(state, "feature_fusion.4.weight", 2, what, source)
        disentangle = count_indexed(state, "disentangleNet.")
        entangle = count_indexed(state, "entangleNet.")
        if not disentangle or not entangle or fused % width:
            raise CheckpointError(
                f"{what} checkpoint {source} does not fit: found {disentangle} disentangle and {entangle} "
                f"entangle layers (expected >= 1 each) and fusion width {fused} for width {width} "
                f"(expected a multiple of {width})"
            )
        inner, _ = tensor_shape(state, "disentangleNet.0.0.to_q.weight", 2, what, source)
        ff_inner, _ = tensor_shape(state, "disentangleNet.0.2.1.weight", 2, what, source)
        heads = heads_of(inner, what, source)
        module = build_from_state(
            lambda: cls(
                dim,
                width,
                num_queries=fused // width,
                disentangle_depth=disentangle,
                entangle_depth=entangle,
                heads=heads,
                ff_inner=ff_inner,
            ),
            state,
            what,
            source,
        )
        log.debug("IMR from %s: C=%d, D=%d, depth %d+%d, heads %d", source, dim, width, disentangle, entangle, heads)
        return module


class IMREditor(nn.Module):
    """The ``imr`` engine: ``forward(id_tokens (1,4,C), landmarks (2,1,96,96), text_pooled (2,C))``.

    Row 0 of ``landmarks`` and ``text_pooled`` is the source, row 1 the target.
    """

    def __init__(self, keypoint_encoder: KeyPointEncoder, imr: IMR) -> None:
        super().__init__()
        self.keypoint_encoder = keypoint_encoder
        self.imr = imr
        # Inference only: a parent left in train mode would put the BatchNorms back on batch
        # statistics whenever something restores the mode recursively (the ONNX exporter does).
        self.eval()

    def forward(self, id_tokens: torch.Tensor, landmarks: torch.Tensor, text_pooled: torch.Tensor) -> torch.Tensor:
        keypoints = self.keypoint_encoder(landmarks)
        return self.imr(id_tokens, keypoints[:1], keypoints[1:2], text_pooled[:1], text_pooled[1:2])


def load_imr(
    imr_checkpoint: str | Path,
    keypoint_encoder_checkpoint: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> IMREditor:
    """The IMR editor of SPEC §1.4 from the release's IMR and keypoint-encoder files, in eval mode."""
    imr_state = read_state_dict(imr_checkpoint, "IMR", ("feature_fusion.", "disentangleNet.", "entangleNet."))
    kpe_state = read_state_dict(keypoint_encoder_checkpoint, "keypoint encoder", ("blocks.",))
    imr = IMR.from_state_dict(imr_state, source=str(imr_checkpoint))
    encoder = KeyPointEncoder.from_state_dict(kpe_state, source=str(keypoint_encoder_checkpoint))
    token_width = imr.norm_in.normalized_shape[0]
    if encoder.out_dim != token_width:
        raise CheckpointError(
            f"keypoint encoder {keypoint_encoder_checkpoint} outputs {encoder.out_dim} features but IMR "
            f"{imr_checkpoint} expects {token_width}: the two files are from different models"
        )
    editor = IMREditor(encoder, imr)
    return editor.to(device=device, dtype=dtype).eval().requires_grad_(False)
