"""Random DynamicID checkpoints in the release's key layout (SAA.bin, IMR.bin, key_point_encoder.bin),
at the sizes of a :class:`TinySizes` (the tiny bundle's toy widths, or the released model's)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .sizes import TINY, TinySizes

if TYPE_CHECKING:
    import torch


def _randn(gen: "torch.Generator", *shape: int, std: float) -> "torch.Tensor":
    import torch

    return torch.randn(*shape, generator=gen) * std


def _linear(sd: dict, name: str, gen: "torch.Generator", n_in: int, n_out: int, bias: bool) -> None:
    sd[f"{name}.weight"] = _randn(gen, n_out, n_in, std=n_in**-0.5)
    if bias:
        sd[f"{name}.bias"] = _randn(gen, n_out, std=0.02)


def _layer_norm(sd: dict, name: str, gen: "torch.Generator", dim: int) -> None:
    # Non-trivial affine parameters, so a missed norm shows up in parity tests.
    sd[f"{name}.weight"] = 1.0 + _randn(gen, dim, std=0.1)
    sd[f"{name}.bias"] = _randn(gen, dim, std=0.1)


def _perceiver_attention(sd: dict, name: str, gen: "torch.Generator", dim: int, inner: int, cross: bool) -> None:
    _layer_norm(sd, f"{name}.norm1", gen, dim)
    if cross:
        _layer_norm(sd, f"{name}.norm2", gen, dim)
    _linear(sd, f"{name}.to_q", gen, dim, inner, bias=False)
    _linear(sd, f"{name}.to_kv", gen, dim, 2 * inner, bias=False)
    _linear(sd, f"{name}.to_out", gen, inner, dim, bias=False)


def _feed_forward(sd: dict, name: str, gen: "torch.Generator", dim: int, mult: int = 4) -> None:
    _layer_norm(sd, f"{name}.0", gen, dim)
    _linear(sd, f"{name}.1", gen, dim, mult * dim, bias=False)
    _linear(sd, f"{name}.3", gen, mult * dim, dim, bias=False)


def projector_state(gen: "torch.Generator", sizes: TinySizes = TINY) -> dict[str, "torch.Tensor"]:
    """Face projector weights with IP-Adapter-FaceID-PlusV2's ProjPlusModel keys (4 tokens)."""
    c, w = sizes.context_dim, sizes.clip_width
    sd: dict = {}
    _linear(sd, "proj.0", gen, 512, 1024, bias=True)
    _linear(sd, "proj.2", gen, 1024, 4 * c, bias=True)
    _layer_norm(sd, "norm", gen, c)
    _linear(sd, "perceiver_resampler.proj_in", gen, w, c, bias=True)
    _linear(sd, "perceiver_resampler.proj_out", gen, c, c, bias=True)
    _layer_norm(sd, "perceiver_resampler.norm_out", gen, c)
    inner = (c // 64) * 64
    for i in range(sizes.projector_depth):
        _perceiver_attention(sd, f"perceiver_resampler.layers.{i}.0", gen, c, inner, cross=True)
        _feed_forward(sd, f"perceiver_resampler.layers.{i}.1", gen, c)
    return sd


def saa_state(unet: "torch.nn.Module", gen: "torch.Generator", sizes: TinySizes = TINY) -> dict[str, "torch.Tensor"]:
    """SAA processor weights: LoRA on q, k, v, out of every attention layer, plus ``to_k_ip`` and
    ``to_v_ip`` on cross-attention layers; ``i`` is the layer's position in ``attn_processors``."""
    r, c = sizes.lora_rank, sizes.context_dim
    sd: dict = {}
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.rsplit(".processor", 1)[0])
        for proj, layer in (("q", attn.to_q), ("k", attn.to_k), ("v", attn.to_v), ("out", attn.to_out[0])):
            # Small non-zero up matrices: the LoRA changes the output, the images stay finite.
            sd[f"{i}.to_{proj}_lora.down.weight"] = _randn(gen, r, layer.in_features, std=layer.in_features**-0.5)
            sd[f"{i}.to_{proj}_lora.up.weight"] = _randn(gen, layer.out_features, r, std=0.02)
        if attn.is_cross_attention:
            width = attn.to_k.out_features
            sd[f"{i}.to_k_ip.weight"] = _randn(gen, width, c, std=0.05)
            sd[f"{i}.to_v_ip.weight"] = _randn(gen, width, c, std=0.05)
    return sd


def imr_state(gen: "torch.Generator", sizes: TinySizes = TINY) -> dict[str, "torch.Tensor"]:
    """IMR weights in the release's key layout (D = imr_dim, heads D/64, depth imr_depth)."""
    c, d = sizes.context_dim, sizes.imr_dim
    sd: dict = {}
    _layer_norm(sd, "feature_fusion.0", gen, 2 * c)
    _linear(sd, "feature_fusion.1", gen, 2 * c, d, bias=True)
    _layer_norm(sd, "feature_fusion.3", gen, d)
    _linear(sd, "feature_fusion.4", gen, d, 4 * d, bias=True)
    _layer_norm(sd, "norm_in", gen, c)
    _linear(sd, "proj_in", gen, c, d, bias=True)
    _linear(sd, "proj_out", gen, d, c, bias=True)
    _layer_norm(sd, "norm_out", gen, d)
    for net in ("disentangleNet", "entangleNet"):
        for i in range(sizes.imr_depth):
            _perceiver_attention(sd, f"{net}.{i}.0", gen, d, d, cross=True)
            _perceiver_attention(sd, f"{net}.{i}.1", gen, d, d, cross=False)
            _feed_forward(sd, f"{net}.{i}.2", gen, d)
    return sd


def _conv_bn(sd: dict, name: str, gen: "torch.Generator", n_in: int, n_out: int, k: int) -> None:
    import torch

    sd[f"{name}.conv_block.0.weight"] = _randn(gen, n_out, n_in, k, k, std=(n_in * k * k) ** -0.5)
    sd[f"{name}.conv_block.0.bias"] = _randn(gen, n_out, std=0.05)
    sd[f"{name}.conv_block.1.weight"] = 1.0 + _randn(gen, n_out, std=0.1)
    sd[f"{name}.conv_block.1.bias"] = _randn(gen, n_out, std=0.1)
    # Non-trivial running statistics, so inference-mode BatchNorm is really exercised.
    sd[f"{name}.conv_block.1.running_mean"] = _randn(gen, n_out, std=0.1)
    sd[f"{name}.conv_block.1.running_var"] = 0.5 + torch.rand(n_out, generator=gen)
    sd[f"{name}.conv_block.1.num_batches_tracked"] = torch.tensor(1000, dtype=torch.int64)


def keypoint_encoder_state(gen: "torch.Generator", sizes: TinySizes = TINY) -> dict[str, "torch.Tensor"]:
    """Keypoint encoder weights in the release's layout: k7 stem; stride-2 stages each followed by
    residual 3x3 convs; a 3x3 unpadded conv and a 1x1 conv to C (96x96 -> C x 1 x 1)."""
    widths = sizes.keypoint_widths
    sd: dict = {}
    _conv_bn(sd, "blocks.0.0", gen, 1, widths[0], 7)
    for stage, residuals in enumerate(sizes.keypoint_residuals, start=1):
        _conv_bn(sd, f"blocks.{stage}.0", gen, widths[stage - 1], widths[stage], 3)
        for j in range(1, residuals + 1):
            _conv_bn(sd, f"blocks.{stage}.{j}", gen, widths[stage], widths[stage], 3)
    last = len(sizes.keypoint_residuals) + 1
    _conv_bn(sd, f"blocks.{last}.0", gen, widths[-1], widths[-1], 3)
    _conv_bn(sd, f"blocks.{last}.1", gen, widths[-1], sizes.context_dim, 1)
    return sd
