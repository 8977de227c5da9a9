"""Plain, unfused reference of SPEC §1.5 (Semantic-Activated Attention) for the tests.

Written straight from the spec, independently of ``dynamicid_rt.models.saa``: the LoRA stays
unmerged (x W + x downᵀ upᵀ), attention runs head by head, and the gating, boost, region masks and
mixing are built with explicit loops over batch rows, heads, identities and boxes; each person's
identity strength σ_j (``id_scale``, one per person since contract v2) multiplies the rows of v_z that
come from their 4 tokens. The per-call inputs go to the processors through
``cross_attention_kwargs["ref"]``.
"""
from __future__ import annotations

import math

import torch

TARGETS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}


def lora_linear(x: torch.Tensor, lin: torch.nn.Linear, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    y = x @ lin.weight.T + (x @ down.T) @ up.T
    return y if lin.bias is None else y + lin.bias


def box_cells(box, grid_h: int, grid_w: int) -> torch.Tensor:
    """(h'·w',) bool: the cells a (y0, x0, y1, x1) box covers on an h'×w' grid."""
    y0, x0, y1, x1 = (float(v) for v in box)
    grid = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    grid[int(y0 * grid_h) : int(y1 * grid_h), int(x0 * grid_w) : int(x1 * grid_w)] = True
    return grid.flatten()


def softmax_rows(s: torch.Tensor) -> torch.Tensor:
    e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


class ReferenceProcessor:
    def __init__(self, weights: dict[str, torch.Tensor], cross: bool) -> None:
        self.w = weights
        self.cross = cross

    def proj(self, x, attn, target):
        lin = attn.to_out[0] if target == "to_out" else getattr(attn, target)
        return lora_linear(x, lin, self.w[f"{target}_lora.down.weight"], self.w[f"{target}_lora.up.weight"])

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, ref=None):
        x = hidden_states
        c = x if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = self.proj(x, attn, "to_q"), self.proj(c, attn, "to_k"), self.proj(c, attn, "to_v")
        batch, length, width = q.shape
        heads = attn.heads
        d = width // heads
        out = torch.zeros_like(q)
        for b in range(batch):
            for h in range(heads):
                cols = slice(h * d, (h + 1) * d)
                w = softmax_rows(q[b, :, cols] @ k[b, :, cols].T / math.sqrt(d))
                out[b, :, cols] = w @ v[b, :, cols]
        if self.cross and ref is not None:
            out = out + self.identity(q, heads, ref)
        return self.proj(out, attn, "to_out")

    def identity(self, q, heads, ref):
        z = ref["tokens"]
        k_z = z @ self.w["to_k_ip.weight"].T
        v_z = z @ self.w["to_v_ip.weight"].T
        batch, length, width = q.shape
        d = width // heads
        n_tokens = z.shape[1]
        n_ids = n_tokens // 4
        lat_h, lat_w = ref["latent"]
        k = int(math.sqrt(lat_h * lat_w // length))
        grid_h, grid_w = lat_h // k, lat_w // k
        assert grid_h * grid_w == length
        boxes = ref["boxes"]
        cells = [box_cells(box, grid_h, grid_w) for box in boxes]
        in_any = torch.zeros(length, dtype=torch.bool)
        for c in cells:
            in_any |= c
        s_boost = ref["boost"]
        out = torch.zeros_like(q)
        for b in range(batch):
            # σ ⊙ v_z: row t of v_z belongs to person t // 4.
            v_scaled = v_z[b].clone()
            for j in range(n_ids):
                for t in range(4 * j, 4 * j + 4):
                    v_scaled[t] = ref["scales"][j] * v_z[b, t]
            logits = []
            for h in range(heads):
                cols = slice(h * d, (h + 1) * d)
                logits.append(q[b, :, cols] @ k_z[b, :, cols].T / math.sqrt(d))  # (L, 4N)
            mask = torch.zeros(length, n_tokens, dtype=q.dtype)
            factor = torch.ones(n_tokens, dtype=q.dtype)
            if ref["gating"]:
                a = sum(s.sum(dim=1) for s in logits)
                a = (a - a.min()) / (a.max() - a.min())
                a = torch.where(a < 0.3, torch.zeros_like(a), a)
                a = torch.where(in_any, a + s_boost, a / (s_boost + 1))
                for j in range(n_ids):
                    if j < len(boxes):  # identities without a box of their own are never masked
                        mask[in_any & ~cells[j], 4 * j : 4 * j + 4] = float("-inf")
                if len(boxes) == 1 and n_tokens > 4:
                    factor[:4] = ref["mix"]
                    factor[4:] = 1 - ref["mix"]
            else:
                a = torch.ones(length, dtype=q.dtype)
            for h in range(heads):
                cols = slice(h * d, (h + 1) * d)
                prob = softmax_rows(logits[h] * factor + mask)
                out[b, :, cols] = a[:, None] * (prob @ v_scaled[:, cols])
        return out


def reference_unet(unet, processors, sample, timestep, context, tokens, boxes, scale, boost, gating, mix):
    """Run ``unet`` (unmerged base weights) with reference processors built from the SAA state dict."""
    procs = {}
    for i, name in enumerate(unet.attn_processors):
        cross = name.endswith("attn2.processor")
        params = [f"{t}_lora.{p}.weight" for t in TARGETS for p in ("down", "up")]
        if cross:
            params += ["to_k_ip.weight", "to_v_ip.weight"]
        weights = {p: processors[f"{i}.{p}"].to(unet.dtype) for p in params}
        procs[name] = ReferenceProcessor(weights, cross)
    unet.set_attn_processor(procs)
    ref = {
        "tokens": tokens.to(unet.dtype),
        "boxes": [tuple(b) for b in boxes.tolist()],
        "latent": tuple(sample.shape[-2:]),
        "scales": [float(v) for v in scale],  # id_scale (N,): one per person
        "boost": float(boost),
        "gating": bool(gating > 0.5),
        "mix": float(mix),
    }
    with torch.no_grad():
        return unet(
            sample.to(unet.dtype),
            timestep,
            context.to(unet.dtype),
            cross_attention_kwargs={"ref": ref},
            return_dict=False,
        )[0]
