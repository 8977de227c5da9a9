"""The ``dynamicid-rt`` command line: generate, demo, inspect, doctor, build-engines, desktop."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from .errors import DynamicIDError

log = logging.getLogger("dynamicid_rt")

DEMO_PROMPT = "two people standing in a park, photo"


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"box {text!r}: expected four comma-separated numbers y0,x0,y1,x1 in [0,1]")
    return values  # type: ignore[return-value]


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 512x768")
    return int(w), int(h)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, default=os.environ.get("DYNAMICID_MODELS"),
                   help="model folder (SPEC layout); default $DYNAMICID_MODELS, else the tiny demo bundle")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"])
    p.add_argument("--engine-dir", type=Path, default=None, help="engine cache (onnxruntime backend)")
    p.add_argument("--vae", type=Path, default=None, help="a separate VAE (diffusers folder or .safetensors)")
    p.add_argument("--tokenizer", type=Path, default=None, help="CLIP tokenizer folder (needed with a single-file base)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynamicid-rt", description="Fast local runtime for DynamicID.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate images with one to four people")
    _add_model_args(g)
    g.add_argument("--face", action="append", default=[], metavar="PHOTO", help="reference photo, once per person")
    g.add_argument("--face-prompt", action="append", default=[], metavar="TEXT",
                   help='per person, in --face order: target expression/pose, e.g. "in a happy expression, facing up" ("" = none)')
    g.add_argument("--source-prompt", action="append", default=[], metavar="TEXT", help="per person: override the automatic source face prompt")
    g.add_argument("--target-landmarks", action="append", default=[], metavar="PHOTO", help="per person: photo whose face layout to take")
    g.add_argument("--face-index", action="append", default=[], type=int, metavar="I", help="per person: which face of the photo")
    g.add_argument("--emotion", action="append", default=[], metavar="WORD",
                   help="per person: the photo's expression for the automatic source prompt (default neutral)")
    g.add_argument("--box", action="append", default=[], type=_box, metavar="Y0,X0,Y1,X1", help="per person region (fractions)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--size", type=_size, default=(512, 512), metavar="WxH")
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--guidance", type=float, default=5.0)
    g.add_argument("--sampler", default="default")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--batch", type=int, default=1)
    g.add_argument("--id-scale", type=float, default=1.0)
    g.add_argument("--gating", choices=["auto", "on", "off"], default="auto")
    g.add_argument("--boost", type=float, default=4.0)
    g.add_argument("--boost-steps", type=int, default=3)
    g.add_argument("--mix", type=float, default=0.5)
    g.add_argument("--face-crop", action="store_true", help="feed CLIP a face-centred crop instead of the whole photo")
    g.add_argument("--out", type=Path, default=None, help="output PNG (default ./dynamicid-SEED.png)")

    d = sub.add_parser("demo", help="build the tiny bundle if needed and generate a two-person image")
    d.add_argument("--models", type=Path, default=None, help="where the tiny bundle lives (default: user cache)")
    d.add_argument("--out", type=Path, default=Path("dynamicid-demo.png"))
    d.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    d.add_argument("--steps", type=int, default=25)

    i = sub.add_parser("inspect", help="what a checkpoint or model folder holds and whether it loads")
    i.add_argument("path", type=Path)

    dr = sub.add_parser("doctor", help="versions, providers, GPU, and what a model folder lacks")
    dr.add_argument("--models", type=Path, default=os.environ.get("DYNAMICID_MODELS"))

    sub.add_parser("desktop", help="start the desktop app")
    try:
        from .export.cli import register as register_build_engines
    except ImportError:  # the exporter's extras are not installed
        register_build_engines = None
    if register_build_engines is not None:
        register_build_engines(sub)
    return parser


def _pick(values: list, index: int, what: str, count: int):
    if len(values) > count:
        raise DynamicIDError(f"{len(values)} {what} given for {count} --face photo(s): give at most one per person")
    value = values[index] if index < len(values) else None
    return value if value not in ("",) else None


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import Pipeline, Request
    from .pngmeta import save_png

    overrides = {k: v for k, v in (("vae", args.vae), ("tokenizer", args.tokenizer)) if v is not None}
    pipe = Pipeline.load(args.models, backend=args.backend, device=args.device, precision=args.precision, engine_dir=args.engine_dir, **overrides)
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
    width, height = args.size
    request = Request(
        prompt=args.prompt, identities=identities, negative_prompt=args.negative_prompt,
        boxes=args.box or None, width=width, height=height, steps=args.steps, guidance=args.guidance,
        sampler=args.sampler, seed=args.seed, batch=args.batch, id_scale=args.id_scale, gating=args.gating,
        boost=args.boost, boost_steps=args.boost_steps, mix=args.mix,
    )
    request.validate()
    with tqdm(total=None, desc="denoising", unit="step", disable=None) as bar:
        def progress(info):
            bar.total = info.total
            bar.update(info.step - bar.n)
        result = pipe.generate(request, progress=progress)
    out = args.out or Path(f"dynamicid-{result.seeds[0]}.png")
    for k, image in enumerate(result.images):
        path = out if len(result.images) == 1 else out.with_name(f"{out.stem}-{k}{out.suffix}")
        save_png(image, path, result.parameters(k))
        print(path)
    log.info("timings: %s", ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import Pipeline, Request
    from .pngmeta import save_png
    from .tiny.bundle import default_tiny_dir, write_tiny_bundle

    root = args.models or default_tiny_dir()
    if (root / "tiny_bundle.json").is_file() or not (root / "base").exists():
        paths = write_tiny_bundle(root)
    else:
        from .paths import ModelPaths

        paths = ModelPaths.from_folder(root)
    samples = root / "samples"
    faces = [samples / "person_a.png", samples / "person_b.png"]
    missing = [str(f) for f in faces if not f.is_file()]
    if missing:
        raise DynamicIDError(f"demo portraits missing: {', '.join(missing)}; use `generate --face PHOTO` with real photos")
    print("dynamicid-rt demo: TINY RANDOM WEIGHTS - the image will be noise. This checks that every stage runs.")
    print("For real images put the DynamicID, SD1.5, CLIP ViT-H/14 and buffalo_l weights in a model folder")
    print("(layout in README.md) and run: dynamicid-rt generate --models DIR --face PHOTO --prompt ...")
    pipe = Pipeline.load(paths, backend=args.backend)
    people = [
        pipe.encode_identity(faces[0]),
        pipe.encode_identity(faces[1], face_prompt="in a happy expression, facing up") if pipe.has_imr else pipe.encode_identity(faces[1]),
    ]
    request = Request(prompt=DEMO_PROMPT, identities=people, steps=args.steps, seed=42, width=512, height=512)
    result = pipe.generate(request)
    save_png(result.images[0], args.out, result.parameters(0))
    print(f"wrote {args.out} ({result.timings['total']:.1f} s)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import inspect_path

    report, ok = inspect_path(args.path)
    print(report)
    return 0 if ok else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from .inspect import doctor_report

    report, ok = doctor_report(args.models)
    print(report)
    return 0 if ok else 1


def cmd_desktop(args: argparse.Namespace, rest: Sequence[str]) -> int:
    try:
        desktop = importlib.import_module("dynamicid_rt.desktop")
    except ImportError as exc:
        raise DynamicIDError(f"the desktop app needs PySide6: pip install 'dynamicid-rt[desktop]' ({exc})") from exc
    return desktop.main(list(rest))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "desktop":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handlers = {"generate": cmd_generate, "demo": cmd_demo, "inspect": cmd_inspect, "doctor": cmd_doctor}
    try:
        if args.command == "desktop":
            return cmd_desktop(args, rest)
        if args.command in handlers:
            return handlers[args.command](args)
        return args.handler(args)  # sub-commands registered by other packages (build-engines)
    except (DynamicIDError, FileNotFoundError, ImportError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
