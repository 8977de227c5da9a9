"""The first run on an NVIDIA GPU, as one command (about 5 minutes; at most 8): every GPU path of
this project, on the current device and, with two or more GPUs, on the last one from a worker thread
(as the server runs it: the backend built on the main thread, generation on another).

1. ``pytest -m "gpu or tensorrt"``: the CUDA tests against the CPU fp32 reference;
2. torch fp16 on the tiny bundle, the bound UNet with and without CUDA graphs against ``run`` over
   steps whose inputs change (an empty graph would repeat the first step), and the full-size SD1.5
   UNet step times of ``bench_gpu.py`` (fp32 / fp16 / bind / CUDA graphs) on the current device;
3. ONNX Runtime's CUDA provider (where onnxruntime-gpu is installed): the bound UNet against CPU fp32;
4. TensorRT and TensorRT-RTX (where installed and the GPU is a target): the tiny bundle's plans,
   dynamic and static 512², run from a worker thread against CPU fp32, the shared context memory
   after a 256² and a 512² request, and each plan's context memory at 512² (the profile's opt
   shapes) and at the profile maximum; with ``--models`` also the plans stored for that folder.

Each part runs in its own process with its own time limit; the summary says PASS / FAIL / SKIP
(and why) per part, and the exit status is 1 when any part failed. Without a GPU it stops at once.

    python benchmarks/gpu_check.py [--models PATH] [--budget 480]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
# (part, seconds it may take at most); the whole check stays within --budget.
PARTS = {"pytest": 240, "torch": 60, "torch-full-size": 90, "onnxruntime": 60, "tensorrt": 150}
STEP = ("sample", "timestep", "id_boost")


def gpus() -> int:
    """NVIDIA GPUs visible through the driver (no torch needed)."""
    from dynamicid_rt.backends import probes

    return probes.cuda_device_count()


def devices() -> list[str]:
    """The current device, and the last one when there are several (the cuda:N path)."""
    count = gpus()
    return ["cuda:0"] + ([f"cuda:{count - 1}"] if count > 1 else [])


def on_worker(fn: Callable[[], T]) -> T:
    """``fn()`` on a fresh thread, whose current CUDA device starts at 0, as a server's worker's does."""
    out: dict[str, object] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised on the calling thread
            out["error"] = exc

    worker = threading.Thread(target=target, name="gpu-check-worker")
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]  # type: ignore[return-value]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


def tiny(workdir: Path):
    from dynamicid_rt.tiny.bundle import write_tiny_bundle

    return write_tiny_bundle(workdir / "tiny-bundle")


def unet_steps(backend, seed: int, size: int) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """UNet inputs at ``size``² (batch 2 for guidance, 2 people) and three steps of changing inputs."""
    from dynamicid_rt.contract import ENGINES

    inputs = ENGINES["unet"].sample_inputs(backend.dims, seed=seed, B=2, h=size // 8, w=size // 8, N=2, M=2)
    rng = np.random.default_rng(seed)
    steps = [{"sample": rng.standard_normal(inputs["sample"].shape).astype(np.float32),
              "timestep": np.full_like(inputs["timestep"], t), "id_boost": np.array([b], np.float32)}
             for t, b in ((999.0, 4.0), (500.0, 4.0), (20.0, 0.0))]
    return inputs, steps


def bound_against(backend, reference, seed: int = 3, size: int = 512) -> float:
    """Bind the UNet here, step it on a worker thread; the worst relative error against ``reference.run``."""
    inputs, steps = unet_steps(backend, seed, size)
    call = backend.bind("unet", {k: v for k, v in inputs.items() if k not in STEP})
    got = on_worker(lambda: [call(step)["noise_pred"] for step in steps])
    return max(rel(g, reference.run("unet", inputs | step)["noise_pred"]) for g, step in zip(got, steps))


# -- the parts ------------------------------------------------------------------------------------


def part_pytest(args: argparse.Namespace) -> str:
    tests = ["tests/test_gpu.py", "tests/test_tensorrt_gpu.py", "tests/test_tensorrt_cuda.py"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu or tensorrt",
                           *tests], cwd=ROOT, check=False)
    if done.returncode not in (0, 5):  # 5: nothing collected
        raise SystemExit(f"pytest exited with {done.returncode}")
    return "gpu and tensorrt tests passed"


def part_torch(args: argparse.Namespace) -> str:
    import torch

    from dynamicid_rt.backends.torch_backend import TorchBackend

    if not torch.cuda.is_available():
        return "SKIP: torch has no CUDA here"
    paths, lines = tiny(args.workdir), []
    for device in devices():
        reference = TorchBackend(paths, device=device, precision="fp16")
        for graphs in (False, True):
            backend = TorchBackend(paths, device=device, precision="fp16", cuda_graphs=graphs)
            worst = bound_against(backend, reference)
            lines.append(f"torch fp16 {device} bind{' + CUDA graphs' if graphs else ''}: worst rel. diff to run {worst:.1e}")
            print(lines[-1], flush=True)
            if not worst < 1e-2:
                raise SystemExit(f"{lines[-1]}: the bound steps do not follow their inputs")
    return "; ".join(lines)


def part_torch_full_size(args: argparse.Namespace) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--repeats", "10"], check=False)
    if done.returncode:
        raise SystemExit(f"bench_gpu.py exited with {done.returncode}")
    return "bench_gpu.py figures above"


def part_onnxruntime(args: argparse.Namespace) -> str:
    import onnxruntime

    from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "SKIP: onnxruntime has no CUDA provider (install onnxruntime-gpu)"
    paths, engines, lines = tiny(args.workdir), args.workdir / "engines", []
    cpu = OnnxRuntimeBackend(paths, device="cpu", engine_dir=engines)
    for device in devices():
        gpu = OnnxRuntimeBackend(paths, device=device, precision="fp16", engine_dir=engines)
        worst = bound_against(gpu, cpu)
        lines.append(f"onnxruntime CUDA fp16 {device}: worst rel. diff to CPU fp32 {worst:.1e}")
        print(lines[-1], flush=True)
        if not worst < 5e-2:
            raise SystemExit(lines[-1])
    return "; ".join(lines)


def part_tensorrt(args: argparse.Namespace) -> str:
    from dynamicid_rt.backends.onnxruntime_backend import OnnxRuntimeBackend
    from dynamicid_rt.backends.registry import create_backend
    from dynamicid_rt.engines import cuda
    from dynamicid_rt.engines.build import build_plans
    from dynamicid_rt.engines.builder import BuildSettings
    from dynamicid_rt.engines.library import LIBRARIES, installed_module, load
    from dynamicid_rt.engines.memory_report import stored_plan_memory
    from dynamicid_rt.engines.profiles import StaticSize

    from dynamicid_rt.backends import probes

    if not probes.installed("cuda"):
        return "SKIP: cuda-python is not installed (pip install 'dynamicid-rt[tensorrt]')"
    paths, engines, lines = tiny(args.workdir), args.workdir / "engines", []
    device = devices()[-1]
    cpu = OnnxRuntimeBackend(paths, device="cpu", engine_dir=engines)
    gpu = cuda.gpu_info(int(device.split(":")[1]))
    for name in dict.fromkeys(lib.backend for lib in LIBRARIES):
        if installed_module(name) is None:
            lines.append(f"{name}: SKIP (not installed)")
            continue
        lib = load(name)
        if not lib.spec.supports_gpu(gpu.compute_capability):
            lines.append(f"{name}: SKIP ({lib.spec.not_a_target(gpu.name, gpu.compute_capability)})")
            continue
        settings = BuildSettings(targets=lib.spec.targets_for_gpu(gpu.name, gpu.compute_capability))  # as the backend's
        build_plans(paths, engines, "fp16", static=StaticSize(512, 512), settings=settings, lib=lib, gpu=gpu)
        backend = create_backend(name, paths, device=device, precision="fp16", engine_dir=engines)
        worst = bound_against(backend, cpu)  # the static 512² plan
        small, _ = unet_steps(backend, 4, 256)  # the dynamic plan
        worst = max(worst, rel(on_worker(lambda: backend.run("unet", small))["noise_pred"], cpu.run("unet", small)["noise_pred"]))
        block = backend.memory.nbytes
        on_worker(backend.close)
        lines.append(f"{name} {device}: worst rel. diff to CPU fp32 {worst:.1e}; shared context memory after 512² and "
                     f"256² requests {block / 2**20:.1f} MiB")
        print(lines[-1], flush=True)
        for item in stored_plan_memory(lib, engines):
            print(f"  tiny {item if isinstance(item, str) else item.line()}", flush=True)
        if args.models is not None:
            from dynamicid_rt.export.cache import default_engine_dir
            from dynamicid_rt.modelfiles.paths import ModelPaths

            for item in stored_plan_memory(lib, default_engine_dir(ModelPaths.from_folder(args.models))):
                print(f"  {args.models.name} {item if isinstance(item, str) else item.line()}", flush=True)
        if not worst < 5e-2:
            raise SystemExit(lines[-1])
    return ("SKIP: " if all("SKIP" in line for line in lines) else "") + "; ".join(lines)


# -- the driver -----------------------------------------------------------------------------------


def no_gpu_message() -> str | None:
    """Why this machine cannot run the check, or None."""
    if gpus() == 0:
        smi = "nvidia-smi is not installed" if shutil.which("nvidia-smi") is None else "the NVIDIA driver reports no GPU"
        return (f"gpu_check.py needs an NVIDIA GPU and its driver, and sees none here ({smi}); run it on a machine with "
                "one (the CPU paths are checked by the ordinary test suite)")
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="also report the context memory of this folder's stored plans")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole check (default 480)")
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(f"RESULT: {globals()['part_' + args.part.replace('-', '_')](args)}", flush=True)
        return 0
    problem = no_gpu_message()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    deadline, summary = time.monotonic() + args.budget, []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for part, limit in PARTS.items():
            left = deadline - time.monotonic()
            if left < 20:
                summary.append((part, "SKIP", f"out of time (--budget {args.budget:.0f} s)"))
                continue
            print(f"\n== {part} ==", flush=True)
            command = [sys.executable, __file__, "--part", part, "--workdir", tmp, "--budget", str(args.budget)]
            command += ["--models", str(args.models)] if args.models else []
            start = time.monotonic()
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=min(limit, left), check=False)
            except subprocess.TimeoutExpired as exc:  # its output so far comes as bytes
                print((exc.stdout or b"").decode(errors="replace"), flush=True)
                summary.append((part, "FAIL", f"over its {min(limit, left):.0f} s limit"))
                continue
            print(done.stdout + done.stderr[-3000:], flush=True)
            results = [line[len("RESULT: "):] for line in done.stdout.splitlines() if line.startswith("RESULT: ")]
            if done.returncode or not results:
                summary.append((part, "FAIL", (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]))
            else:
                state = "SKIP" if results[-1].startswith("SKIP") else "PASS"
                summary.append((part, state, f"{results[-1]} ({time.monotonic() - start:.0f} s)"))
    print("\n== summary ==")
    for part, state, detail in summary:
        print(f"{state:4s} {part:16s} {detail}")
    return 1 if any(state == "FAIL" for _, state, _ in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
