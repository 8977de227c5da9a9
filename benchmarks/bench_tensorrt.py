"""TensorRT against torch fp16 and ONNX Runtime CUDA at full SD1.5 size (random weights), in one run.

Per UNet step (classifier-free guidance batch of 2, 2 identities with gating) and per image (DDIM
loop of --steps steps plus the VAE decoder) at 512x512, and each backend's peak GPU memory (read
with nvidia-smi while it runs, each backend in its own process). The graphs come from
bench_onnxruntime.py's SD1.5-shaped modules; the TensorRT plans are built from their fp16 graphs,
one dynamic and one static 512x512 plan (CUDA graphs), like `build-engines --backend tensorrt`.

With ``--library rtx`` the plans are TensorRT-RTX's (portable, built for its default targets) and
its dynamic plan is timed twice, each in a fresh process: with a cold runtime cache (the kernels
are compiled just in time during the run) and with the warm cache the first run saved.

Needs an NVIDIA GPU, TensorRT (tensorrt-cu12 or -cu13) or TensorRT-RTX ([tensorrt-rtx]),
cuda-python, torch with CUDA and onnxruntime-gpu; it stops at once, saying what is missing.

    python benchmarks/bench_tensorrt.py --steps 30
    python benchmarks/bench_tensorrt.py --library rtx --steps 30
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_onnxruntime as shared  # noqa: E402  (the same SD1.5-shaped modules and export)

SIZE = 512
BACKENDS = {
    "tensorrt": ("torch-fp16", "onnxruntime-cuda", "tensorrt-dynamic", "tensorrt-static"),
    "rtx": ("torch-fp16", "onnxruntime-cuda", "tensorrt-rtx-cold", "tensorrt-rtx-warm", "tensorrt-rtx-static"),
}
LIBRARY_BACKEND = {"tensorrt": "tensorrt", "rtx": "tensorrt-rtx"}


def check_requirements(library: str) -> None:
    """Stop with one line per missing piece, before anything is exported or built."""
    from dynamicid_rt.backends import probes
    from dynamicid_rt.engines.library import TensorRTUnavailable, load

    problems = []
    try:
        load(LIBRARY_BACKEND[library], "benchmarks/bench_tensorrt.py")
    except TensorRTUnavailable as exc:
        problems.append(str(exc))
    if not probes.installed("cuda"):
        problems.append("cuda-python is not installed: pip install 'dynamicid-rt[tensorrt]'")
    if probes.cuda_device_count() == 0:
        problems.append("no NVIDIA GPU is visible")
    if not probes._torch_built_with_cuda():
        problems.append("torch has no CUDA build here (torch fp16 is one of the compared backends)")
    if probes.installed("onnxruntime"):
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            problems.append("onnxruntime has no CUDA provider: install onnxruntime-gpu in place of onnxruntime")
    else:
        problems.append("onnxruntime-gpu is not installed")
    if problems:
        raise SystemExit("bench_tensorrt.py cannot run here:\n  " + "\n  ".join(problems))


def prepare(workdir: Path, library: str) -> None:
    """fp32 graphs (bench_onnxruntime's), their fp16 copies, and the plans of ``library``."""
    from dynamicid_rt.contract import ENGINES, ModelDims
    from dynamicid_rt.engines.builder import BuildSettings, build_plan
    from dynamicid_rt.engines.library import load
    from dynamicid_rt.engines.profiles import StaticSize, engine_profile
    from dynamicid_rt.export.onnx_export import convert_fp16

    if not (workdir / "unet.onnx").exists():
        shared.export(workdir)
    lib = load(LIBRARY_BACKEND[library])
    for engine in ("unet", "vae_decoder"):
        fp16 = workdir / f"{engine}-fp16.onnx"
        if not fp16.exists():
            convert_fp16(workdir / f"{engine}.onnx", fp16)
        for tag, static in (("dynamic", None), ("static", StaticSize(SIZE, SIZE))):
            profile = engine_profile(ENGINES[engine], ModelDims(), static)
            start = time.perf_counter()
            plan, _ = build_plan(lib, fp16, "fp16", profile, BuildSettings(), desc=f"{engine} {tag}")
            print(f"{lib.label}: {engine} {tag} built in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            (workdir / f"{library}-{engine}-{tag}.plan").write_bytes(plan)


def _runner(backend: str, workdir: Path):
    """``(unet(inputs) -> noise_pred, vae(latent) -> image)`` for one backend, on the GPU."""
    from dynamicid_rt.contract import ENGINES, ModelDims

    if backend == "torch-fp16":
        import torch

        torch.set_grad_enabled(False)
        unet, vae = (m.to("cuda", torch.float16) for m in shared.build_modules())
        names = ENGINES["unet"].input_names

        def run_unet(inputs):
            args = [torch.from_numpy(inputs[n]).to("cuda") for n in names]
            args = [a.half() if n in ("sample", "encoder_hidden_states", "id_tokens") else a for n, a in zip(names, args)]
            return unet(*args).float().cpu().numpy()

        return (
            run_unet, lambda latent: vae(torch.from_numpy(latent).to("cuda", torch.float16)).float().cpu().numpy(), lambda: None
        )
    if backend == "onnxruntime-cuda":
        import onnxruntime as ort

        providers = [("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
        unet = ort.InferenceSession(str(workdir / "unet-fp16.onnx"), providers=providers)
        vae = ort.InferenceSession(str(workdir / "vae_decoder-fp16.onnx"), providers=providers)
        return (lambda inputs: unet.run(None, inputs)[0]), (lambda latent: vae.run(None, {"latent": latent})[0]), lambda: None
    import hashlib

    from dynamicid_rt.engines import cuda
    from dynamicid_rt.engines.builder import make_logger
    from dynamicid_rt.engines.context_memory import ContextMemory
    from dynamicid_rt.engines.engine import Engine
    from dynamicid_rt.engines.library import load
    from dynamicid_rt.engines.profiles import StaticSize, engine_profile
    from dynamicid_rt.engines.runtime_cache import RuntimeCacheFile

    library = "rtx" if backend.startswith("tensorrt-rtx") else "tensorrt"
    lib = load(LIBRARY_BACKEND[library])
    tag = "static" if backend.endswith("static") else "dynamic"
    runtime, stream = lib.trt.Runtime(make_logger(lib.trt)), cuda.Stream()
    size = StaticSize(SIZE, SIZE) if tag == "static" else None
    gpu = cuda.gpu_info()
    engines = {}
    for name in ("unet", "vae_decoder"):
        plan = workdir / f"{library}-{name}-{tag}.plan"
        stored = RuntimeCacheFile.for_plan(workdir, lib, gpu, f"{name}-{tag}", hashlib.sha256(plan.read_bytes()).hexdigest())
        if backend.endswith("cold"):
            stored.path.unlink(missing_ok=True)
        engines[name] = Engine(lib, name, plan, engine_profile(ENGINES[name], ModelDims(), size), runtime_cache=stored)
        engines[name].load(runtime)
    memory = ContextMemory()  # one shared block, grown per request shape, as in the backend
    for engine in engines.values():
        engine.activate(memory)

    def run(name, inputs):
        engine = engines[name]
        engine.allocate({k: v.shape for k, v in inputs.items()})
        return engine.infer(inputs, stream, graph=tag == "static")[ENGINES[name].output_names[0]]

    def finish() -> None:  # store the runtime caches (TensorRT-RTX), as the backend does after a generation
        for engine in engines.values():
            engine.save_runtime_cache()

    return (lambda inputs: run("unet", inputs)), (lambda latent: run("vae_decoder", {"latent": latent})), finish


def worker(backend: str, workdir: Path, steps: int, calls: int) -> dict:
    from dynamicid_rt.contract import VAE_SCALE
    from dynamicid_rt.sampling.samplers import SchedulerConfig, sample_ddim

    run_unet, run_vae, finish = _runner(backend, workdir)
    inputs = shared._inputs(SIZE)
    start = time.perf_counter()
    run_unet(inputs)  # the first step: where a cold TensorRT-RTX runtime cache costs
    first = time.perf_counter() - start
    for _ in range(2):  # warm-up: allocations, autotuning, CUDA-graph capture
        run_unet(inputs)
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
        uncond, cond = np.split(run_unet(feed).astype(np.float32), 2)
        return uncond + shared.GUIDANCE * (cond - uncond)

    noise = np.random.default_rng(shared.SEED).standard_normal(inputs["sample"][:1].shape).astype(np.float32)
    start = time.perf_counter()
    latent = sample_ddim(denoise, noise, SchedulerConfig(), steps)
    image = run_vae((latent / VAE_SCALE).astype(np.float32))
    per_image = time.perf_counter() - start
    finish()
    return {"first_s": first, "step_s": float(np.median(times)), "image_s": per_image, "finite": bool(np.isfinite(image).all())}


def _peak_gpu_mib(pid: int, stop: threading.Event, peak: list[float]) -> None:
    """Poll nvidia-smi for the memory ``pid`` holds on the GPU; keeps the largest reading."""
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    while not stop.is_set():
        out = subprocess.run(query, capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            fields = [f.strip() for f in line.split(",")]
            if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
                peak[0] = max(peak[0], float(fields[1]))
        stop.wait(0.2)


def _child(args: list[str]) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, peak = threading.Event(), [0.0]
    poller = threading.Thread(target=_peak_gpu_mib, args=(proc.pid, stop, peak), daemon=True)
    poller.start()
    stdout, stderr = proc.communicate()
    stop.set()
    poller.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
    return result | {"peak_gpu_mib": peak[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="DDIM steps per image")
    parser.add_argument("--calls", type=int, default=10, help="timed UNet steps (median reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="graphs and plans (default: a temp dir)")
    parser.add_argument("--library", choices=list(BACKENDS), default="tensorrt",
                        help="tensorrt: data-center TensorRT 10/11; rtx: TensorRT for RTX (cold and warm runtime cache)")
    parser.add_argument("--worker", choices=["prepare", *{b for v in BACKENDS.values() for b in v}], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "prepare":
        prepare(args.workdir, args.library)
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.workdir, args.steps, args.calls)))
        return
    check_requirements(args.library)
    with tempfile.TemporaryDirectory(prefix="bench-trt-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        common = ["--workdir", str(workdir), "--steps", str(args.steps), "--calls", str(args.calls), "--library", args.library]
        start = time.perf_counter()
        _child(["--worker", "prepare", *common])
        print(f"graphs and plans ready in {time.perf_counter() - start:.0f} s in {workdir}")
        results = {b: _child(["--worker", b, *common]) for b in BACKENDS[args.library]}
    base = results["torch-fp16"]
    print(f"SD1.5 size, random weights, {SIZE}x{SIZE}, CFG batch 2, {shared.N_IDS} identities, DDIM {args.steps} steps")
    print(f"{'backend':<20} {'1st step':>9} {'step':>9} {'vs torch':>9} {'image':>8} {'vs torch':>9} {'peak GPU':>10}")
    for name, r in results.items():
        print(
            f"{name:<20} {r['first_s']:>8.2f}s {r['step_s'] * 1000:>7.1f}ms {base['step_s'] / r['step_s']:>8.2f}x {r['image_s']:>7.2f}s "
            f"{base['image_s'] / r['image_s']:>8.2f}x {r['peak_gpu_mib']:>7.0f}MiB" + ("" if r["finite"] else "  NaN/inf!")
        )


if __name__ == "__main__":
    main()
