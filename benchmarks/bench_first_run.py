"""Time to the first image with real-size weights: from an empty cache, then warm, in one run.

On the full-size random bundle (SD1.5's real sizes, random weights), each run in a process of its
own so that its peak memory (max RSS) is its own:

1. cold, on the default CPU backend and precision (auto's choice): an empty ONNX cache and
   identity cache, then ``Pipeline.load`` (which exports every engine), one identity, one image.
   Prints the per-stage breakdown of the export from the entries' manifests (module loading,
   torch->ONNX trace, constant folding, saving, checks, parity against torch, hashing), the
   backend's own preparation (OpenVINO compilation) and the time to the first image;
2. per backend of ``--backends`` (``name`` or ``name:precision``), two new processes on the caches
   of run 1: the *first start* of that backend, which adds what it keeps of its own (ONNX
   Runtime's optimized graphs, OpenVINO's plans for its precision, the identity cache is per
   backend), then a *warm start*: ``Pipeline.load``, the same identity (from the identity cache),
   one image. Prints the time from ``Pipeline.load`` to the start and to the end of the first
   denoising step, and peak RSS with the ratio to ONNX Runtime's warm start.

    python benchmarks/bench_first_run.py                              # 512², the release default steps
    python benchmarks/bench_first_run.py --steps 4 --size 256         # a shorter look
    python benchmarks/bench_first_run.py --cold openvino:fp32 --backends onnxruntime   # as on a CPU without bf16 units
    python benchmarks/bench_first_run.py --backends onnxruntime openvino:fp32 --warm-only --onnx-cache DIR

The bundle (about 7 GB) is written once under --models before anything is timed; the caches go to a
scratch folder that is deleted at the end unless --onnx-cache names one.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a portrait photo of a person in a park"
SEED = 5


class _StageLog(logging.Handler):
    """Collects the structured stage records the library logs while it prepares engines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.created, record.getMessage()))


def run(mode: str, backend: str, models: Path, onnx_cache: Path, identity_cache: Path, size: int, steps: int) -> dict:
    """One cold or warm run in this process; returns its figures."""
    started = time.perf_counter()
    from dynamicid_rt import Pipeline, Request

    import_s = time.perf_counter() - started
    stages = _StageLog()
    logging.getLogger("dynamicid_rt").addHandler(stages)
    logging.getLogger("dynamicid_rt").setLevel(logging.INFO)

    backend, _, precision = backend.partition(":")
    t0 = time.perf_counter()
    pipe = Pipeline.load(models, backend=backend, device="cpu", precision=precision or None, onnx_cache=onnx_cache,
                         cache_dir=identity_cache)
    load_s = time.perf_counter() - t0
    t = time.perf_counter()
    person = pipe.encode_identity(models / "samples" / "person_a.png")
    identity_s = time.perf_counter() - t
    step_ends: list[float] = []
    request = Request(prompt=PROMPT, identities=[person], width=size, height=size, seed=SEED,
                      **({"steps": steps} if steps else {}))
    t = time.perf_counter()
    result = pipe.generate(request, progress=lambda info: step_ends.append(time.perf_counter()))
    image_s = time.perf_counter() - t
    first_end = step_ends[0] - t0
    # A step's duration from the later steps (the first one also allocates): the first step's start.
    later = [b - a for a, b in zip(step_ends[1:], step_ends[2:])] or [step_ends[0] - t]
    step_s = sorted(later)[len(later) // 2]
    out = {
        "mode": mode, "backend": f"{result.backend} {pipe.backend.precision}", "size": size, "steps": request.steps,
        "import_s": import_s, "load_s": load_s, "identity_s": identity_s, "image_s": image_s,
        "to_first_image_s": time.perf_counter() - t0,
        "to_first_step_start_s": first_end - step_s, "to_first_step_end_s": first_end, "step_s": step_s,
        "timings": result.timings, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "log": [(round(c - time.time() + time.perf_counter() - t0, 2), m) for c, m in stages.records
                if " in " in m and (" s" in m or "s)" in m)],
    }
    pipe.close()
    return out


def export_breakdown(onnx_cache: Path) -> dict[str, dict[str, float]]:
    """``{engine: {stage: seconds}}`` from the manifests the export wrote."""
    out = {}
    for manifest in sorted(onnx_cache.glob("*-fp32/manifest.json")):
        data = json.loads(manifest.read_text())
        out[data["engine"]] = data.get("build_seconds", {}) | {"hash": data.get("hash_seconds", 0.0)}
    return out


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu() -> str:
    from dynamicid_rt.backends.probes import cpu_flags, cpu_model

    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    flags = " ".join(f for f in wanted if f in cpu_flags()) or "none of avx2/avx512/amx"
    return f"{cpu_model()}, {os.cpu_count()} cores, flags: {flags}"


def _report(cold: dict | None, breakdown: dict, warm: list[dict]) -> None:
    print(f"CPU: {_cpu()}")
    if cold:
        print(f"\ncold start on {cold['backend']} ({cold['size']}², {cold['steps']} steps), empty caches:")
        stages = sorted({s for e in breakdown.values() for s in e})
        print(f"  {'engine':<15}" + "".join(f"{s:>10}" for s in stages) + f"{'total':>9}")
        for engine, times in breakdown.items():
            print(f"  {engine:<15}" + "".join(f"{times.get(s, 0.0):>9.1f}s" for s in stages) + f"{sum(times.values()):>8.1f}s")
        export_s = sum(sum(t.values()) for t in breakdown.values())
        print(f"  export, all engines (sum of stages): {export_s:.1f} s")
        print(f"  Pipeline.load (export and the backend's preparation): {cold['load_s']:.1f} s")
        for at, message in cold["log"]:
            print(f"    +{at:7.1f} s  {message}")
        print(f"  identity: {cold['identity_s']:.1f} s; image: {cold['image_s']:.1f} s "
              f"(text {cold['timings'].get('text', 0):.1f}, denoise {cold['timings'].get('denoise', 0):.1f}, "
              f"decode {cold['timings'].get('decode', 0):.1f})")
        print(f"  model folder to first image: {cold['to_first_image_s']:.1f} s ({cold['to_first_image_s'] / 60:.1f} min), "
              f"peak RSS {cold['peak_rss_mib']:.0f} MiB")
    ort = next((w for w in warm if w["backend"].startswith("onnxruntime") and w["mode"] == "warm"), None)
    print("\nwarm start (caches built, new process), from Pipeline.load:")
    print(f"  {'backend':<22}{'start':<7}{'import':>8}{'load':>8}{'identity':>10}{'1st step start':>16}{'1st step end':>14}{'step':>8}{'peak RSS':>11}{'vs ORT':>8}")
    for w in warm:
        ratio = w["peak_rss_mib"] / ort["peak_rss_mib"] if ort else float("nan")
        print(f"  {w['backend']:<22}{w['mode'].split()[0]:<7}{w['import_s']:>7.1f}s{w['load_s']:>7.1f}s{w['identity_s']:>9.1f}s"
              f"{w['to_first_step_start_s']:>15.1f}s{w['to_first_step_end_s']:>13.1f}s{w['step_s']:>7.1f}s"
              f"{w['peak_rss_mib']:>8.0f} MiB{ratio:>7.2f}x")
        for at, message in w["log"]:
            print(f"    +{at:7.1f} s  {message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="the full-size random bundle (default: demo's)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=0, help="cold run's sampler steps (default: the release default)")
    parser.add_argument("--warm-steps", type=int, default=3, help="warm runs' steps (they time the start, not the image)")
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino", "openvino:fp32"],
                        help="warm runs: name or name:precision (openvino: its default here, bf16 on CPUs with bf16 units)")
    parser.add_argument("--onnx-cache", type=Path, default=None, help="keep the caches here (default: scratch)")
    parser.add_argument("--warm-only", action="store_true", help="skip the cold run (caches exist)")
    parser.add_argument("--cold", default="auto", metavar="BACKEND", help="the cold run's backend[:precision] (default: auto)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--child", nargs=5, metavar=("MODE", "BACKEND", "MODELS", "CACHE", "IDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        mode, backend, models, cache, ids = args.child
        print(json.dumps(run(mode, backend, Path(models), Path(cache), Path(ids), args.size, args.steps)))
        return

    from dynamicid_rt.tiny.bundle import default_full_size_dir, write_tiny_bundle

    models = args.models or default_full_size_dir()
    write_tiny_bundle(models, full_size=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-first-run-"))
    onnx_cache = args.onnx_cache or scratch / "onnx"
    identities = scratch / "identities"
    common = ["--size", str(args.size)]
    try:
        cold = None
        if not args.warm_only:
            shutil.rmtree(onnx_cache, ignore_errors=True)
            cold = _child([*common, "--steps", str(args.steps), "--child", "cold", args.cold, str(models), str(onnx_cache), str(identities)])
        warm = [_child([*common, "--steps", str(args.warm_steps), "--child", mode, b, str(models), str(onnx_cache), str(identities)])
                for b in args.backends for mode in ("first start", "warm")]
        breakdown = export_breakdown(onnx_cache)
        _report(cold, breakdown, warm)
        if args.out:
            args.out.write_text(json.dumps({"cold": cold, "export": breakdown, "warm": warm}, indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
