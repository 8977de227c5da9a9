"""The ``dynamicid-rt`` command line: generate (``generate``), demo, inspect, doctor, build-engines (``build_engines``), models, cache, desktop, serve.

Uses the public API (``dynamicid_rt``) and the commands of the wings that own them."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

# Only the public API (SPEC §6: the CLI stands on layer 5's public names).
from dynamicid_rt import (
    AUTO,
    BACKEND_OPTIONS,
    BACKENDS,
    SAMPLERS,
    DynamicIDError,
    __version__,
    canonical_sampler,
    parse_lora_arg,
    precision_choices,
)
from dynamicid_rt.messages import user_message
from dynamicid_rt.modelfiles.part_options import MODELS_HELP, add_part_arguments, part_overrides

from .generate import cmd_generate
from .step_progress import step_progress

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
    if not sep or not _is_count(w) or not _is_count(h):
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 512x768")
    return int(w), int(h)


def _is_count(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²", which int() refuses."""
    return 0 < len(text) <= 6 and text.isascii() and text.isdigit()


def _face_index(text: str) -> int:
    if not _is_count(text.strip()):
        raise argparse.ArgumentTypeError(f"face index {text!r}: expected a whole number >= 0 (faces are counted from 0)")
    return int(text)


def _text(text: str) -> str:
    """Command-line text the tokenizer can take: a byte that is not UTF-8 arrives as a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} holds a byte that is not UTF-8 at position {exc.start}; give the text in UTF-8") from None
    return text


def _sampler(text: str) -> str:
    try:
        return canonical_sampler(text)
    except DynamicIDError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _lora(text: str):
    try:
        return parse_lora_arg(text)
    except DynamicIDError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _backend_choices() -> list[str]:
    return [AUTO, *BACKENDS]  # the registry's declarations; no backend module is imported


def _taking(option: str) -> str:
    """The backends that declare the constructor keyword ``option``, for a flag's help."""
    return ", ".join(name for name, info in BACKENDS.items() if option in info.options)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, default=os.environ.get("DYNAMICID_MODELS"), help=MODELS_HELP)
    p.add_argument("--backend", default=AUTO, choices=_backend_choices(),
                   help="one of %(choices)s; auto: the fastest installed backend for this machine, see "
                        "`dynamicid-rt doctor` (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--precision", default=None, choices=precision_choices(),
                   help="numeric precision, one of %(choices)s (default: the backend's best for the device; "
                        "`dynamicid-rt doctor` lists each backend's)")
    p.add_argument("--onnx-cache", type=Path, default=None, metavar="DIR",
                   help=f"the ONNX cache (exported graphs) of the {_taking('engine_dir')} backends (default: the user cache)")
    p.add_argument("--engine-dir", dest="onnx_cache", type=Path, default=None, help=argparse.SUPPRESS)  # its old name
    for option in BACKEND_OPTIONS.values():  # each backend's switches, as the registry declares them
        p.add_argument(option.flag, dest="backend_options", action="append_const", const=option.name,
                       help=f"{_taking(option.name)} {option.help}")
    add_part_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynamicid-rt", description="Fast local runtime for DynamicID.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate images with one to four people")
    _add_model_args(g)
    g.add_argument("--face", action="append", default=[], metavar="PHOTO", help="reference photo, once per person")
    g.add_argument("--face-prompt", action="append", default=[], type=_text, metavar="TEXT",
                   help='per person, in --face order: target expression/pose, e.g. "in a happy expression, facing up" ("" = none)')
    g.add_argument("--source-prompt", action="append", default=[], type=_text, metavar="TEXT", help="per person: override the automatic source face prompt")
    g.add_argument("--target-landmarks", action="append", default=[], metavar="PHOTO", help="per person: photo whose face layout to take")
    g.add_argument("--face-index", action="append", default=[], type=_face_index, metavar="I", help="per person: which face of the photo")
    g.add_argument("--emotion", action="append", default=[], type=_text, metavar="WORD",
                   help="per person: the photo's expression for the automatic source prompt (default neutral)")
    g.add_argument("--box", action="append", default=[], type=_box, metavar="Y0,X0,Y1,X1", help="per person region (fractions)")
    g.add_argument("--prompt", required=True, help="what the image shows (CLIP's 77-token limit; longer is cut with a warning)")
    g.add_argument("--negative-prompt", default="", metavar="TEXT", help="what to steer away from (default: none)")
    g.add_argument("--size", type=_size, default=None, metavar="WxH",
                   help="image size, multiples of 64 from 256 to 1024 (default: 512x512, or the --init-image's size)")
    g.add_argument("--init-image", type=Path, default=None, metavar="PHOTO",
                   help="img2img: start from this picture (its size, unless --size)")
    g.add_argument("--resize", action="store_true",
                   help="crop and resize --init-image and --mask to --size, or to the picture's aspect at the nearest "
                        "size the model takes (A1111's \"Crop and resize\"); the files are left as they are")
    g.add_argument("--strength", type=float, default=0.75, metavar="S",
                   help="with --init-image: how much to change, 0-1; runs int(steps x S) steps (default: %(default)s)")
    g.add_argument("--mask", type=Path, default=None, metavar="PNG",
                   help="with --init-image: repaint only where this mask is white; the rest stays bit-exact")
    g.add_argument("--mask-blur", type=int, default=4, metavar="PX", help="with --mask: its blur in pixels (default: %(default)s)")
    g.add_argument("--steps", type=int, default=50, help="sampler steps, 1-1000 (default: %(default)s)")
    g.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale; 1 turns it off (default: %(default)s)")
    g.add_argument("--sampler", type=_sampler, default="default", choices=("default", *SAMPLERS), metavar="NAME",
                   help="one of: %(choices)s (default: the base model's scheduler, PNDM for SD1.5); diffusers, "
                        "ComfyUI and A1111 names also work, e.g. euler_ancestral, 'Euler a', 'DPM++ 2M Karras'")
    g.add_argument("--lora", action="append", default=[], type=_lora, metavar="PATH[:SCALE]",
                   help="a kohya or diffusers LoRA .safetensors and its strength (default 1), repeatable")
    g.add_argument("--decoder", choices=("vae", "taesd"), default="vae",
                   help="final decode: vae, the full VAE, or taesd, the tiny autoencoder of the model folder's taesd/ "
                        "(much faster, a little softer) (default: %(default)s)")
    g.add_argument("--tcd-gamma", type=float, default=0.3, metavar="G", help="the tcd sampler's stochasticity, 0-1 (default: %(default)s)")
    g.add_argument("--seed", type=int, default=None, help="0 to 2**32-1; image k of a batch uses seed+k (default: random, written to the PNG)")
    g.add_argument("--batch", type=int, default=1, help="images per run, 1-16 (default: %(default)s)")
    g.add_argument("--id-scale", action="append", default=[], type=float, metavar="S",
                   help="identity strength (default 1.0): once for everyone, or once per --face in order")
    g.add_argument("--gating", choices=["auto", "on", "off"], default="auto",
                   help="keep each person's identity inside their box, one of %(choices)s; auto: on for two or more people "
                        "(default: %(default)s)")
    g.add_argument("--boost", type=float, default=4.0, help="identity boost in the first steps (default: %(default)s)")
    g.add_argument("--boost-steps", type=int, default=3, help="how many first steps get the boost (default: %(default)s)")
    g.add_argument("--mix", type=float, default=0.5,
                   help="share of the first person when several share one box, 0-1 (default: %(default)s)")
    g.add_argument("--check-identities", action="store_true",
                   help="after generating, print each person's likeness (ArcFace similarity to their photo)")
    g.add_argument("--best-of", type=int, default=1, metavar="N",
                   help="generate N seeds and keep them ranked by the least recognisable person (implies --check-identities)")
    g.add_argument("--face-crop", action="store_true", help="feed CLIP a face-centred crop instead of the whole photo")
    g.add_argument("--out", type=Path, default=None, help="output image, .png, .jpg or .webp (default ./dynamicid-SEED.png); never one of the input photos")

    d = sub.add_parser("demo", help="build the tiny bundle if needed and generate a two-person image")
    d.add_argument("--models", type=Path, default=None, help="where the tiny bundle lives (default: user cache)")
    d.add_argument("--out", type=Path, default=Path("dynamicid-demo.png"), help="output PNG (default: %(default)s)")
    d.add_argument("--backend", default=AUTO, choices=_backend_choices(),
                   help="one of %(choices)s (default: %(default)s, the fastest installed here)")
    d.add_argument("--steps", type=int, default=None, help="sampler steps (default: 25, or 4 with --full-size)")
    d.add_argument("--full-size", action="store_true",
                   help="random weights at the real SD1.5/CLIP-H/IMR sizes (about 7 GB, written once): shows this "
                        "machine's real speed per backend at 256x256")

    i = sub.add_parser("inspect", help="what a checkpoint or model folder holds and whether it loads")
    i.add_argument("path", type=Path, help="a checkpoint file (.bin/.safetensors) or a model folder")
    add_part_arguments(i)

    dr = sub.add_parser("doctor", help="versions, providers, GPU, and what a model folder lacks")
    dr.add_argument("--models", type=Path, default=os.environ.get("DYNAMICID_MODELS"), metavar="DIR",
                    help="also check this model folder (default: $DYNAMICID_MODELS)")
    add_part_arguments(dr)

    dk = sub.add_parser("desktop", help="start the desktop app (other arguments go to Qt)")
    dk.add_argument("--models", type=Path, default=None, metavar="DIR",
                    help="model folder for this session (default: the saved choice, else the tiny demo bundle)")
    dk.add_argument("--backend", default=None, choices=_backend_choices(),
                    help="one of %(choices)s for this session (default: the saved choice)")
    try:
        from dynamicid_rt.cli.build_engines import register as register_build_engines
    except ImportError:  # the exporter's extras are not installed
        register_build_engines = None
    if register_build_engines is not None:
        from .cache import register as register_cache

        register_build_engines(sub)
        register_cache(sub)
    from dynamicid_rt.server.command import register as register_serve  # argparse only; FastAPI loads when it runs

    from .models import register as register_models  # argparse only; huggingface_hub loads when it runs

    register_models(sub)

    register_serve(sub, _add_model_args)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from dynamicid_rt import Pipeline, Request, check_output_path, format_parameters, save_png
    from dynamicid_rt.tiny.bundle import default_full_size_dir, default_tiny_dir, write_tiny_bundle

    check_output_path(args.out)  # before minutes of bundle building
    root = args.models or (default_full_size_dir() if args.full_size else default_tiny_dir())
    if (root / "tiny_bundle.json").is_file() or not (root / "base").exists():
        paths = write_tiny_bundle(root, full_size=args.full_size)
    else:
        from dynamicid_rt import ModelPaths

        paths = ModelPaths.from_folder(root)
    samples = root / "samples"
    faces = [samples / "person_a.png", samples / "person_b.png"]
    missing = [str(f) for f in faces if not f.is_file()]
    if missing:
        raise DynamicIDError(f"demo portraits missing: {', '.join(missing)}; use `generate --face PHOTO` with real photos")
    kind = "FULL-SIZE RANDOM WEIGHTS" if args.full_size else "TINY RANDOM WEIGHTS"
    print(f"dynamicid-rt demo: {kind} - the image will be noise. This checks that every stage runs.")
    print("For real images: dynamicid-rt models pull --dir DIR (about 8 GB: SD1.5, CLIP ViT-H/14, DynamicID, buffalo_l),")
    print("then: dynamicid-rt generate --models DIR --face PHOTO --prompt ...")
    pipe = Pipeline.load(paths, backend=args.backend)
    people = [
        pipe.encode_identity(faces[0]),
        pipe.encode_identity(faces[1], face_prompt="in a happy expression, facing up") if pipe.has_imr else pipe.encode_identity(faces[1]),
    ]
    size = 256 if args.full_size else 512  # full size on a CPU: a short look at the real speed
    steps = args.steps or (4 if args.full_size else 25)
    request = Request(prompt=DEMO_PROMPT, identities=people, steps=steps, seed=42, width=size, height=size)
    with step_progress() as progress:
        result = pipe.generate(request, progress=progress)
    save_png(result.images[0], args.out, format_parameters(result, 0))
    print(f"wrote {args.out} ({result.timings['total']:.1f} s on {result.backend}: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items() if k != "total") + ")")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from dynamicid_rt.models.inspect import inspect_path

    report, ok = inspect_path(args.path, **part_overrides(args))
    print(report)
    return 0 if ok else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from dynamicid_rt.doctor import doctor_report

    report, ok = doctor_report(args.models, part_overrides(args))
    print(report)
    return 0 if ok else 1


def _no_display_reason(env: dict, platform: str) -> str | None:
    """Why Qt cannot open a window here (it would abort the process), or None."""
    if not platform.startswith("linux") or env.get("QT_QPA_PLATFORM") or env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    return ("no display found (DISPLAY and WAYLAND_DISPLAY are unset): start the desktop app in a graphical "
            "session (or over ssh -X), or use `dynamicid-rt generate` on this machine")


def cmd_desktop(args: argparse.Namespace, rest: Sequence[str]) -> int:
    reason = _no_display_reason(dict(os.environ), sys.platform)
    if reason is not None:
        raise DynamicIDError(reason)
    try:
        desktop = importlib.import_module("dynamicid_rt.desktop")
    except ImportError as exc:
        raise DynamicIDError(f"the desktop app needs PySide6: pip install 'dynamicid-rt[desktop]' ({exc})") from exc
    session = [*(["--models", str(args.models)] if args.models else []), *(["--backend", args.backend] if args.backend else [])]
    return desktop.main([*session, *rest])


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
    except (DynamicIDError, ImportError, OSError) as exc:  # the user's to fix: one line, exit 1 (2 is argparse's)
        log.error("%s", user_message(exc))
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
