"""img2img against txt2img through the real pipeline, side by side in one run: at strength S an
img2img run makes int(steps × S) UNet calls (A1111's and diffusers' count) plus one VAE encode, so
at 0.5 it should cost about half of txt2img's denoising. Prints model calls, seconds per stage and
the ratios, interleaved over --repeats so machine load falls on both alike.

    python benchmarks/bench_img2img.py                          # tiny bundle, 256², 20 steps
    python benchmarks/bench_img2img.py --full-size --size 512   # the full-size random bundle (~7 GB, written once)
    python benchmarks/bench_img2img.py --mask                   # inpainting (the right half repainted)
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mask", action="store_true", help="inpaint the right half instead of the whole picture")
    parser.add_argument("--full-size", action="store_true", help="the full-size random bundle instead of the tiny one")
    args = parser.parse_args()

    from dynamicid_rt import Pipeline, Request
    from dynamicid_rt.tiny.bundle import default_full_size_dir, default_tiny_dir, write_tiny_bundle

    root = default_full_size_dir() if args.full_size else default_tiny_dir()
    paths = write_tiny_bundle(root, full_size=args.full_size)
    pipe = Pipeline.load(paths, backend=args.backend, precision=args.precision)
    photo = np.asarray(pipe.generate(Request(prompt="a street", width=args.size, height=args.size, steps=2, seed=1)).images[0])
    mask = None
    if args.mask:
        mask = np.zeros(photo.shape[:2], np.uint8)
        mask[:, args.size // 2:] = 255
    common = dict(prompt="a street at night", width=args.size, height=args.size, steps=args.steps, sampler=args.sampler, seed=3)
    runs = {"txt2img": Request(**common),
            "img2img": Request(**common, init_image=photo, strength=args.strength, mask=mask)}
    calls: dict[str, int] = {}
    seconds: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    pipe.generate(runs["img2img"])  # warm-up: every engine loaded once
    for _ in range(args.repeats):
        for name, request in runs.items():
            counted: list[int] = []
            t = time.perf_counter()
            result = pipe.generate(request, progress=lambda info: counted.append(info.total))
            timings = dict(result.timings, wall=time.perf_counter() - t)
            seconds[name].append(timings)
            calls[name] = counted[-1] if counted else 0
    pipe.close()

    print(f"{pipe.describe()}, {args.size}², {args.steps} steps, {args.sampler}, strength {args.strength}"
          f"{', inpainting' if args.mask else ''}; medians of {args.repeats}")
    stages = ("denoise", "decode", "total", "wall")
    for name in runs:
        row = ", ".join(f"{k} {statistics.median(t[k] for t in seconds[name]):.3f} s" for k in stages)
        print(f"{name:8s} {calls[name]:3d} UNet calls, {row}")
    ratio = lambda k: statistics.median(t[k] for t in seconds["img2img"]) / statistics.median(t[k] for t in seconds["txt2img"])
    print(f"img2img / txt2img: UNet calls {calls['img2img'] / calls['txt2img']:.2f}, denoise {ratio('denoise'):.2f}, "
          f"total {ratio('total'):.2f}")


if __name__ == "__main__":
    main()
