"""``dynamicid-rt generate``: every input checked before any model loads (photos, the start image
and mask, LoRA files against the model, the outputs), then the people encoded and the images made."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from dynamicid_rt import DynamicIDError
from dynamicid_rt.modelfiles.part_options import part_overrides

from .step_progress import step_progress

if TYPE_CHECKING:
    from dynamicid_rt import BuildStatus

log = logging.getLogger("dynamicid_rt")


def _backend_options(args: argparse.Namespace) -> dict[str, bool]:
    """The switch flags given (``--cuda-graphs``...) as ``Pipeline.load``'s ``backend_options``."""
    return dict.fromkeys(args.backend_options or (), True)


def _pick(values: list, index: int, what: str, count: int):
    if len(values) > count:
        raise DynamicIDError(f"{len(values)} {what} given for {count} --face photo(s): give at most one per person")
    value = values[index] if index < len(values) else None
    return value if value not in ("",) else None


def _id_scale(values: list[float], count: int) -> float | list[float]:
    """``--id-scale`` values as Request.id_scale: one for everyone, or one per --face photo."""
    if not values:
        return 1.0
    if len(values) == 1:
        return values[0]
    if len(values) != count:
        raise DynamicIDError(
            f"{len(values)} --id-scale values given for {count} --face photo(s): give one for everyone or one per --face"
        )
    return values


def _input_photos(args: argparse.Namespace) -> list:
    """Every picture the command reads (outputs never replace one)."""
    pictures = [getattr(args, "init_image", None), getattr(args, "mask", None)]
    return [*args.face, *(p for p in args.target_landmarks if p), *(p for p in pictures if p)]


def _start_images(args: argparse.Namespace) -> dict:
    """--init-image and --mask as Request fields (read without any model), fitted by --resize; a
    picture of a size the model does not take is refused with the size --resize would give it."""
    import numpy as np

    from dynamicid_rt import crop_resize, load_photo, start_size

    if args.mask is not None and args.init_image is None:
        raise DynamicIDError("--mask repaints part of a picture: give the picture with --init-image too")
    if args.init_image is None:
        return {}
    start = {"init_image": load_photo(args.init_image)}
    if args.mask is not None:
        start["mask"] = load_photo(args.mask)
    height, width = start["init_image"].shape[:2]
    size = args.size or start_size(width, height)
    if args.resize:
        return {name: np.asarray(crop_resize(picture, *size, nearest=name == "mask")) for name, picture in start.items()}
    if size != (width, height):
        asked = f"--size {size[0]}x{size[1]}" if args.size else "the model takes sides that are multiples of 64 from 256 to 1024"
        raise DynamicIDError(f"--init-image {args.init_image.name} is {width}x{height} but {asked}: add --resize to crop "
                             f"and resize it to {size[0]}x{size[1]} (your file is left as it is)")
    return start


def _check_photos(args: argparse.Namespace) -> None:
    """Every --face, --target-landmarks, --init-image and --mask picture is a readable file, before any model loads."""
    for photo in _input_photos(args):
        path = Path(photo).expanduser()
        if not path.is_file():
            kind = ("is a folder" if path.is_dir() else "is not a regular file (a FIFO, device or socket)" if path.exists()
                    else "is a broken symlink or a symlink loop" if os.path.lexists(path) else "does not exist")
            raise DynamicIDError(f"photo {path} {kind}; give the path of an image file (PNG, JPEG or WebP)")
        if not os.access(path, os.R_OK):
            raise DynamicIDError(f"photo {path} cannot be read (permission denied); check its permissions")
    from .. import load_photo

    for photo in [*args.face, *(p for p in args.target_landmarks if p)]:
        load_photo(photo)  # an empty, truncated or non-image file is refused now, not after the export


def _output_paths(out: Path, count: int, args: argparse.Namespace) -> list[Path]:
    """``out``, then ``out-0``, ``out-1``... for several images; each checked against the inputs."""
    from dynamicid_rt import check_output_path

    inputs = _input_photos(args)
    names = [out] + ([out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(count)] if count > 1 else [])
    return [check_output_path(name, inputs) for name in names]


class BuildBar:
    """A tqdm bar over a first run's ONNX export (weights exported of all, the engine and stage, the
    time left); nothing shows when every engine comes from the cache."""

    def __init__(self) -> None:
        self.bar = None
        self.logging = contextlib.ExitStack()

    def __call__(self, status: "BuildStatus") -> None:
        from tqdm import tqdm

        from dynamicid_rt.cli.build_engines import logging_beside_a_bar

        if self.bar is None:
            if status.stage in ("checking", "reused"):
                return
            self.logging.enter_context(logging_beside_a_bar())
            self.bar = tqdm(total=status.total_bytes, unit="B", unit_scale=True, disable=None,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} of weights, {postfix}")
        self.bar.set_description(f"exporting {status.engine} ({status.index + 1}/{status.count})", refresh=False)
        self.bar.set_postfix_str(f"{status.stage}, {status.time_left}", refresh=False)
        self.bar.update(status.done_bytes - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.logging.close()


def cmd_generate(args: argparse.Namespace) -> int:
    from dynamicid_rt import Pipeline, Request, format_parameters, save_image

    id_scale = _id_scale(args.id_scale, len(args.face))  # checked before any model loads
    _check_photos(args)
    start = _start_images(args)
    width, height = start["init_image"].shape[1::-1] if "init_image" in start else args.size or (512, 512)
    # A seed drawn here names the default output, so the output path is checked before any work.
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    request = Request(
        prompt=args.prompt, negative_prompt=args.negative_prompt,
        boxes=args.box or None, width=width, height=height, steps=args.steps, guidance=args.guidance,
        sampler=args.sampler, seed=seed, batch=args.batch, id_scale=id_scale, gating=args.gating,
        boost=args.boost, boost_steps=args.boost_steps, mix=args.mix,
        check_identities=args.check_identities, best_of=args.best_of,
        loras=[(ref.path, ref.scale) for ref in args.lora], tcd_gamma=args.tcd_gamma, decoder=args.decoder,
        strength=args.strength, mask_blur=args.mask_blur, **start,
    )
    request.validate(people=len(args.face))
    if request.loras and args.models is not None:
        from dynamicid_rt import check_loras

        check_loras(args.models, request.loras)  # every layer against the model, before it loads or exports
    outputs = _output_paths(args.out or Path(f"dynamicid-{seed}.png"), args.batch * args.best_of, args)
    overrides = part_overrides(args)
    if args.models is not None:  # a decoder the folder lacks, before models load (the tiny bundle has them all)
        from dynamicid_rt import ModelPaths

        ModelPaths.from_folder(args.models, **overrides).decoder_engine(args.decoder)
    build_bar = BuildBar()
    try:
        pipe = Pipeline.load(args.models, backend=args.backend, device=args.device, precision=args.precision,
                             onnx_cache=args.onnx_cache, backend_options=_backend_options(args), build_progress=build_bar,
                             **overrides)
    finally:
        build_bar.close()
    n = len(args.face)
    identities = []
    for k, photo in enumerate(args.face):
        ident = pipe.encode_identity(
            photo,
            face_prompt=_pick(args.face_prompt, k, "--face-prompt", n),
            source_prompt=_pick(args.source_prompt, k, "--source-prompt", n),
            target_landmarks=_pick(args.target_landmarks, k, "--target-landmarks", n),
            face_index=_pick(args.face_index, k, "--face-index", n),
            emotion=_pick(args.emotion, k, "--emotion", n) or "neutral",
            face_crop=args.face_crop,
        )
        log.info("person %d: %s (source face prompt: %r)", k + 1, photo, ident.source_prompt)
        identities.append(ident)
    request = request.with_updates(identities=identities)
    request.validate()
    with step_progress() as progress:
        result = pipe.generate(request, progress=progress)
    for k, image in enumerate(result.images):
        path = outputs[0] if len(result.images) == 1 else outputs[k + 1]
        save_image(image, path, format_parameters(result, k))
        print(path)
        for match in result.identity_scores[k] if result.identity_scores else ():
            print(f"  {match.describe()}")
    log.info("timings: %s", ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
    return 0
