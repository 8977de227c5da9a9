"""The tiny autoencoder's fast path, per image, side by side in one process, on the full-size random
bundle (or --tiny) and the default CPU backend (auto's choice), at 512²:

1. the release default: 50 PNDM steps with guidance 5 (51 UNet calls of 2 rows), the full VAE;
2. 4 LCM steps without guidance (4 calls of 1 row), the full VAE;
3. 4 LCM steps without guidance, TAESD (``Request(decoder="taesd")``).

Same prompt and seed; warm-up images first compile every plan the runs use. Printed: each run's
image, denoise and decode seconds, and the ratios: release default / LCM + TAESD per image
(target >= 30x) and full-VAE decode / TAESD decode (target >= 20x). A distilled model would carry an
LCM LoRA; merged weights cost nothing per step, so the timing is the same with or without one.

    python benchmarks/bench_taesd.py --tiny          # a quick functional run, any machine
    python benchmarks/bench_taesd.py                 # full size: bundle ~7 GB, engines ~5 GB, written once
    python benchmarks/bench_taesd.py --decode-only   # just the two decoders, best of --repeats each
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

PROMPT = "a portrait photo of a person in a park"
SEED = 11
TARGET_PER_IMAGE = 30.0
TARGET_DECODE = 20.0


def runs(models: Path, engine_dir: Path, size: int, backend: str) -> dict:
    from dynamicid_rt import Pipeline, Request

    def request(**fields) -> Request:
        return Request(prompt=PROMPT, width=size, height=size, seed=SEED, **fields)

    release = request(steps=50, sampler="pndm", guidance=5.0)
    lcm = request(steps=4, sampler="lcm", guidance=1.0)
    cases = {"release default (PNDM 50, CFG 5, VAE)": release, "LCM 4, VAE": lcm, "LCM 4, TAESD": lcm.with_updates(decoder="taesd")}
    with tempfile.TemporaryDirectory(prefix="bench-taesd-") as cache:
        pipe = Pipeline.load(models, backend=backend, device="cpu", onnx_cache=engine_dir, cache_dir=cache)
        # Warm-up: both UNet batch sizes and both decoders at this size compile or allocate here.
        pipe.generate(request(steps=1))
        pipe.generate(request(steps=1, guidance=1.0, decoder="taesd"))
        out = {}
        for name, req in cases.items():
            start = time.perf_counter()
            result = pipe.generate(req)
            out[name] = {"image_s": time.perf_counter() - start, "denoise_s": result.timings["denoise"],
                         "decode_s": result.timings["decode"]}
            print(f"{name:40s} image {out[name]['image_s']:8.2f} s   denoise {out[name]['denoise_s']:8.2f} s   "
                  f"decode {out[name]['decode_s']:7.3f} s", flush=True)
        description = pipe.describe()
        pipe.close()
    release_s, fast = out["release default (PNDM 50, CFG 5, VAE)"], out["LCM 4, TAESD"]
    ratios = {
        "release / LCM+TAESD per image": release_s["image_s"] / fast["image_s"],
        "release / LCM+VAE per image": release_s["image_s"] / out["LCM 4, VAE"]["image_s"],
        "LCM+VAE / LCM+TAESD per image": out["LCM 4, VAE"]["image_s"] / fast["image_s"],
        "VAE decode / TAESD decode": out["LCM 4, VAE"]["decode_s"] / fast["decode_s"],
    }
    return {"backend": description, "size": size, "runs": out, "ratios": ratios}


def decoders_only(models: Path, engine_dir: Path, size: int, backend: str, repeats: int) -> dict:
    """The two decoder engines alone on one latent, alternating, best of ``repeats`` each (after a
    warm-up call that compiles or allocates), so a busy machine's noise hits both alike."""
    import numpy as np

    from dynamicid_rt import Pipeline

    latent = np.random.default_rng(SEED).standard_normal((1, 4, size // 8, size // 8)).astype(np.float32) / 0.18215
    with tempfile.TemporaryDirectory(prefix="bench-taesd-") as cache:
        pipe = Pipeline.load(models, backend=backend, device="cpu", onnx_cache=engine_dir, cache_dir=cache)
        best = {}
        for engine in ("vae_decoder", "taesd_decoder"):
            pipe.backend.run(engine, {"latent": latent})
        for _ in range(repeats):
            for engine in ("vae_decoder", "taesd_decoder"):
                start = time.perf_counter()
                pipe.backend.run(engine, {"latent": latent})
                best[engine] = min(best.get(engine, float("inf")), time.perf_counter() - start)
        description = pipe.describe()
        pipe.close()
    return {"backend": description, "size": size, "best_s": best,
            "ratios": {"VAE decode / TAESD decode": best["vae_decoder"] / best["taesd_decoder"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny bundle (toy widths): a quick functional run")
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--onnx-cache", dest="engine_dir", type=Path, default=None)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--backend", default="auto", help="default: auto, the fastest CPU backend installed here")
    parser.add_argument("--decode-only", action="store_true", help="time only the two decoders (best of --repeats)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    from dynamicid_rt.export.cache import default_engine_dir
    from dynamicid_rt.tiny.bundle import default_full_size_dir, default_tiny_dir, write_tiny_bundle

    models = args.models or (default_tiny_dir() if args.tiny else default_full_size_dir())
    paths = write_tiny_bundle(models, full_size=not args.tiny)
    engine_dir = args.engine_dir or default_engine_dir(paths)
    if args.decode_only:
        results = decoders_only(models, engine_dir, args.size, args.backend, args.repeats)
        print(json.dumps(results, indent=1))
        return
    results = runs(models, engine_dir, args.size, args.backend)
    for name, value in results["ratios"].items():
        print(f"{name:34s} {value:7.1f}x")
    print(f"targets: release / LCM+TAESD >= {TARGET_PER_IMAGE:.0f}x "
          f"({'met' if results['ratios']['release / LCM+TAESD per image'] >= TARGET_PER_IMAGE else 'NOT met'}), "
          f"decode >= {TARGET_DECODE:.0f}x "
          f"({'met' if results['ratios']['VAE decode / TAESD decode'] >= TARGET_DECODE else 'NOT met'})")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
