"""The DynamicID pipeline: identities → prompt embeddings → sampler over the SAA UNet → VAE.

It drives one :class:`~dynamicid_rt.backends.base.Backend` through the engine contract and keeps
torch out of its control flow, so every backend runs the same code.
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .backends import create_backend
from .backends.base import Backend
from .contract import VAE_SCALE
from .errors import Cancelled, NumericalError, RequestError
from .identity import Identity, IdentityEncoder, stack_identity_tokens
from .paths import ModelPaths
from .request import ProgressInfo, Request, Result
from .samplers import SAMPLERS, SchedulerConfig, sample, sampler_for_scheduler_class, timesteps

log = logging.getLogger(__name__)

ProgressCallback = Callable[[ProgressInfo], None]


def _user_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dynamicid-rt"))


def _fingerprint(paths: ModelPaths) -> str:
    """Cheap identity of the weights an identity depends on (path, size, mtime)."""
    parts = []
    for p in (paths.saa, paths.projector, paths.imr, paths.keypoint_encoder, paths.image_encoder, paths.insightface):
        if p is None or not p.exists():
            continue
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        parts += [f"{q.resolve()}:{q.stat().st_size}:{q.stat().st_mtime_ns}" for q in files]
    return "|".join(parts)


class Pipeline:
    """Load once, encode identities, generate images. See README for examples."""

    def __init__(self, paths: ModelPaths, backend: Backend, cache_dir: Path | None, is_tiny: bool = False) -> None:
        from .faces import FaceAnalyzer
        from .text import PromptEncoder

        self.paths = paths
        self.backend = backend
        self.is_tiny = is_tiny
        self.dims = backend.dims
        tokenizer_dir = paths.tokenizer or paths.base / "tokenizer"
        self.prompts = PromptEncoder(tokenizer_dir, backend)
        self.analyzer = FaceAnalyzer(paths.insightface)
        self.identities = IdentityEncoder(
            backend,
            self.analyzer,
            self.prompts,
            cache_dir=cache_dir / "identities" if cache_dir is not None else None,
            model_fingerprint=_fingerprint(paths),
        )
        self.scheduler_config, self.default_sampler = self._read_scheduler()

    @classmethod
    def load(
        cls,
        models: str | Path | ModelPaths | None = None,
        backend: str = "torch",
        device: str | None = None,
        precision: str | None = None,
        *,
        engine_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        **overrides: str | Path | None,
    ) -> "Pipeline":
        """Open a model folder (SPEC §3) on a backend. ``models=None`` opens the tiny demo bundle,
        building it on first use. Keyword overrides point single parts elsewhere (``vae=...``)."""
        is_tiny = False
        if models is None:
            from .tiny.bundle import default_tiny_dir, write_tiny_bundle

            paths = write_tiny_bundle(default_tiny_dir())
            is_tiny = True
            log.warning(
                "no model folder given: using the tiny demo bundle at %s (random weights: images are noise). "
                "Put the real weights in a folder as the README describes and pass --models DIR.", paths.root,
            )
        elif isinstance(models, ModelPaths):
            paths = models
        else:
            paths = ModelPaths.from_folder(models, **overrides)
            is_tiny = (Path(models) / "tiny_bundle.json").is_file()
        paths.check()
        cache = Path(cache_dir) if cache_dir is not None else _user_cache_dir()
        engine = create_backend(backend, paths, device=device, precision=precision, engine_dir=Path(engine_dir) if engine_dir else None)
        return cls(paths, engine, cache, is_tiny=is_tiny)

    @property
    def has_imr(self) -> bool:
        return self.backend.has_imr

    def _read_scheduler(self) -> tuple[SchedulerConfig, str]:
        config_file = self.paths.base / "scheduler" / "scheduler_config.json"
        if self.paths.base_is_single_file or not config_file.is_file():
            return SchedulerConfig(), "pndm"
        raw = json.loads(config_file.read_text())
        return SchedulerConfig.from_dict(raw), sampler_for_scheduler_class(raw.get("_class_name", ""), raw)

    # -- identities --------------------------------------------------------------------------

    def detect_faces(self, photo) -> list:
        """All faces insightface finds in a photo (for choosing one with ``face_index``)."""
        return self.identities.detect(photo)

    def encode_identity(
        self,
        photo,
        face_prompt: str | None = None,
        source_prompt: str | None = None,
        target_landmarks=None,
        *,
        emotion: str = "neutral",
        face_index: int | None = None,
        face_crop: bool = False,
    ) -> Identity:
        """Encode one person from a reference photo; ``face_prompt`` (e.g. "in a happy expression,
        facing up") edits expression/pose through the IMR, ``target_landmarks`` (a photo or 106
        landmarks in 512-px space) sets the target face layout."""
        return self.identities.encode(
            photo,
            face_prompt,
            source_prompt,
            target_landmarks,
            emotion=emotion,
            face_index=face_index,
            face_crop_input=face_crop,
        )

    # -- generation --------------------------------------------------------------------------

    def generate(
        self,
        request: Request,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        request.validate()
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        sampler = self.default_sampler if request.sampler == "default" else request.sampler
        if sampler not in SAMPLERS:
            raise RequestError(f"sampler {request.sampler!r}: choose one of default, {', '.join(SAMPLERS)}")
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        seeds = [(seed + i) % 2**32 for i in range(request.batch)]
        gating = request.gating_on()
        resolved = request.with_updates(seed=seed, sampler=sampler, gating="on" if gating else "off")

        batch, lh, lw = request.batch, request.height // 8, request.width // 8
        if request.initial_latents is not None:
            noise = np.asarray(request.initial_latents, np.float32)
        else:
            # Host-side noise: the same seed gives the same image start on every backend and device.
            noise = np.stack([np.random.default_rng(s).standard_normal((4, lh, lw)) for s in seeds]).astype(np.float32)

        t = time.perf_counter()
        states, _ = self.prompts.encode([request.negative_prompt, request.prompt])
        _check("text encoder", states)
        timings["text"] = time.perf_counter() - t

        id_inputs = self._id_inputs(request, gating)
        use_cfg = request.guidance > 1.0
        rows = 2 * batch if use_cfg else batch
        if use_cfg:
            context = np.repeat(states, batch, axis=0)  # [negative]*B + [prompt]*B
            id_tokens = np.concatenate([np.repeat(id_inputs["uncond"][None], batch, 0), np.repeat(id_inputs["cond"][None], batch, 0)])
        else:
            context = np.repeat(states[1:], batch, axis=0)
            id_tokens = np.repeat(id_inputs["cond"][None], batch, 0)
        controls = {
            "id_boxes": id_inputs["boxes"],
            "id_scale": np.array([id_inputs["scale"]], np.float32),
            "id_gating": np.array([1.0 if gating else 0.0], np.float32),
            "id_mix": np.array([request.mix], np.float32),
        }
        unet = self.backend.bind(
            "unet",
            {"encoder_hidden_states": context.astype(np.float32), "id_tokens": id_tokens.astype(np.float32), **controls},
        )

        def denoise(x: np.ndarray, timestep, step: int) -> np.ndarray:
            boost = request.boost if step < request.boost_steps else 0.0
            model_in = np.concatenate([x, x]) if use_cfg else x
            out = unet(
                {
                    "sample": model_in.astype(np.float32),
                    "timestep": np.full((rows,), timestep, np.float32),
                    "id_boost": np.array([boost], np.float32),
                }
            )["noise_pred"]
            if not np.all(np.isfinite(out)):
                raise NumericalError(f"the UNet produced NaN/inf at step {step + 1}; try fp32 precision or fewer steps")
            if not use_cfg:
                return out
            uncond, cond = out[:batch], out[batch:]
            return uncond + request.guidance * (cond - uncond)

        t_sample = time.perf_counter()

        def on_step(step: int, total: int, x: np.ndarray) -> None:
            if progress is not None:
                progress(ProgressInfo(step=step + 1, total=total, latent=x, elapsed=time.perf_counter() - t_sample))
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled after step {step + 1} of {total}")

        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled before the first step")
        latents = sample(sampler, denoise, noise, self.scheduler_config, request.steps, rng=np.random.default_rng(seed), callback=on_step)
        timings["denoise"] = time.perf_counter() - t_sample

        maps = None
        if request.activation_maps and request.identities and hasattr(self.backend, "activation_maps"):
            # One extra conditional UNet call on the final latent, at the last timestep.
            last_t = float(timesteps(sampler, self.scheduler_config, request.steps)[-1])
            cond = {
                "sample": latents,
                "timestep": np.full((batch,), last_t, np.float32),
                "encoder_hidden_states": np.repeat(states[1:], batch, axis=0),
                "id_tokens": np.repeat(id_inputs["cond"][None], batch, 0),
                "id_boost": np.zeros(1, np.float32),
                **controls,
            }
            maps = list(self.backend.activation_maps(cond))

        t = time.perf_counter()
        images = [self._decode(latents[i : i + 1]) for i in range(batch)]
        timings["decode"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        return Result(
            images=images,
            request=resolved,
            seeds=seeds,
            sampler=sampler,
            gating=gating,
            timings=timings,
            backend=self.backend.name,
            activation_maps=maps,
        )

    def _id_inputs(self, request: Request, gating: bool) -> dict:
        uncond = self.identities.unconditional_tokens()
        if not request.identities:
            # No people: plain SD1.5 (with the SAA LoRA) — ID branch present but scaled to zero.
            return {"cond": uncond, "uncond": uncond, "boxes": np.array([[0, 0, 1, 1]], np.float32), "scale": 0.0}
        n = len(request.identities)
        return {
            "cond": stack_identity_tokens(request.identities, self.dims.context_dim),
            "uncond": np.tile(uncond, (n, 1)),
            "boxes": np.asarray(request.resolved_boxes(), np.float32).reshape(-1, 4),
            "scale": float(request.id_scale),
        }

    def _decode(self, latent: np.ndarray):
        from PIL import Image

        image = self.backend.run("vae_decoder", {"latent": (latent / VAE_SCALE).astype(np.float32)})["image"][0]
        _check("VAE decoder", image)
        pixels = ((image.transpose(1, 2, 0) + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(pixels)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check(stage: str, array: np.ndarray) -> None:
    if not np.all(np.isfinite(array)):
        raise NumericalError(f"the {stage} produced NaN/inf values; try fp32 precision or check the model files")


__all__ = ["Pipeline"]
