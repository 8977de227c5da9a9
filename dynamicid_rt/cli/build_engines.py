"""`dynamicid-rt build-engines`: export the contract engines to ONNX into the engine cache."""
from __future__ import annotations

import argparse
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dynamicid_rt.contract import ENGINES
from dynamicid_rt.errors import DynamicIDError
from dynamicid_rt.modelfiles.part_options import MODELS_HELP, add_part_arguments

from ..export import progress
from ..export.cache import PRECISIONS
from ..export.progress import BuildStatus
from .model_folder import model_paths

log = logging.getLogger(__name__)


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``build-engines`` sub-command; its handler is stored as ``handler``."""
    parser = subparsers.add_parser(
        "build-engines",
        help="export the model's engines to ONNX (reuses valid cached engines)",
        description="Export every engine of the model folder to ONNX in the engine cache. Valid cached "
        "engines are reused; stale or corrupt ones are rebuilt.",
    )
    parser.add_argument("--models", type=Path, default=os.environ.get("DYNAMICID_MODELS"), help=MODELS_HELP)
    add_part_arguments(parser)
    parser.add_argument("--onnx-cache", dest="engine_dir", type=Path, default=None, metavar="DIR",
                        help="the ONNX cache (exported graphs; TensorRT plans go inside it) (default: the user cache)")
    parser.add_argument("--engine-dir", dest="engine_dir", type=Path, default=None, help=argparse.SUPPRESS)  # its old name
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=None,
        help="fp16 graphs are for GPUs (default: fp32; fp16 with --backend tensorrt or tensorrt-rtx)",
    )
    parser.add_argument(
        "--engines", nargs="+", choices=list(ENGINES), default=None, metavar="ENGINE",
        help=f"engines to build (default: all the model provides): {', '.join(ENGINES)}",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even valid engines")
    parser.add_argument("--verify", action="store_true", help="re-hash every cached file, even untouched ones")
    from dynamicid_rt.cli.build_plans import add_tensorrt_arguments  # light: imports no TensorRT

    add_tensorrt_arguments(parser)
    parser.set_defaults(handler=run_build_engines)
    return parser


def run_build_engines(args: argparse.Namespace) -> int:
    """Handler of ``build-engines``; prints one line per engine and returns the exit status."""
    from tqdm import tqdm

    from dynamicid_rt.export.cache import build_engines, default_engine_dir, default_engines

    if args.backend != "onnxruntime":
        from dynamicid_rt.cli.build_plans import run_build_plans

        return run_build_plans(args)
    if args.static is not None or args.targets:
        raise DynamicIDError("--static and --targets build TensorRT plans: add --backend tensorrt or tensorrt-rtx")
    paths = model_paths(args)
    names = args.engines or default_engines(paths)
    engine_dir = args.engine_dir or default_engine_dir(paths)
    with logging_beside_a_bar(), tqdm(total=len(names), unit="engine", desc="build-engines") as bar:

        def progress(status: BuildStatus) -> None:
            text = f"{status.engine}: {status.stage}"
            bar.set_postfix_str(text if status.stage in ("checking", "reused", "built") else f"{text}, {status.time_left}")
            if status.stage in ("reused", "built"):
                bar.update(1)

        entries = build_engines(
            paths, engine_dir, args.precision or "fp32", names, progress=progress, force=args.force, verify=args.verify
        )
    for entry in entries:
        tqdm.write(f"{entry.engine:<15} {'reused' if entry.reused else 'built':<7} {entry.onnx}")
    return 0


@contextmanager
def logging_beside_a_bar() -> Iterator[None]:
    """While a tqdm bar shows an export: log lines are written through tqdm (printed as they are,
    they would tear the bar), and the export's stage lines (``progress.py``), which the bar shows, are not logged."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    stage_log = logging.getLogger(progress.__name__)

    def drop(record: logging.LogRecord) -> bool:
        return False

    stage_log.addFilter(drop)
    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger()]):
            yield
    finally:
        stage_log.removeFilter(drop)
