"""The TensorRT part of ``dynamicid-rt build-engines``: ``--backend tensorrt|tensorrt-rtx [--static WxH]``."""
from __future__ import annotations

import argparse

from dynamicid_rt.errors import DynamicIDError

from ..engines.builder import DEFAULT_OPTIMIZATION_LEVEL, BuildSettings
from ..engines.library import LIBRARIES
from ..engines.profiles import StaticSize

PLAN_BACKENDS = tuple(dict.fromkeys(lib.backend for lib in LIBRARIES))


def _static(text: str) -> StaticSize:
    try:
        return StaticSize.parse(text)
    except DynamicIDError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets or not all(t.replace(".", "", 1).isdigit() for t in targets):
        raise argparse.ArgumentTypeError(f"--targets {text!r}: expected compute capabilities like 8.6,8.9,12.0")
    return targets


def add_tensorrt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=["onnxruntime", *PLAN_BACKENDS], default="onnxruntime",
        help="onnxruntime: ONNX graphs only (default); tensorrt: also TensorRT plans for this GPU; tensorrt-rtx: "
        "also portable TensorRT-RTX plans for RTX GPUs (builds without a GPU)",
    )
    parser.add_argument(
        "--static", type=_static, default=None, metavar="WxH",
        help="tensorrt(-rtx): also build static-shape plans of the size-dependent engines (unet, the VAE) for this size (faster, CUDA graphs)",
    )
    parser.add_argument(
        "--workspace", type=float, default=None, metavar="GIB",
        help="tensorrt(-rtx): cap the builder's scratch GPU memory (default: TensorRT's, up to all free memory)",
    )
    parser.add_argument(
        "--opt-level", type=int, default=DEFAULT_OPTIMIZATION_LEVEL, choices=range(6), metavar="0-5",
        help=f"tensorrt(-rtx): builder optimisation level (default {DEFAULT_OPTIMIZATION_LEVEL}; higher tunes longer)",
    )
    parser.add_argument(
        "--targets", type=_targets, default=(), metavar="CC,...",
        help="tensorrt-rtx: compute capabilities to build for (default 8.0,8.6,8.9,12.0; add 7.5 for Turing)",
    )


def run_build_plans(args: argparse.Namespace) -> int:
    """Build (or reuse) the ONNX entries and the TensorRT plans; one line per plan."""
    from tqdm import tqdm

    from dynamicid_rt.export.cache import default_engine_dir

    from ..engines.build import build_plans
    from ..engines.cuda import gpu_here
    from ..engines.library import load
    from .model_folder import model_paths

    lib = load(args.backend, f"build-engines --backend {args.backend}")  # before any export: fail fast
    paths = model_paths(args)
    engine_dir = args.engine_dir or default_engine_dir(paths)
    settings = BuildSettings(workspace_gib=args.workspace, optimization_level=args.opt_level, targets=args.targets)
    plans = build_plans(
        paths, engine_dir, args.precision or "fp16", args.engines, static=args.static, settings=settings,
        force=args.force, verify=args.verify, lib=lib, gpu=gpu_here(),
    )
    for plan in plans:
        tqdm.write(f"{plan.engine:<15} {plan.tag:<18} {plan.status:<7} {plan.path}")
    return 0
