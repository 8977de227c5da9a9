"""The torch UNet step on CUDA: fp32 vs fp16 vs fp16 + bind vs fp16 + bind + CUDA graphs.

Full SD1.5 width: the UNet is built from the real SD1.5 configuration shipped in the package
(``dynamicid_rt/data/sd15/unet/config.json``) with random weights and random SAA processors (LoRA
rank 128, to_k_ip/to_v_ip), nothing downloaded. 512x512 (latent 64), 2 identities with gating,
classifier-free guidance (2 UNet rows per image). Prints per-step and per-image times, ratios to
fp32 and peak GPU memory, all measured side by side in this one run.

    python benchmarks/bench_gpu.py [--size 64] [--batch 1] [--steps 30] [--repeats 20]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dynamicid_rt.backends.torch_bound import STEP_INPUTS, BoundUNet
from dynamicid_rt.models.saa import install_saa

CONFIG = Path(__file__).resolve().parents[1] / "dynamicid_rt" / "data" / "sd15" / "unet" / "config.json"
RANK = 128


def random_processors(unet, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random SAA weights in the release layout (SPEC §2), small enough to keep activations sane."""
    sd = {}
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.rsplit(".", 1)[0])
        for target in ("to_q", "to_k", "to_v", "to_out"):
            lin = attn.to_out[0] if target == "to_out" else getattr(attn, target)
            sd[f"{i}.{target}_lora.down.weight"] = torch.randn(RANK, lin.in_features, generator=gen) * 0.01
            sd[f"{i}.{target}_lora.up.weight"] = torch.randn(lin.out_features, RANK, generator=gen) * 0.01
        if attn.is_cross_attention:
            for p in ("to_k_ip", "to_v_ip"):
                sd[f"{i}.{p}.weight"] = torch.randn(attn.to_k.out_features, attn.to_k.in_features, generator=gen) * 0.03
    return sd


def build_unet(device: torch.device):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(json.loads(CONFIG.read_text())).eval().requires_grad_(False)
    return install_saa(unet, random_processors(unet, torch.Generator().manual_seed(1)), "random").to(device)


def engine_inputs(rows: int, size: int, n_ids: int, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    inputs = dict(
        sample=torch.randn(rows, 4, size, size, generator=gen),
        timestep=torch.full((rows,), 500.0),
        encoder_hidden_states=torch.randn(rows, 77, 768, generator=gen),
        id_tokens=torch.randn(rows, 4 * n_ids, 768, generator=gen),
        id_boxes=torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 1.0]]),
        id_scale=torch.ones(n_ids),
        id_boost=torch.full((1,), 4.0),
        id_gating=torch.ones(1),
        id_mix=torch.full((1,), 0.5),
    )
    return {k: v.to(device) for k, v in inputs.items()}


def as_model_inputs(inputs: dict[str, torch.Tensor], dtype: torch.dtype, channels_last: bool) -> dict[str, torch.Tensor]:
    """Activations in the model's dtype, control inputs fp32 (as TorchBackend._tensor does)."""
    out = dict(inputs)
    for name in ("sample", "encoder_hidden_states", "id_tokens"):
        out[name] = inputs[name].to(dtype)
    if channels_last:
        out["sample"] = out["sample"].contiguous(memory_format=torch.channels_last)
    return out


def time_steps(step, repeats: int) -> float:
    """Median seconds per call of ``step`` (synchronised), after warm-up."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="latent size (pixels / 8)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (2 UNet rows each with CFG)")
    parser.add_argument("--steps", type=int, default=30, help="sampler steps per image, for the per-image figure")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    device = torch.device("cuda")
    rows, n_ids = 2 * args.batch, 2
    base = engine_inputs(rows, args.size, n_ids, device)
    model = build_unet(device)

    results: dict[str, tuple[float, int]] = {}
    outputs: dict[str, torch.Tensor] = {}

    def measure(label: str, step) -> None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            results[label] = (time_steps(step, args.repeats), torch.cuda.max_memory_allocated())
            outputs[label] = step().float().clone()

    with torch.inference_mode():
        fp32_inputs = as_model_inputs(base, torch.float32, channels_last=False)
        measure("fp32 run", lambda: model(*fp32_inputs.values()))
        model.half().to(memory_format=torch.channels_last)
        half = as_model_inputs(base, torch.float16, channels_last=True)
        measure("fp16 run", lambda: model(*half.values()))
        constants = {k: v for k, v in half.items() if k not in STEP_INPUTS}
        bound = BoundUNet(model, constants)
        measure("fp16 + bind", lambda: bound.step(half["sample"], half["timestep"], half["id_boost"]))
        graphed = BoundUNet(model, constants, cuda_graphs=True)
        measure("fp16 + bind + CUDA graphs", lambda: graphed.step(half["sample"], half["timestep"], half["id_boost"]))

    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; SD1.5 UNet (random weights, LoRA rank "
          f"{RANK}), latent {args.size}x{args.size} ({args.size * 8} px), {args.batch} image(s) = {rows} rows with CFG, "
          f"{n_ids} identities, gating on; median of {args.repeats}")
    reference = results["fp32 run"][0]
    for label, (seconds, peak) in results.items():
        per_image = seconds * args.steps / args.batch
        diff = float((outputs[label] - outputs["fp32 run"]).norm() / outputs["fp32 run"].norm())
        print(f"{label:27s} {seconds * 1e3:8.2f} ms/step  {per_image:7.2f} s/image ({args.steps} steps)  "
              f"x{reference / seconds:5.2f} vs fp32  peak {peak / 2**30:6.2f} GiB  rel.diff {diff:.1e}")


if __name__ == "__main__":
    main()
