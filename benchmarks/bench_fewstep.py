"""Few-step generation and LoRA switching, on the full-size random bundle (or --tiny).

1. Per image, on the default CPU backend (auto's choice), in one process: the release default
   (50 PNDM steps with guidance 5: 51 UNet calls of 2 rows) against 4 LCM steps without guidance
   (4 calls of 1 row), same prompt and seed, after warm-up images that compile both batch sizes. A distilled model would carry an LCM LoRA; merged weights cost nothing per step, so
   the timing is the same with or without one.
2. LoRA switching, per backend: a random kohya LoRA shaped like LCM-LoRA SD1.5 (rank 64 on every
   attention, feed-forward and resnet layer, UNet and text encoder) and a second one; the time of
   ``backend.set_loras`` for: the first set (ONNX backends build its engine entry), another set, the
   first again (ONNX: its entry is on disk), and none; and the first 1-step image after each switch
   (ONNX Runtime opens its session, OpenVINO compiles its plan) beside one without a switch.

    python benchmarks/bench_fewstep.py --tiny                 # minutes, any machine
    python benchmarks/bench_fewstep.py                        # full size: bundle ~7 GB, engines ~5 GB

The bundle and its fp32 engines are written once under --models/--onnx-cache (default: user cache).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPT = "a portrait photo of a person in a park"
SEED = 11


def write_lora(path: Path, unet, text_model, seed: int, rank: int) -> Path:
    """A random kohya LoRA (alpha = rank/2) on the layers LCM-LoRA SD1.5 covers."""
    import torch
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    layers = [("lora_unet_", n, m) for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
              and ("attentions" in n or "resnets" in n) and "processor" not in n]
    layers += [("lora_te_", f"text_model.{n}".replace("text_model.text_model.", "text_model."), m)
               for n, m in text_model.named_modules() if isinstance(m, torch.nn.Linear) and "encoder.layers" in n]
    for prefix, name, m in layers:
        key = prefix + name.replace(".", "_")
        r = min(rank, m.weight.shape[0], m.weight.shape[1])
        down_shape = (r, *m.weight.shape[1:])
        tensors[f"{key}.lora_down.weight"] = (rng.standard_normal(down_shape) * 0.01).astype(np.float32)
        tensors[f"{key}.lora_up.weight"] = (rng.standard_normal((m.weight.shape[0], r, *([1, 1] if m.weight.ndim == 4 else []))) * 0.01).astype(np.float32)
        tensors[f"{key}.alpha"] = np.array(r / 2, np.float32)
    save_file(tensors, str(path))
    return path


def few_step_against_default(models: Path, engine_dir: Path, size: int) -> dict:
    from dynamicid_rt import Pipeline, Request

    with tempfile.TemporaryDirectory(prefix="bench-fewstep-") as cache:
        pipe = Pipeline.load(models, backend="auto", device="cpu", onnx_cache=engine_dir, cache_dir=cache)
        backend = pipe.backend.name
        pipe.generate(Request(prompt=PROMPT, width=size, height=size, steps=1, seed=SEED))  # warm-up: compile, allocate
        pipe.generate(Request(prompt=PROMPT, width=size, height=size, steps=1, seed=SEED, guidance=1.0))
        runs = {}
        for name, request in (
            ("pndm-50-cfg", Request(prompt=PROMPT, width=size, height=size, steps=50, sampler="pndm", guidance=5.0, seed=SEED)),
            ("lcm-4-no-cfg", Request(prompt=PROMPT, width=size, height=size, steps=4, sampler="lcm", guidance=1.0, seed=SEED)),
        ):
            start = time.perf_counter()
            result = pipe.generate(request)
            runs[name] = {"image_s": time.perf_counter() - start, **{k: result.timings[k] for k in ("denoise", "decode")}}
        pipe.close()
    return {"backend": backend, "size": size, "runs": runs,
            "speedup_per_image": runs["pndm-50-cfg"]["image_s"] / runs["lcm-4-no-cfg"]["image_s"]}


def lora_switching(models: Path, engine_dir: Path, backend: str, loras: list[Path], size: int) -> dict:
    from dynamicid_rt import Pipeline, Request
    from dynamicid_rt.modelfiles.lora import LoraRef

    def image(refs) -> float:
        start = time.perf_counter()
        pipe.generate(Request(prompt=PROMPT, width=size, height=size, steps=1, sampler="lcm", guidance=1.0, seed=SEED,
                              loras=[(r.path, r.scale) for r in refs]))
        return time.perf_counter() - start

    a, b = [LoraRef(loras[0], 1.0)], [LoraRef(loras[1], 0.8)]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as cache:
        pipe = Pipeline.load(models, backend=backend, device="cpu", onnx_cache=engine_dir, cache_dir=cache)
        plain = min(image([]), image([]))  # warm, no LoRA
        for label, refs in (("first set", a), ("other set", b), ("first set again", a), ("none", [])):
            start = time.perf_counter()
            pipe.backend.set_loras(refs)
            out[f"set_loras {label} s"] = time.perf_counter() - start
            out[f"first image after {label} s"] = image(refs)
        out["image s (1 step, no switch)"] = plain
        pipe.close()
    return out


def patch_against_export(paths, engine_dir: Path, lora: Path) -> dict:
    """A new LoRA set's unet + text_encoder entries: the initializer patch (export/lora_entries.py)
    against the slow way, a full torch->ONNX export of both (into a scratch folder)."""
    from dynamicid_rt.export import build_engines
    from dynamicid_rt.export.lora_entries import lora_entries
    from dynamicid_rt.modelfiles.lora import LoraRef, load_loras

    build_engines(paths, engine_dir, "fp32", ["unet", "text_encoder"])  # the base entries the patch starts from
    start = time.perf_counter()
    lora_entries(paths, engine_dir, "fp32", load_loras([LoraRef(lora, 0.7)]))
    patch = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="bench-export-") as scratch:
        start = time.perf_counter()
        build_engines(paths, Path(scratch), "fp32", ["unet", "text_encoder"])
        export = time.perf_counter() - start
    return {"patch s": patch, "full export s": export, "speedup": export / patch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny bundle (toy widths): a quick functional run")
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--onnx-cache", dest="engine_dir", type=Path, default=None)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--parts", nargs="+", default=["few_step", "switch", "patch"], choices=["few_step", "switch", "patch"])
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from dynamicid_rt.export import build_engines
    from dynamicid_rt.export.cache import default_engine_dir
    from dynamicid_rt.tiny.bundle import default_full_size_dir, default_tiny_dir, write_tiny_bundle

    models = args.models or (default_tiny_dir() if args.tiny else default_full_size_dir())
    paths = write_tiny_bundle(models, full_size=not args.tiny)
    engine_dir = args.engine_dir or default_engine_dir(paths)
    start = time.perf_counter()
    build_engines(paths, engine_dir)
    print(f"engines ready in {time.perf_counter() - start:.0f} s ({engine_dir})", flush=True)

    results: dict = {"bundle": "tiny" if args.tiny else "full size"}
    if "few_step" in args.parts:
        results["few_step"] = few_step_against_default(models, engine_dir, args.size)
        print(json.dumps(results["few_step"], indent=1), flush=True)

    unet = UNet2DConditionModel.from_pretrained(paths.base / "unet")
    text = CLIPTextModel.from_pretrained(paths.base / "text_encoder")
    with tempfile.TemporaryDirectory(prefix="bench-loras-") as folder:
        # New random weights each run: a LoRA'd engine entry left by an earlier run is not reused.
        seed = time.time_ns() % 2**32
        loras = [write_lora(Path(folder) / f"lora{i}.safetensors", unet, text, seed=seed + i, rank=args.rank) for i in range(2)]
        del unet, text
        if "patch" in args.parts:
            results["patch_vs_export"] = patch_against_export(paths, engine_dir, loras[0])
            print(json.dumps(results["patch_vs_export"], indent=1), flush=True)
        results["lora_switch"] = {}
        for backend in args.backends if "switch" in args.parts else ():
            results["lora_switch"][backend] = lora_switching(models, engine_dir, backend, loras, args.size)
            print(backend, json.dumps(results["lora_switch"][backend], indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
