"""PNG ``parameters`` as AUTOMATIC1111 writes them: literal texts of A1111 1.6 and 1.10 (written
here by hand from A1111's format, not by our writer) are read, and ours read back like A1111's."""
from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import pytest

from dynamicid_rt import Request, format_parameters, parse_parameters, read_parameters, save_png

# A1111 1.6: the schedule is part of the sampler name; no "Schedule type".
A1111_1_6 = """portrait photo of two friends, (smiling:1.2)
at the beach, golden hour
Negative prompt: blurry, lowres, bad hands
Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3141592653, Size: 512x768, Model hash: 6ce0161689, \
Model: v1-5-pruned-emaonly, Version: v1.6.0"""

# A1111 1.10: "Schedule type" on its own, a separate VAE, a quoted value holding commas.
A1111_1_10 = """a man and a woman at the beach, photo
Negative prompt: lowres, watermark
Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 768x512, Model hash: 6ce0161689, \
Model: v1-5-pruned-emaonly, VAE hash: 235745af8d, VAE: vae-ft-mse-840000-ema-pruned.safetensors, \
Lora hashes: "add_detail: 7c6bad76eb54, film: 1d2b3c4e5f60", Version: v1.10.1"""


def test_reads_a1111_1_6():
    p = parse_parameters(A1111_1_6)
    assert p["prompt"] == "portrait photo of two friends, (smiling:1.2)\nat the beach, golden hour"
    assert p["negative_prompt"] == "blurry, lowres, bad hands"
    assert (p["steps"], p["sampler"], p["guidance"], p["seed"]) == (28, "dpmpp_2m_karras", 6.5, 3141592653)
    assert (p["width"], p["height"]) == (512, 768)
    assert p["extra"] == {"Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly", "Version": "v1.6.0"}


def test_reads_a1111_1_10():
    p = parse_parameters(A1111_1_10)
    assert (p["prompt"], p["negative_prompt"]) == ("a man and a woman at the beach, photo", "lowres, watermark")
    assert (p["steps"], p["sampler"], p["guidance"], p["seed"], p["width"], p["height"]) == (30, "dpmpp_2m_karras", 7.0, 42, 768, 512)
    assert p["lora_hashes"] == {"add_detail": "7c6bad76eb54", "film": "1d2b3c4e5f60"} and "Lora hashes" not in p["extra"]
    assert p["extra"]["VAE"] == "vae-ft-mse-840000-ema-pruned.safetensors" and "Schedule type" not in p["extra"]


@pytest.mark.parametrize("sampler, schedule, ours", [
    ("DPM++ 2M", "Automatic", "dpmpp_2m_karras"),  # >= 1.9: Automatic is DPM++ 2M's own schedule, Karras
    ("DPM++ 2M", "Uniform", "dpmpp_2m"),
    ("Euler a", "Automatic", "euler_a"),
    ("Euler", "Automatic", "euler"),
    ("DDIM", "Automatic", "ddim"),
    ("PLMS", "Automatic", "pndm"),
    ("DPM++ SDE", "Karras", None),  # a sampler we do not have: kept as text
    ("Euler", "Exponential", None),  # a schedule we do not run
])
def test_reads_1_10_sampler_and_schedule(sampler, schedule, ours):
    p = parse_parameters(f"a cat\nSteps: 20, Sampler: {sampler}, Schedule type: {schedule}, CFG scale: 7, Seed: 1, Size: 512x512")
    if ours is None:
        assert "sampler" not in p and p["extra"]["Sampler"] == sampler
    else:
        assert p["sampler"] == ours


@pytest.mark.parametrize("sampler, ours", [("DPM++ 2M", "dpmpp_2m"), ("Euler a", "euler_a"), ("DDIM", "ddim"), ("PLMS", "pndm")])
def test_reads_1_6_sampler_names(sampler, ours):
    assert parse_parameters(f"a cat\nSteps: 20, Sampler: {sampler}, CFG scale: 7, Seed: 1, Size: 512x512")["sampler"] == ours


def test_writes_what_a1111_1_10_writes_and_reads_it_back(tiny_pipeline, tiny_bundle, samples, tmp_path):
    people = [tiny_pipeline.encode_identity(samples / name) for name in ("person_a.png", "person_b.png")]
    request = Request(prompt="two friends, smiling", negative_prompt="ugly, blurry", identities=people, width=256, height=256,
                      steps=2, seed=9, sampler="dpmpp_2m_karras", guidance=6.5, id_scale=[0.75, 1.25])
    result = tiny_pipeline.generate(request)
    text = format_parameters(result, 0)
    unet = tiny_bundle / "base" / "unet" / "diffusion_pytorch_model.safetensors"
    short_hash = hashlib.sha256(unet.read_bytes()).hexdigest()[:10]
    tail = text.splitlines()[-1]
    # A1111 1.10's order for its own fields, then ours, then Version last.
    assert tail.startswith(
        f"Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 9, Size: 256x256, "
        f"Model hash: {short_hash}, Model: {tiny_bundle.name}, "
    )
    assert tail.endswith(", Version: dynamicid-rt 0.1.0") and "VAE:" not in tail  # no separate VAE
    parsed = parse_parameters(read_parameters(save_png(result.images[0], tmp_path / "out.png", text)))
    assert parsed["prompt"] == request.prompt and parsed["negative_prompt"] == request.negative_prompt
    assert (parsed["sampler"], parsed["id_scale"], parsed["guidance"]) == ("dpmpp_2m_karras", [0.75, 1.25], 6.5)
    assert parsed["extra"]["Model hash"] == short_hash
    # Every sampler is written as a name A1111 knows and read back as itself.
    for sampler in ("ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"):
        written = format_parameters(dataclasses.replace(result, sampler=sampler), 0)
        assert parse_parameters(written)["sampler"] == sampler


def test_model_hash_is_cached_by_path_size_and_mtime(tmp_path):
    from dynamicid_rt.modelfiles.model_hash import file_sha256

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights" * 1000)
    cache = tmp_path / "hashes"
    real = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert file_sha256(weights, cache) == real
    (entry,) = cache.glob("*.sha256")
    entry.write_text("f" * 64 + "\n")  # a valid entry is trusted: the file is not read again
    assert file_sha256(weights, cache) == "f" * 64
    entry.write_text("not a digest")  # a damaged entry is recomputed and replaced
    assert file_sha256(weights, cache) == real and entry.read_text().strip() == real
    entry.write_text("f" * 64 + "\n")
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a changed file has another key
    assert file_sha256(weights, cache) == real
    assert not [p for p in cache.iterdir() if p.suffix != ".sha256"]  # atomic writes leave no temporaries
    assert np.all([len(p.read_text().strip()) == 64 for p in cache.iterdir()])
