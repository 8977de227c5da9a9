"""The base checkpoint's name and short hash, as AUTOMATIC1111 writes them ("Model", "Model hash").

A1111's "Model hash" is the first 10 hex digits of the checkpoint file's SHA-256. Hashing a 2-4 GB
file takes seconds, so the full digest is cached on disk, keyed by the file's path, size and
modification time, written atomically and trusted only when it reads back as a SHA-256 digest.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..files.atomic import atomic_write
from .paths import ModelPaths


@dataclass(frozen=True)
class ModelInfo:
    """The base model as AUTOMATIC1111 names it in image parameters."""

    name: str  # the checkpoint's file stem, or the diffusers folder's name
    hash: str = ""  # first 10 hex digits of the checkpoint's SHA-256 ("" when unknown)
    vae: str = ""  # a separate VAE's file or folder name ("" for the base's own)


log = logging.getLogger(__name__)

SHORT_HASH_DIGITS = 10  # A1111's "Model hash" (its "sha256" short form)
_DIGEST = re.compile(r"[0-9a-f]{64}")
# A diffusers folder has no single checkpoint: its UNet weights stand for the model.
_UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors")


def file_sha256(path: Path, cache_dir: Path | None) -> str:
    """The SHA-256 hex digest of ``path``, read from / stored in ``cache_dir`` when given."""
    path = Path(path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    entry = cache_dir / f"{key}.sha256" if cache_dir is not None else None
    if entry is not None and entry.is_file():
        cached = entry.read_text(encoding="ascii", errors="replace").strip()
        if _DIGEST.fullmatch(cached):
            return cached
        log.warning("ignoring damaged hash cache entry %s", entry)
    log.info("hashing %s once (%.1f GiB) for the image parameters", path, stat.st_size / 2**30)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    if entry is not None:
        with atomic_write(entry, "w") as f:
            f.write(value + "\n")
    return value


def base_checkpoint(paths: ModelPaths) -> Path | None:
    """The file whose hash names the base model: the single-file checkpoint, else the UNet weights."""
    if paths.base_is_single_file:
        return paths.base if paths.base.is_file() else None
    unet = paths.base if paths.base.name == "unet" else paths.base / "unet"
    return next((unet / name for name in _UNET_WEIGHTS if (unet / name).is_file()), None)


def model_name(paths: ModelPaths) -> str:
    """The checkpoint's file stem; for a diffusers folder its name, or the model folder's name
    when it is the layout's generic ``base/`` (SPEC §3)."""
    if paths.base_is_single_file:
        return paths.base.stem
    folder = paths.base.parent if paths.base.name == "unet" else paths.base
    return paths.root.name if paths.root is not None and folder == paths.root / "base" else folder.name


def describe_model(paths: ModelPaths, cache_dir: Path | None) -> ModelInfo:
    """Name, short hash and VAE name of a model folder (the hash is computed once per file)."""
    checkpoint = base_checkpoint(paths)
    short = file_sha256(checkpoint, cache_dir)[:SHORT_HASH_DIGITS] if checkpoint is not None else ""
    vae = paths.vae.name if paths.vae is not None else ""
    return ModelInfo(name=model_name(paths), hash=short, vae=vae)
