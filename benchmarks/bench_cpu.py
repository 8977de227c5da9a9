"""Every CPU path side by side on the full-size random bundle: torch fp32/bf16, onnxruntime fp32,
OpenVINO fp32/bf16/int8w.

Per UNet call (CFG batch of 2, 2 identities, gating on) and per image through the real pipeline
(text, identities, denoise, decode timed separately), at each --sizes resolution. Paths run
interleaved (for each size, every path in turn), each in its own process so its peak memory (max
RSS) is its own. Ratios are against our torch fp32 path; each image's PSNR is against the torch
fp32 image of the same seed. bf16 paths run only on CPUs with bf16 units.

    python benchmarks/bench_cpu.py                                   # 256 and 512, 20 steps
    python benchmarks/bench_cpu.py --sizes 256 --steps 4 --calls 2   # quick look
    python benchmarks/bench_cpu.py --paths torch-fp32 openvino-bf16

The bundle (about 7 GB) and its ONNX engines (about 5 GB) are written once under --models and
--onnx-cache (default: the user cache), before anything is timed.
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

PATHS = {
    "torch-fp32": ("torch", "fp32"),
    "torch-bf16": ("torch", "bf16"),
    "onnxruntime-fp32": ("onnxruntime", "fp32"),
    "openvino-fp32": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
    "openvino-int8w": ("openvino", "int8w"),  # UNet weights in 8 bits (NNCF), f32 compute
}
REFERENCE = "torch-fp32"
N_IDS = 2
SEED = 7
PROMPT = "two people standing in a park, photo"


def prepare(models: Path, engine_dir: Path) -> None:
    """Write the full-size bundle and its fp32 ONNX engines (both reused when valid)."""
    from dynamicid_rt.export import build_engines
    from dynamicid_rt.tiny.bundle import write_tiny_bundle

    build_engines(write_tiny_bundle(models, full_size=True), engine_dir)


def worker(path: str, models: Path, engine_dir: Path, size: int, steps: int, calls: int, out: Path) -> dict:
    from dynamicid_rt import Pipeline, Request
    from dynamicid_rt.contract import ENGINES

    backend, precision = PATHS[path]
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as cache:
        start = time.perf_counter()
        pipe = Pipeline.load(models, backend=backend, device="cpu", precision=precision, onnx_cache=engine_dir, cache_dir=cache)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        people = [pipe.encode_identity(models / "samples" / f"person_{p}.png") for p in "ab"]
        identities_s = time.perf_counter() - start
        lat = size // 8
        inputs = ENGINES["unet"].sample_inputs(pipe.dims, seed=SEED, B=2, h=lat, w=lat, N=N_IDS, M=N_IDS)
        varying = ("sample", "timestep", "id_boost")
        unet = pipe.backend.bind("unet", {k: v for k, v in inputs.items() if k not in varying})
        step_inputs = {k: inputs[k] for k in varying}
        unet(step_inputs)  # warm-up: compiles the static plan, first-run allocations
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            unet(step_inputs)
            times.append(time.perf_counter() - start)
        request = Request(prompt=PROMPT, identities=people, width=size, height=size, steps=steps, seed=SEED)
        result = pipe.generate(request)
        pipe.close()
    image = np.asarray(result.images[0])
    np.save(out, image)
    timings = {k: result.timings.get(k, float("nan")) for k in ("text", "denoise", "decode", "total")}
    return {
        "path": path, "size": size, "load_s": load_s, "identities_s": identities_s,
        "unet_call_s": float(np.median(times)), **{f"{k}_s": v for k, v in timings.items()},
        "image": str(out), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _report(results: dict[tuple[str, int], dict], paths: list[str], sizes: list[int], steps: int) -> None:
    print(f"full-size random bundle, CFG batch 2, {N_IDS} identities, {steps} steps, CPU; ratios vs {REFERENCE}")
    header = f"{'size':>5} {'path':<17} {'UNet call':>9} {'x':>6} {'text':>6} {'ids':>6} {'denoise':>8} {'decode':>7} {'image':>7} {'x':>6} {'PSNR':>6}"
    print(header)
    for size in sizes:
        ref = results.get((REFERENCE, size))
        ref_image = np.load(ref["image"]) if ref else None
        for path in paths:
            r = results.get((path, size))
            if r is None:
                continue
            call_x = ref["unet_call_s"] / r["unet_call_s"] if ref else float("nan")
            image_s = r["text_s"] + r["identities_s"] + r["denoise_s"] + r["decode_s"]
            ref_image_s = ref["text_s"] + ref["identities_s"] + ref["denoise_s"] + ref["decode_s"] if ref else float("nan")
            psnr = _psnr(np.load(r["image"]), ref_image) if ref_image is not None else float("nan")
            print(
                f"{size:>5} {path:<17} {r['unet_call_s']:>8.2f}s {call_x:>5.2f}x {r['text_s']:>5.2f}s {r['identities_s']:>5.1f}s "
                f"{r['denoise_s']:>7.1f}s {r['decode_s']:>6.1f}s {image_s:>6.1f}s {ref_image_s / image_s:>5.2f}x {psnr:>6.1f}"
            )
    print("peak memory (max RSS over sizes), MiB: " + ", ".join(
        f"{p} {max(r['peak_rss_mib'] for (q, _), r in results.items() if q == p):.0f}" for p in paths
        if any(q == p for q, _ in results)
    ))
    for size in sizes:  # bf16 against the fp32 image of the same backend, same seed
        for path in paths:
            fp32 = path.replace("bf16", "fp32")
            if path.endswith("bf16") and (path, size) in results and (fp32, size) in results:
                psnr = _psnr(np.load(results[(path, size)]["image"]), np.load(results[(fp32, size)]["image"]))
                print(f"{size}: {path} vs {fp32} PSNR {psnr:.1f} dB")


def main() -> None:
    from platformdirs import user_cache_dir

    cache = Path(user_cache_dir("dynamicid-rt"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sizes (square, pixels)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps per image")
    parser.add_argument("--calls", type=int, default=3, help="timed UNet calls per size (median reported)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--models", type=Path, default=cache / "full-size-bundle", help="the full-size random bundle")
    parser.add_argument("--onnx-cache", dest="engine_dir", type=Path, default=cache / "full-size-engines")
    parser.add_argument("--worker", nargs=3, metavar=("PATH", "SIZE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.models, args.engine_dir)
        return
    if args.worker:
        path, size, out = args.worker
        print(json.dumps(worker(path, args.models, args.engine_dir, int(size), args.steps, args.calls, Path(out))))
        return
    from dynamicid_rt.backends import probes

    paths = [p for p in args.paths if not p.endswith("bf16") or probes.cpu_has_bf16()]
    if len(paths) < len(args.paths):
        print("skipping bf16 paths: this CPU has no bf16 units (avx512_bf16 or amx_bf16)")
    common = ["--models", str(args.models), "--onnx-cache", str(args.engine_dir), "--steps", str(args.steps), "--calls", str(args.calls)]
    start = time.perf_counter()
    _child(["--prepare", *common])
    print(f"bundle and engines ready in {time.perf_counter() - start:.0f} s")
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-images-") as images:
        for size in args.sizes:  # interleaved: every path at one size before the next size
            for path in paths:
                out = Path(images) / f"{path}-{size}.npy"
                results[(path, size)] = _child(["--worker", path, str(size), str(out), *common])
                print(f"  {path} {size}: UNet call {results[(path, size)]['unet_call_s']:.2f} s", flush=True)
        _report(results, paths, args.sizes, args.steps)


if __name__ == "__main__":
    main()
