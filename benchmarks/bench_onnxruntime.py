"""PyTorch eager vs ONNX Runtime CPU at full SD1.5 size (random weights), in one run.

Per UNet call (classifier-free guidance batch of 2, 2 identities with gating) and per image (DDIM
loop of --steps UNet calls plus the VAE decoder), at each --sizes resolution. Each backend runs in
its own process so its peak memory (max RSS) is its own; the ONNX graphs (about 3.5 GB) are
exported first, in a third process.

    python benchmarks/bench_onnxruntime.py --sizes 256 512 --steps 20
    python benchmarks/bench_onnxruntime.py --sizes 256 --steps 2 --calls 2     # quick check
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GUIDANCE = 5.0
N_IDS = 2
SEED = 0


def build_modules():
    """The SD1.5-shaped UNet with SAA (LoRA rank 128, 2 ID projections per cross-attention) and the
    SD1.5-shaped VAE decoder, random weights from a fixed seed (both workers build the same)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dynamicid_rt.models.saa import install_saa
    from dynamicid_rt.models.encoders import VAEDecoder

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
    gen = torch.Generator().manual_seed(SEED)
    processors = {}
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.rsplit(".", 1)[0])
        for proj, layer in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v), ("to_out", attn.to_out[0])):
            processors[f"{i}.{proj}_lora.down.weight"] = torch.randn(128, layer.in_features, generator=gen) * 0.01
            processors[f"{i}.{proj}_lora.up.weight"] = torch.randn(layer.out_features, 128, generator=gen) * 0.01
        if attn.is_cross_attention:
            processors[f"{i}.to_k_ip.weight"] = torch.randn(attn.to_k.out_features, 768, generator=gen) * 0.02
            processors[f"{i}.to_v_ip.weight"] = torch.randn(attn.to_v.out_features, 768, generator=gen) * 0.02
    unet = install_saa(unet, processors, source="random").eval()
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    return unet, VAEDecoder(vae).eval()


def export(workdir: Path) -> None:
    from dynamicid_rt.contract import ENGINES, ModelDims
    from dynamicid_rt.export.onnx_export import export_engine

    unet, vae = build_modules()
    export_engine(unet, ENGINES["unet"], ModelDims(), workdir / "unet.onnx")
    export_engine(vae, ENGINES["vae_decoder"], ModelDims(), workdir / "vae_decoder.onnx")


def _inputs(size: int) -> dict[str, np.ndarray]:
    from dynamicid_rt.contract import ENGINES, ModelDims

    lat = size // 8
    return ENGINES["unet"].sample_inputs(ModelDims(), seed=SEED, B=2, h=lat, w=lat, N=N_IDS, M=N_IDS)


def _runner(backend: str, workdir: Path):
    """``(unet(inputs) -> noise_pred, vae(latent) -> image)`` for one backend."""
    if backend == "torch":
        import torch

        torch.set_grad_enabled(False)
        from dynamicid_rt.contract import ENGINES

        unet, vae = build_modules()
        names = ENGINES["unet"].input_names

        def run_unet(inputs):
            return unet(*(torch.from_numpy(inputs[n]) for n in names)).numpy()

        return run_unet, lambda latent: vae(torch.from_numpy(latent)).numpy()
    import onnxruntime as ort

    unet = ort.InferenceSession(str(workdir / "unet.onnx"), providers=["CPUExecutionProvider"])
    vae = ort.InferenceSession(str(workdir / "vae_decoder.onnx"), providers=["CPUExecutionProvider"])
    return (lambda inputs: unet.run(None, inputs)[0]), (lambda latent: vae.run(None, {"latent": latent})[0])


def worker(backend: str, workdir: Path, sizes: list[int], steps: int, calls: int) -> dict:
    from dynamicid_rt.contract import VAE_SCALE
    from dynamicid_rt.sampling.samplers import SchedulerConfig, sample_ddim

    run_unet, run_vae = _runner(backend, workdir)
    out: dict = {"backend": backend, "sizes": {}}
    for size in sizes:
        inputs = _inputs(size)
        run_unet(inputs)  # warm-up (allocations, ORT's first-run planning)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            run_unet(inputs)
            times.append(time.perf_counter() - start)

        def denoise(x, t, step):
            feed = inputs | {
                "sample": np.concatenate([x, x]).astype(np.float32),
                "timestep": np.full(2, t, np.float32),
                "id_boost": np.array([4.0 if step < 3 else 0.0], np.float32),
            }
            uncond, cond = np.split(run_unet(feed), 2)
            return uncond + GUIDANCE * (cond - uncond)

        noise = np.random.default_rng(SEED).standard_normal(inputs["sample"][:1].shape).astype(np.float32)
        start = time.perf_counter()
        latent = sample_ddim(denoise, noise, SchedulerConfig(), steps)
        image = run_vae((latent / VAE_SCALE).astype(np.float32))
        per_image = time.perf_counter() - start
        out["sizes"][str(size)] = {"unet_call_s": float(np.median(times)), "image_s": per_image, "image_shape": list(image.shape)}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return out


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sizes (square, pixels)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps per image")
    parser.add_argument("--calls", type=int, default=5, help="timed UNet calls per size (median reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the ONNX graphs go (default: a temp dir)")
    parser.add_argument("--worker", choices=["export", "torch", "onnxruntime"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "export":
        export(args.workdir)
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.workdir, args.sizes, args.steps, args.calls)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-ort-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        common = ["--workdir", str(workdir), "--sizes", *map(str, args.sizes), "--steps", str(args.steps), "--calls", str(args.calls)]
        start = time.perf_counter()
        if not (workdir / "unet.onnx").exists() or not (workdir / "vae_decoder.onnx").exists():
            _child(["--worker", "export", *common])
        print(f"exported in {time.perf_counter() - start:.0f} s to {workdir}")
        results = {b: _child(["--worker", b, *common]) for b in ("torch", "onnxruntime")}
    t, o = results["torch"], results["onnxruntime"]
    print(f"SD1.5 size, random weights, CFG batch 2, {N_IDS} identities, DDIM {args.steps} steps, CPU")
    print(f"{'size':>6} {'torch call':>11} {'ORT call':>9} {'speed-up':>9} {'torch image':>12} {'ORT image':>10} {'speed-up':>9}")
    for size in map(str, args.sizes):
        ts, os_ = t["sizes"][size], o["sizes"][size]
        print(
            f"{size:>6} {ts['unet_call_s']:>10.2f}s {os_['unet_call_s']:>8.2f}s {ts['unet_call_s'] / os_['unet_call_s']:>8.2f}x "
            f"{ts['image_s']:>11.1f}s {os_['image_s']:>9.1f}s {ts['image_s'] / os_['image_s']:>8.2f}x"
        )
    print(
        f"peak memory (max RSS): torch {t['peak_rss_mib']:.0f} MiB, ONNX Runtime {o['peak_rss_mib']:.0f} MiB "
        f"(ratio ORT/torch {o['peak_rss_mib'] / t['peak_rss_mib']:.2f})"
    )


if __name__ == "__main__":
    main()
