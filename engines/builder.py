"""Build one TensorRT plan from one ONNX graph with the TensorRT Python API.

Precision, by the library's declaration (``library.TensorRTLibrary``):
- strongly typed libraries (TensorRT 11, TensorRT-RTX) have no precision flags: the network takes
  its types from the ONNX graph, so fp16 plans are built from the exporter's fp16 graph, whose fp32
  islands (softmax, normalisation statistics, the SAA gating sums, the timestep embedding) stay fp32;
- TensorRT 10 builds from the same fp16 graph with ``BuilderFlag.FP16`` and pins every layer the
  graph computes in fp32 to fp32 (``OBEY_PRECISION_CONSTRAINTS``), so it keeps the same islands.
fp32 plans are built from the fp32 graph without precision flags.

Build settings: the workspace limit, the optimisation level, refittable weights for the UNet, the
target compute capabilities of portable libraries, and (for libraries with a timing cache) the
timing cache carried between builds. Progress goes through a TensorRT progress monitor to tqdm
bars; a build that runs out of GPU memory says how to lower the workspace.
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from dynamicid_rt.errors import DynamicIDError

from .library import TIMING_CACHE, LoadedTensorRT
from .profiles import Profile

log = logging.getLogger(__name__)

DEFAULT_OPTIMIZATION_LEVEL = 3  # TensorRT's default: level 4-5 tune longer for a few percent more
_OOM_MARKERS = ("out of memory", "outofmemory", "cudaerrormemoryallocation", "insufficient memory", "failed to allocate")


class EngineBuildError(DynamicIDError):
    """TensorRT could not parse a graph or build a plan."""


@dataclass(frozen=True)
class BuildSettings:
    """``workspace_gib``: cap on the builder's scratch memory (None: TensorRT's default, up to the
    GPU's free memory); ``optimization_level``: 0-5; ``refittable``: weights can be replaced later;
    ``targets``: compute capabilities of a portable plan (empty: the library's default targets)."""

    workspace_gib: float | None = None
    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL
    refittable: bool = False
    targets: tuple[str, ...] = ()

    def check(self) -> None:
        if not 0 <= self.optimization_level <= 5:
            raise DynamicIDError(f"optimisation level {self.optimization_level} is outside 0..5")
        if self.workspace_gib is not None and self.workspace_gib <= 0:
            raise DynamicIDError(f"workspace {self.workspace_gib} GiB must be positive")

    def targets_for(self, lib: LoadedTensorRT) -> tuple[str, ...]:
        """The compute capabilities a plan is built for: ours, or the library's defaults (empty for
        libraries whose plans are tuned on the building GPU)."""
        if not lib.spec.portable_plans:
            if self.targets:
                raise DynamicIDError(f"{lib.spec.name} builds for the GPU it runs on; --targets is for tensorrt-rtx")
            return ()
        offered = lib.spec.targets + lib.spec.optional_targets
        unknown = [t for t in self.targets if t not in offered]
        if unknown:
            raise DynamicIDError(
                f"compute capability {', '.join(unknown)} is not a {lib.spec.name} target; choose from {', '.join(offered)}"
            )
        return tuple(self.targets) or lib.spec.targets


def make_logger(trt: ModuleType) -> Any:
    """A TensorRT logger that forwards to :mod:`logging` and keeps the error messages (to recognise
    out-of-memory failures). Made right before the builder, runtime or refitter that uses it.

    It first collects Python's cyclic garbage. TensorRT-RTX 1.7.1 calls the logger while it holds
    a lock of its own (creating a builder, for one); an allocation in that call can start the
    garbage collector, which may free an earlier IBuilder kept in a reference cycle (a traceback's
    frames hold one after a failed build), and that IBuilder's destructor takes the same lock: the
    process hangs, holding the GIL (seen in a test run; native stacks: ``createInferBuilder`` ->
    ``PyLogger::log`` -> ``gc_collect_main`` -> ``IBuilder`` dealloc -> ``pthread_mutex_lock``).
    Collected here, such objects are freed while no TensorRT lock is held."""
    gc.collect()

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return Logger()


def make_progress_monitor(trt: ModuleType, desc: str) -> Any:
    """A TensorRT progress monitor showing each build phase as a tqdm bar."""
    from tqdm import tqdm

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = 0 if parent_phase is None else 1 + (parent_phase in self.bars)
            self.bars[phase_name] = tqdm(
                total=num_steps, desc=f"{desc}: {phase_name}", leave=False, position=depth, disable=None
            )

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()


def pin_fp32_islands(trt: ModuleType, network: Any) -> int:
    """Pin to fp32 every layer whose floating outputs the graph declares fp32 (TensorRT 10 with
    ``BuilderFlag.FP16`` would otherwise be free to run them in fp16). Returns how many."""
    skip = {trt.LayerType.CONSTANT, trt.LayerType.SHAPE, trt.LayerType.CAST}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in skip or layer.num_outputs == 0:
            continue
        types = [layer.get_output(j).dtype for j in range(layer.num_outputs)]
        if all(t == trt.float32 for t in types):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def parse_network(lib: LoadedTensorRT, builder: Any, logger: Any, onnx_path: Path, engine: str = "") -> tuple[Any, Any]:
    """The network TensorRT's own ONNX parser makes of ``onnx_path`` (and the parser, which must
    outlive the build); a graph it rejects gives one line naming the engine, the op and the node."""
    trt = lib.trt
    flags = 0
    if lib.spec.strongly_typed:
        creation = trt.NetworkDefinitionCreationFlag
        if hasattr(creation, "STRONGLY_TYPED"):  # a library may drop the flag, being typed anyway
            flags |= 1 << int(creation.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(
            f"{lib.label} cannot parse the {engine or 'ONNX'} graph {onnx_path}: {errors or 'no reason given'}"
        )
    return network, parser


def _parser_error(error: Any) -> str:
    """One parser error on one line: "op X (node N): UNSUPPORTED_NODE (detail)"."""
    def field(name: str) -> str:
        getter = getattr(error, name, None)
        return " ".join(str(getter()).split()) if callable(getter) else ""

    code = field("code").rpartition(".")[2]  # "ErrorCode.UNSUPPORTED_NODE"
    desc = field("desc")
    # The parser's description is often the bare failed check ("false"); the code says more then.
    what = code + (f" ({desc})" if desc and desc.lower() not in ("false", "true") else "") or " ".join(str(error).split())
    op, node = field("node_operator"), field("node_name")
    return (f"op {op}" + (f" (node {node})" if node else "") + f": {what}") if op else what


def configure(
    lib: LoadedTensorRT, builder: Any, network: Any, precision: str, profile: Profile, settings: BuildSettings,
    timing_cache: bytes, monitor: Any,
) -> Any:
    """The builder config for one plan (separate from :func:`build_plan` so tests can read it)."""
    trt = lib.trt
    config = builder.create_builder_config()
    if settings.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gib * 2**30))
    config.builder_optimization_level = settings.optimization_level
    if precision == "fp16" and not lib.spec.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log.debug("pinned %d fp32 layers", pin_fp32_islands(trt, network))
    if settings.refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    targets = settings.targets_for(lib)
    if targets:
        config.num_compute_capabilities = len(targets)
        for i, target in enumerate(targets):
            config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + target.replace(".", "")), i)
    optimization_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        optimization_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(optimization_profile)
    if lib.spec.kernel_cache == TIMING_CACHE:
        config.set_timing_cache(config.create_timing_cache(timing_cache), False)
    config.progress_monitor = monitor
    return config


def build_plan(
    lib: LoadedTensorRT, onnx_path: Path, precision: str, profile: Profile, settings: BuildSettings,
    timing_cache: bytes = b"", desc: str = "tensorrt",
) -> tuple[bytes, bytes]:
    """Build a serialized plan from ``onnx_path``; returns ``(plan, updated timing cache)``, the
    timing cache empty for libraries that keep none."""
    settings.check()
    trt = lib.trt
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network, _parser = parse_network(lib, builder, logger, onnx_path, desc)  # the parser must outlive the build
    missing = sorted({network.get_input(i).name for i in range(network.num_inputs)} - set(profile))
    if missing:
        raise EngineBuildError(f"{onnx_path} has inputs {missing} that the contract's profile lacks; rebuild the ONNX entry")
    config = configure(lib, builder, network, precision, profile, settings, timing_cache, make_progress_monitor(trt, desc))
    try:
        plan = builder.build_serialized_network(network, config)
    except (RuntimeError, MemoryError) as exc:
        logger.errors.append(str(exc))
        plan = None
    if plan is None:
        raise build_failure(desc, logger.errors, settings)
    timing = bytes(config.get_timing_cache().serialize()) if lib.spec.kernel_cache == TIMING_CACHE else b""
    return bytes(plan), timing


def build_failure(desc: str, errors: list[str], settings: BuildSettings) -> EngineBuildError:
    """The error for a failed build; out-of-memory failures say how to lower the workspace."""
    text = "; ".join(errors) or "no reason given (run with -v for TensorRT's log)"
    if any(marker in e.lower().replace(" ", "") or marker in e.lower() for e in errors for marker in _OOM_MARKERS):
        now = f"{settings.workspace_gib:g} GiB" if settings.workspace_gib is not None else "TensorRT's default (all free memory)"
        lower = max(0.5, (settings.workspace_gib or 4.0) / 2)
        return EngineBuildError(
            f"TensorRT ran out of GPU memory building {desc} (workspace: {now}); lower the workspace, e.g. "
            f"`build-engines --backend tensorrt --workspace {lower:g}`, close other programs using the GPU, or build "
            f"a static plan (--static 512x512). TensorRT said: {text}"
        )
    return EngineBuildError(f"TensorRT could not build {desc}: {text}")
