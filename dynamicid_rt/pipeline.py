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
from typing import Callable, Mapping, Sequence

import numpy as np

from .backends import create_backend, supports
from .backends.base import Backend
from .contract import ENGINES, IDENTITY_ENGINES, TEXT_ENCODER, UNET, decoder_engines
from .decoding import check_finite, decode_pixels
from .denoiser.guided_unet import GuidedUNet
from .denoiser.start_image import ENGINE as VAE_ENCODER
from .denoiser.start_image import encode_start_image, inpainting_conditioning
from .denoiser.unet_feed import identity_inputs, unet_feed, with_conditioning
from .errors import Cancelled, RequestError
from .export.progress import BuildProgress
from .formats.lora_tags import lora_hashes, strip_lora_tags, with_prompt_tags
from .identity.best_of import generate_best_of
from .identity.check import match_identities, reference_embeddings
from .identity.encoder import IdentityEncoder
from .identity.photos import load_photo
from .identity.value import Identity, check_same_model, load_saved
from .load_checks import check_load_arguments
from .modelfiles.fingerprint import identity_model_fingerprint
from .modelfiles.lora import check_lora_refs, load_loras
from .modelfiles.model_hash import ModelInfo, describe_model
from .modelfiles.paths import ModelPaths, vae_scaling_factor
from .models.preflight import check_folder
from .request import Box, Person, Request, default_boxes
from .results import IdentityMatch, ProgressInfo, Result
from .sampling.live_preview import PREVIEW_BUDGET, PREVIEW_INTERVAL, DenoisedEstimate, LivePreview
from .sampling.names import sampler_for_scheduler_class
from .sampling.noise import image_seeds, initial_noise, step_noise_source
from .sampling.samplers import run_schedule
from .sampling.schedules import SchedulerConfig, sampling_schedule

log = logging.getLogger(__name__)

ProgressCallback = Callable[[ProgressInfo], None]


def _user_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dynamicid-rt"))


class Pipeline:
    """Load once, encode identities, generate images. See docs/python-api.md for examples."""

    def __init__(self, paths: ModelPaths, backend: Backend, cache_dir: Path | None, is_tiny: bool = False) -> None:
        from .prompts.encoder import PromptEncoder

        self.paths = paths
        self.backend = backend
        self.is_tiny = is_tiny
        self.dims = backend.dims
        tokenizer_dir = paths.tokenizer or paths.base / "tokenizer"
        self.prompts = PromptEncoder(tokenizer_dir, backend)
        self.identities = IdentityEncoder(
            backend,
            lambda: _face_analyzer(paths),  # built on the first photo: tokens and embeddings need no insightface
            self.prompts,
            cache_dir=cache_dir / "identities" if cache_dir is not None else None,
            model_fingerprint=identity_model_fingerprint(paths),
        )
        self.scheduler_config, self.default_sampler = self._read_scheduler()
        self.vae_scale = vae_scaling_factor(paths)  # latents are divided by it before the VAE decoder
        self._hash_cache = cache_dir / "hashes" if cache_dir is not None else None
        self._model_info: ModelInfo | None = None
        # Live previews: the share of sampling time they may take, and the seconds between frames.
        self.preview_budget, self.preview_interval = PREVIEW_BUDGET, PREVIEW_INTERVAL

    @classmethod
    def load(
        cls,
        models: str | Path | ModelPaths | None = None,
        backend: str = "auto",
        device: str | None = None,
        precision: str | None = None,
        *,
        onnx_cache: str | Path | None = None,
        backend_options: Mapping[str, object] | None = None,
        cache_dir: str | Path | None = None,
        build_progress: BuildProgress | None = None,
        **overrides: str | Path | None,
    ) -> "Pipeline":
        """Open a model folder (SPEC §3) on a backend. ``models=None`` opens the tiny demo bundle,
        building it on first use. Keyword overrides point single parts elsewhere (``vae=...``).
        ``backend="auto"`` picks the fastest backend installed here (see ``dynamicid_rt.backends``).
        ``onnx_cache``: the folder of exported graphs (default: the user cache); ``backend_options``:
        switches declared in ``dynamicid_rt.BACKEND_OPTIONS``, e.g. ``{"cuda_graphs": True}``, each
        passed to the backend that declares it. ``build_progress`` is told each engine and stage of a
        first run's ONNX export, with the time left (:class:`~dynamicid_rt.export.BuildStatus`)."""
        check_load_arguments(models, backend, device, precision, onnx_cache, backend_options, cache_dir)
        is_tiny = False
        if models is None:
            from .tiny.bundle import default_tiny_dir, write_tiny_bundle

            paths = write_tiny_bundle(default_tiny_dir())
            is_tiny = True
            log.warning(
                "no model folder given: using the tiny demo bundle at %s (random weights: images are noise). "
                "Get the real models with `dynamicid-rt models pull --dir DIR`, then pass that folder.", paths.root,
            )
        elif isinstance(models, ModelPaths):
            paths = models
        elif str(models).startswith("hf:"):  # `--models hf:[BASE_REPO]`: the release sources in the HF cache
            from .hub.pull import paths_from_hub

            paths = paths_from_hub(str(models))
        else:
            paths = ModelPaths.from_folder(models)
            is_tiny = (Path(models) / "tiny_bundle.json").is_file()
        paths = paths.with_overrides(**overrides)  # --vae etc. apply to every kind of model folder
        check_folder(paths)  # every check `inspect` makes that needs no weights loaded, before any work
        cache = Path(cache_dir) if cache_dir is not None else _user_cache_dir()
        engine = create_backend(
            backend, paths, device=device, precision=precision, engine_dir=Path(onnx_cache) if onnx_cache else None,
            build_progress=build_progress, **(backend_options or {}),
        )
        return cls(paths, engine, cache, is_tiny=is_tiny)

    @property
    def has_imr(self) -> bool:
        return self.backend.has_imr

    @property
    def decoders(self) -> list[str]:
        """The ``Request.decoder`` values this model folder can decode with (the full VAE first)."""
        return [name for name, engine in decoder_engines().items() if self.paths.provides(engine)]

    @property
    def preview_engine(self) -> str | None:
        """The engine live previews decode the denoised estimate with, or None (the latent's linear map)."""
        return next((name for name, spec in ENGINES.items() if spec.previews and self.paths.provides(name)), None)

    def describe(self) -> dict[str, str]:
        """What runs the models: backend, device and precision (plus versions), for UIs and logs."""
        return dict(self.backend.describe())

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

    def encode_identity_from_embedding(
        self,
        embedding,
        image,
        *,
        face_prompt: str | None = None,
        source_prompt: str | None = None,
        landmarks=None,
        target_landmarks=None,
        name: str = "person",
    ) -> Identity:
        """Encode one person from an ArcFace embedding (512, as insightface's ``normed_embedding``)
        the app computed itself, and the reference ``image`` for CLIP; runs no face analysis.
        An expression edit needs ``landmarks`` (106 x, y in the image resized to 512x512) and a
        ``source_prompt``."""
        return self.identities.encode_embedding(
            embedding,
            image,
            face_prompt=face_prompt,
            source_prompt=source_prompt,
            landmarks=landmarks,
            target_landmarks=target_landmarks,
            name=name,
        )

    def model_info(self) -> ModelInfo:
        """Name and short hash of the base checkpoint (hashed once, then cached on disk)."""
        if self._model_info is None:
            self._model_info = describe_model(self.paths, self._hash_cache)
        return self._model_info

    def check_identities(self, image, identities: Sequence[Person], boxes: Sequence[Box] | None = None) -> list[IdentityMatch]:
        """How recognisable each person is in ``image`` (e.g. a generated picture): the largest
        face whose centre lies in the person's box (default: the request's default boxes), its
        ArcFace cosine similarity to the person's reference face, and whether it looks more like
        another person (a swap). A box without a face gives ``similarity=None``."""
        references = reference_embeddings(identities)
        boxes = list(boxes) if boxes is not None else default_boxes(len(identities))
        if len(boxes) == 1 and len(identities) > 1:  # several people mixed in one box
            boxes = boxes * len(identities)
        if len(boxes) != len(identities):
            raise RequestError(f"{len(boxes)} boxes for {len(identities)} identities: give one box per identity")
        pixels = load_photo(image)
        faces = self.detect_faces(pixels)
        names = [person.name for person in identities]
        return match_identities(faces, references, names, boxes, width=pixels.shape[1], height=pixels.shape[0])

    def check_loras(self, loras: Sequence) -> None:
        """Read each LoRA (``Request.loras``' forms) and check it against this model's layers, loading
        no weights: the first problem is a one-line RequestError or CheckpointError."""
        from .modelfiles.lora_fit import check_loras

        check_loras(self.paths, loras)

    def load_identity(self, path: str | Path, allow_other_model: bool = False) -> Identity:
        """An identity saved with ``Identity.save``; one encoded with another model is refused
        (RequestError) unless ``allow_other_model``, which uses it with a warning."""
        return load_saved(path, self.dims.context_dim, self.identities.model_fingerprint, allow_other_model)

    # -- generation --------------------------------------------------------------------------

    def generate(
        self,
        request: Request,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Generate ``request``; with ``best_of`` > 1, that many seeds ranked best first, and with
        ``check_identities`` each person's likeness in ``Result.identity_scores``."""
        request.validate()
        check_same_model(request.identities, self.identities.model_fingerprint)
        if not (request.check_identities or request.best_of > 1):
            return self._generate_once(request, progress, cancel)
        reference_embeddings(request.identities)  # fail before the long work when one is missing
        if request.best_of > 1:
            return generate_best_of(self._generate_once, self.check_identities, request, progress, cancel)
        result = self._generate_once(request, progress, cancel)
        boxes = request.resolved_boxes()
        result.identity_scores = [self.check_identities(image, request.identities, boxes) for image in result.images]
        return result

    def _generate_once(
        self,
        request: Request,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """One run of a request :meth:`generate` validated."""
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        sampler = self.default_sampler if request.sampler_name == "default" else request.sampler_name
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        seeds = image_seeds(seed, request.batch)
        gating = request.gating_on()
        resolved = request.with_updates(seed=seed, sampler=sampler, gating="on" if gating else "off")
        # Computed once for the sampler and the activation maps; refuses step counts the schedule
        # cannot take (LCM/TCD: at most 50) before any work.
        schedule = sampling_schedule(sampler, self.scheduler_config, request.steps)
        decoder = self.paths.decoder_engine(request.decoder)  # a decoder the folder lacks: refused now
        preview_engine = self.preview_engine if progress is not None else None
        t = time.perf_counter()
        lora_refs = check_lora_refs(request.loras)
        self.backend.set_loras(lora_refs)  # changes nothing when this set is merged already
        timings["loras"] = time.perf_counter() - t
        loras = load_loras(lora_refs)  # read by set_loras: remembered
        resolved = resolved.with_updates(prompt=with_prompt_tags(request.prompt, loras))  # as A1111 writes it

        batch, lh, lw = request.batch, request.height // 8, request.width // 8
        if request.initial_latents is not None:
            noise = np.asarray(request.initial_latents, np.float32)
        else:
            # Host-side noise: the same seed gives the same image start on every backend and device.
            noise = initial_noise(seeds, (4, lh, lw))

        start = encode_start_image(self.backend, request)  # img2img / inpainting: the picture's latent
        # An inpainting UNet sees the mask and the masked picture at every step (txt2img too: all repainted).
        conditioning = inpainting_conditioning(self.backend, request) if self.dims.inpainting_unet else None
        # Loaded while the text encoder runs, where the backend can.
        self.backend.prepare([UNET.name, *([preview_engine] if preview_engine else [])])
        t = time.perf_counter()
        # A1111's <lora:name:w> tags (restored PNG prompts carry them) are not text for CLIP.
        states, _ = self.prompts.encode([strip_lora_tags(request.negative_prompt), strip_lora_tags(request.prompt)])
        check_finite("text encoder", states)
        timings["text"] = time.perf_counter() - t

        identity = identity_inputs(request, self.identities.unconditional_tokens(), self.dims.context_dim, gating)
        # Sampling and decoding run without them: a backend may free their plans for the peak ahead
        # (the VAE decode's, measured at full size: OpenVINO fp32's text encoder held 0.9 GB of it;
        # importing its plan again at the next request takes 0.2 s).
        self.backend.release([*IDENTITY_ENGINES, TEXT_ENCODER.name, VAE_ENCODER])
        # CFG over batch chunks that fit the UNet profile, each chunk size bound once for all steps.
        denoise = GuidedUNet(
            self.backend, states, identity, batch, request.guidance,
            boost=lambda step: request.boost if step < request.boost_steps else 0.0, conditioning=conditioning,
        )

        t_sample = time.perf_counter()
        estimate = DenoisedEstimate(denoise, schedule.alphas_cumprod)
        preview = LivePreview(
            (lambda latent: decode_pixels(self.backend, preview_engine, latent, self.vae_scale, fallback=True)) if preview_engine else None,
            budget=self.preview_budget, interval=self.preview_interval,
        )

        def on_step(step: int, total: int, x: np.ndarray) -> None:
            if progress is not None:
                denoised = estimate.latest()
                progress(ProgressInfo(step=step + 1, total=total, latent=x, elapsed=time.perf_counter() - t_sample,
                                      denoised=denoised, preview=preview.frame(x, denoised)))
            if cancel is not None and cancel.is_set():
                stopped = Cancelled(f"cancelled after step {step + 1} of {total}")
                current = np.array(x, np.float32)
                stopped.partial_result = lambda: Result(
                    images=[self._finish_image(current[i : i + 1], decoder, start) for i in range(batch)],
                    request=resolved, seeds=seeds,
                    sampler=sampler, gating=gating, backend=self.backend.name, latents=current, model=self.model_info(),
                    lora_hashes=lora_hashes(loras),
                )
                raise stopped

        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled before the first step")
        latents = run_schedule(schedule, estimate, noise, noise_source=step_noise_source(seeds), callback=on_step,
                               gamma=request.tcd_gamma,
                               **(start.sampler_inputs(keep_known=conditioning is None) if start else {}))
        timings["denoise"] = time.perf_counter() - t_sample
        if preview.frames:
            timings["previews"] = preview.spent  # within "denoise"

        maps = None
        if request.activation_maps and request.identities and supports(self.backend, "activation_maps"):
            # One extra conditional UNet call on the final latent, at the last timestep, without boost.
            last_t = float(schedule.timesteps[-1])
            sample = with_conditioning(latents, conditioning)
            maps = list(self.backend.activation_maps(unet_feed(identity, states, sample, last_t, 0.0, guided=False)))

        t = time.perf_counter()
        images = [self._finish_image(latents[i : i + 1], decoder, start) for i in range(batch)]
        timings["decode"] = time.perf_counter() - t
        self.backend.generation_done()
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
            latents=latents.astype(np.float32),
            model=self.model_info(),
            lora_hashes=lora_hashes(loras),
        )

    def _finish_image(self, latent: np.ndarray, decoder: str, start):
        """One image of the batch, decoded; with a start image, its unmasked pixels are the photo's own."""
        image = self._decode(latent, decoder)
        return start.composite(image) if start is not None else image

    def _decode(self, latent: np.ndarray, engine: str):
        from PIL import Image

        return Image.fromarray(decode_pixels(self.backend, engine, latent, self.vae_scale))

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _face_analyzer(paths: ModelPaths):
    from .identity.faces import FaceAnalyzer

    return FaceAnalyzer(paths.insightface)


__all__ = ["Pipeline"]
