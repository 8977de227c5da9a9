"""The model folder a command works on: ``--models`` (a folder or an ``hf:`` hub spec) with the part
options, or the tiny demo bundle, as ``generate`` falls back to it."""
from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from dynamicid_rt.modelfiles.part_options import part_overrides

if TYPE_CHECKING:
    from dynamicid_rt.modelfiles.paths import ModelPaths

log = logging.getLogger(__name__)


def model_paths(args: argparse.Namespace) -> "ModelPaths":
    """The model folder of ``--models`` with the part options, or the tiny demo bundle as
    ``generate`` falls back to it."""
    from dynamicid_rt.modelfiles.paths import ModelPaths

    if args.models is None:
        from dynamicid_rt.tiny.bundle import default_tiny_dir, write_tiny_bundle

        log.info("no --models or $DYNAMICID_MODELS: building for the tiny demo bundle (random weights)")
        return write_tiny_bundle(default_tiny_dir()).with_overrides(**part_overrides(args))
    if str(args.models).startswith("hf:"):
        from dynamicid_rt.hub.pull import paths_from_hub

        return paths_from_hub(str(args.models)).with_overrides(**part_overrides(args))
    return ModelPaths.from_folder(args.models, **part_overrides(args))
