"""How much context memory each stored plan needs: at its profile's opt shapes (512², batch 2 for
guidance, 2 people on a dynamic plan; the static size on a static one) and at its maximum, the peak
a request can make the shared block grow to (``context_memory.py``). Read from the plans by the
library itself, so it needs the GPU they run on; ``doctor`` and ``benchmarks/gpu_check.py`` print it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dynamicid_rt.errors import DynamicIDError

from .context_memory import MiB, ContextMemory
from .engine import Engine
from .library import LoadedTensorRT
from .plans import plan_root, read_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanMemory:
    """Context memory of one plan, in bytes: at the profile's opt and max shapes, and the worst
    case the library reports for the whole profile (what the shared block was sized to before)."""

    plan: str  # "unet-fp16/dynamic"
    at_opt: int
    at_max: int
    worst_case: int

    def line(self) -> str:
        return (
            f"{self.plan}: context memory {self.at_opt / MiB:.0f} MiB at the profile's opt shapes, "
            f"{self.at_max / MiB:.0f} MiB at its maximum (peak)"
        )


def plan_memory(lib: LoadedTensorRT, runtime: object, plan_path: Path, profile: dict[str, list[list[int]]]) -> PlanMemory:
    """Load one plan, set its inputs to the profile's opt and max shapes in turn, and ask its
    context what it needs at each."""
    engine = Engine(lib, plan_path.parent.name, plan_path, {k: tuple(map(tuple, v)) for k, v in profile.items()})
    engine.load(runtime)
    try:
        engine.activate(ContextMemory())
        sizes = []
        for index in (1, 2):  # opt, max
            for name in engine.inputs:
                if not engine.context.set_input_shape(name, tuple(profile[name][index])):
                    raise DynamicIDError(f"{plan_path}: the plan rejects its own profile's shape for {name}")
            sizes.append(engine.memory_for_shapes())
        return PlanMemory(f"{plan_path.parent.name}/{plan_path.stem}", sizes[0], sizes[1], engine.device_memory_size)
    finally:
        engine.release()


def stored_plan_memory(lib: LoadedTensorRT, engine_dir: Path) -> list[PlanMemory | str]:
    """:func:`plan_memory` of every stored plan of ``lib``'s backend; a plan that cannot be read
    gives a line saying why instead."""
    from .builder import make_logger

    runtime = lib.trt.Runtime(make_logger(lib.trt))
    found: list[PlanMemory | str] = []
    for manifest_path in sorted(plan_root(engine_dir, lib.spec.backend).glob("*/*.json")):
        manifest, why = read_manifest(manifest_path.parent, manifest_path.stem)
        plan = manifest_path.with_suffix(".plan")
        if manifest is None or "profile" not in manifest or not plan.is_file():
            continue  # the plan cache lines already say what is wrong with it
        try:
            found.append(plan_memory(lib, runtime, plan, manifest["profile"]))
        except (DynamicIDError, RuntimeError) as exc:  # RuntimeError: what the TensorRT bindings raise
            found.append(f"{manifest_path.parent.name}/{manifest_path.stem}: context memory unknown ({exc})")
    return found
