"""Fused SAAUNet vs the unfused reference (tests/saa_reference.py), per UNet call, at SD1.5 width.

Random weights in the real SD1.5 UNet configuration, LoRA rank 128, CPU, fp32, 2 identities with
gating, classifier-free-guidance batch 2. Prints the median time of each and their ratio.

    python benchmarks/bench_saa_unet.py [--size 32] [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from saa_reference import TARGETS, reference_unet  # noqa: E402

from dynamicid_rt.models.saa import install_saa  # noqa: E402

SD15 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
RANK = 128


def random_processors(unet, gen: torch.Generator) -> dict[str, torch.Tensor]:
    sd = {}
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.rsplit(".", 1)[0])
        for target, path in TARGETS.items():
            lin = attn.get_submodule(path)
            sd[f"{i}.{target}_lora.down.weight"] = torch.randn(RANK, lin.in_features, generator=gen) * 0.01
            sd[f"{i}.{target}_lora.up.weight"] = torch.randn(lin.out_features, RANK, generator=gen) * 0.01
        if name.endswith("attn2.processor"):
            for p in ("to_k_ip", "to_v_ip"):
                sd[f"{i}.{p}.weight"] = torch.randn(attn.to_k.out_features, 768, generator=gen) * 0.03
    return sd


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="latent size (pixels / 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    unet = UNet2DConditionModel(**SD15).eval().requires_grad_(False)
    sd = random_processors(unet, gen)
    n_ids, batch, size = 2, 2, args.size
    inputs = dict(
        sample=torch.randn(batch, 4, size, size, generator=gen),
        timestep=torch.full((batch,), 500.0),
        encoder_hidden_states=torch.randn(batch, 77, 768, generator=gen),
        id_tokens=torch.randn(batch, 4 * n_ids, 768, generator=gen),
        id_boxes=torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 1.0]]),
        id_scale=torch.ones(n_ids),  # per person (contract v2)
        id_boost=torch.full((1,), 4.0),
        id_gating=torch.ones(1),
        id_mix=torch.full((1,), 0.5),
    )

    # The reference runs on the unmerged weights first; install_saa then merges in place (one copy in memory).
    t_ref = median_time(lambda: reference_unet(unet, sd, *inputs.values()), args.repeats)
    ref_out = reference_unet(unet, sd, *inputs.values())
    model = install_saa(unet, sd, "random")
    with torch.no_grad():
        t_fused = median_time(lambda: model(*inputs.values()), args.repeats)
        out = model(*inputs.values())
    err = float((out - ref_out).norm() / ref_out.norm())

    print(f"SD1.5 UNet, latent {size}x{size}, batch {batch}, {n_ids} identities, LoRA rank {RANK}, "
          f"CPU fp32, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"unfused reference: {t_ref:8.3f} s/call")
    print(f"fused SAAUNet:     {t_fused:8.3f} s/call")
    print(f"speed-up:          {t_ref / t_fused:8.2f}x   (relative difference {err:.2e})")


if __name__ == "__main__":
    main()
