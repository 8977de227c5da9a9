"""Soak test: many generations in one process on the tiny bundle, per backend.

Each round encodes a reference photo (an identity cache hit after the first), generates one image
and writes it to the output folder. Prints the resident memory (RSS) after round 10 and after the
last round, the growth between them (must stay under 5 %), and every file left in the output and
cache folders besides the images, the cache entries and the lock files (a stray temporary would
show up here). Exits 1 when the growth reaches 5 % or a stray file is left.

    python benchmarks/soak.py                       # 200 rounds on each CPU backend: torch, onnxruntime, openvino
    python benchmarks/soak.py --rounds 50 --backends onnxruntime
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

GROWTH_LIMIT = 0.05
WARMUP_ROUNDS = 10


def rss_bytes() -> int:
    """Current resident set size of this process."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    import psutil  # other platforms

    return psutil.Process(os.getpid()).memory_info().rss


def expected_file(path: Path, out_dir: Path) -> bool:
    """Images we wrote, cache entries, stamps and lock files; anything else is a leftover."""
    if path.parent == out_dir:
        return path.name.startswith("soak-") and path.suffix == ".png"
    if path.name.startswith(".lock-") or path.name == "verified.json":
        return True
    if "openvino" in path.parts:  # OpenVINO's model cache and static graph files inside an engine entry (docs/backends.md: OpenVINO)
        return path.suffix in (".blob", ".json", ".onnx", ".data")
    # ".data": external weights of a graph (ONNX Runtime's stored optimized graph, full-size entries)
    return path.suffix in (".npz", ".onnx", ".json", ".sha256", ".data")


def soak(backend: str, models: Path, work: Path, rounds: int, steps: int) -> tuple[float, list[Path]]:
    from dynamicid_rt import Pipeline, Request, format_parameters, save_image

    out_dir, cache = work / f"out-{backend}", work / f"cache-{backend}"
    photo = models / "samples" / "person_a.png"
    started = time.perf_counter()
    with Pipeline.load(models, backend=backend, device="cpu", cache_dir=cache, onnx_cache=cache / "engines") as pipe:
        rss_warm = 0
        for k in range(1, rounds + 1):
            person = pipe.encode_identity(photo)
            request = Request(prompt="a photo of a person", identities=[person], steps=steps, width=256, height=256, seed=k)
            result = pipe.generate(request)
            save_image(result.images[0], out_dir / f"soak-{k % 2}.png", format_parameters(result, 0))
            del result, person
            if k == WARMUP_ROUNDS:
                gc.collect()
                rss_warm = rss_bytes()
                print(f"{backend}: RSS after round {k}: {rss_warm / 2**20:.1f} MiB", flush=True)
        gc.collect()
        rss_last = rss_bytes()
    seconds = time.perf_counter() - started
    growth = (rss_last - rss_warm) / rss_warm if rss_warm else float("nan")
    print(f"{backend}: RSS after round {rounds}: {rss_last / 2**20:.1f} MiB; growth {growth * 100:+.2f} % "
          f"(limit {GROWTH_LIMIT * 100:.0f} %); {rounds} rounds in {seconds:.0f} s")
    files = sorted(p for folder in (out_dir, cache) for p in folder.rglob("*") if p.is_file())
    leftovers = [p for p in files if not expected_file(p, out_dir)]
    print(f"{backend}: files left: {len(files)} ({len(leftovers)} unexpected)")
    for p in files:
        print(f"  {'UNEXPECTED ' if p in leftovers else ''}{p.relative_to(work)}")
    return growth, leftovers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--models", type=Path, default=None, help="tiny bundle folder (default: a fresh one in a temp folder)")
    args = parser.parse_args()
    if args.rounds <= WARMUP_ROUNDS:
        parser.error(f"--rounds must exceed {WARMUP_ROUNDS} (RSS is first read after round {WARMUP_ROUNDS})")
    from dynamicid_rt.tiny.bundle import write_tiny_bundle

    ok = True
    with tempfile.TemporaryDirectory(prefix="dynamicid-soak-") as tmp:
        work = Path(tmp)
        models = write_tiny_bundle(args.models or work / "tiny").root
        for backend in args.backends:
            growth, leftovers = soak(backend, models, work, args.rounds, args.steps)
            ok &= growth < GROWTH_LIMIT and not leftovers
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
