"""The backend registry: one :class:`BackendInfo` per backend, and ``backend="auto"``.

A backend is declared once, in ``dynamicid_rt/backends/__init__.py``, by a ``register(BackendInfo(...))``
line: its name, the ``module:Class`` that implements it (imported only when chosen), its pip extra,
the packages it needs, the precisions it runs per device, its constructor options, its optional
capabilities and its place in auto's order. Everything here reads those declarations; nothing
imports a backend module until :func:`create_backend` builds one. Device and precision are
resolved and checked here, once (:func:`resolve`); a backend's constructor takes them as given.

Auto's order (``auto_rank``, lower first): TensorRT (cuda), TensorRT-RTX (cuda, on its target
GPUs), onnxruntime CUDA, torch CUDA, OpenVINO (cpu), onnxruntime CPU, torch CPU. A candidate is usable when its packages are importable
(``importlib.util.find_spec``) and its device probe finds the device.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..errors import BackendError
from . import probes

if TYPE_CHECKING:
    from ..modelfiles.paths import ModelPaths
    from .base import Backend

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class BackendOption:
    """A switch some backends' constructors take, off unless asked for: one entry of
    ``Pipeline.load(backend_options=...)`` and one CLI flag. ``help`` follows the names of the
    backends that declare it (``"onnxruntime " + help``)."""

    name: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


BACKEND_OPTIONS: dict[str, BackendOption] = {option.name: option for option in (
    BackendOption("trt_provider", "on CUDA through its TensorRT provider (the first run builds engines: minutes)"),
    BackendOption("cuda_graphs", "on CUDA: replay each UNet step from a CUDA graph (fixed shapes within a generation)"),
)}
# Constructor keywords a backend may declare in ``options`` (besides the model paths): where it
# runs (resolved here, see create_backend), the ONNX cache it reads, the progress callback of that
# cache's build (``export.progress.BuildProgress``), and its switches.
KNOWN_OPTIONS = ("device", "precision", "engine_dir", "build_progress", *BACKEND_OPTIONS)
# Optional Backend methods a backend may declare in ``capabilities``.
KNOWN_CAPABILITIES = ("activation_maps", "device_bind")


@dataclass(frozen=True)
class CpuNeed:
    """What a precision needs of the CPU to be offered there: a probe, and why it is missing in the user's terms."""

    present: Callable[[], bool]
    missing: str


# Precisions offered on the CPU only where it has the units for them (the rest need nothing).
CPU_NEEDS: dict[str, CpuNeed] = {
    "bf16": CpuNeed(probes.cpu_has_bf16, "this CPU has no bf16 units: avx512_bf16 or amx_bf16"),
}


@dataclass(frozen=True)
class BackendInfo:
    """What the registry knows about one backend without importing it.

    ``precisions`` maps a device kind (``cpu``, ``cuda``) to the precisions the backend runs there,
    its default first: the only list of them (the CLI's choices, ``doctor`` and create_backend's
    checks read it); on the CPU one in CPU_NEEDS (``bf16``) is offered only where the CPU has its units.
    ``devices`` is a cheap probe returning the device kinds usable here, preferred first.
    ``options`` are the keywords its constructor takes besides the model paths (see KNOWN_OPTIONS).
    ``capabilities``: ``activation_maps`` (SAA maps for the desktop), ``device_bind`` (``bind()``
    keeps constant inputs resident on the device). ``auto_rank`` maps a device kind to its place
    in auto's order (lower first; absent: never picked by auto). ``install_hint`` replaces the
    generic ``pip install`` advice when the packages are missing. ``no_device_hint`` says why the
    device probe found nothing, in the user's terms. ``preferred_over`` maps a lower-ranked backend
    to why this one goes first when both are usable (auto's log line says it).
    """

    name: str
    target: str
    extra: str
    requires: tuple[str, ...]
    precisions: Mapping[str, tuple[str, ...]]
    devices: Callable[[], tuple[str, ...]] = probes.cpu_only
    options: tuple[str, ...] = ("device", "precision")
    capabilities: frozenset[str] = frozenset()
    auto_rank: Mapping[str, int] = field(default_factory=dict)
    install_hint: str = ""
    no_device_hint: Callable[[], str] | None = None
    preferred_over: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = (set(self.options) - set(KNOWN_OPTIONS)) | (set(self.capabilities) - set(KNOWN_CAPABILITIES))
        if ":" not in self.target or unknown:
            raise ValueError(f"backend {self.name}: bad declaration (target {self.target!r}, unknown {sorted(unknown)})")

    def missing_packages(self) -> list[str]:
        return [m for m in self.requires if not probes.installed(m)]

    def install_advice(self) -> str:
        return self.install_hint or f"pip install 'dynamicid-rt[{self.extra}]'"

    def usable_devices(self) -> tuple[str, ...]:
        """Device kinds this backend can run on here (empty when its packages are missing)."""
        return () if self.missing_packages() else tuple(self.devices())

    def precisions_here(self, device_kind: str) -> tuple[str, ...]:
        """Precisions this backend runs on ``device_kind`` on this machine, default first."""
        offered = self.precisions.get(device_kind, ())
        if device_kind == "cpu":
            offered = tuple(p for p in offered if p not in CPU_NEEDS or CPU_NEEDS[p].present())
        return offered

    def backend_options(self) -> tuple[str, ...]:
        """The switches of BACKEND_OPTIONS this backend takes."""
        return tuple(o for o in self.options if o in BACKEND_OPTIONS)


BACKENDS: dict[str, BackendInfo] = {}


def register(info: BackendInfo) -> BackendInfo:
    BACKENDS[info.name] = info
    return info


def backend_info(name: str) -> BackendInfo:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose {AUTO} or one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def supports(backend: "Backend", capability: str) -> bool:
    """Whether a backend instance declared ``capability`` in its registration."""
    info = BACKENDS.get(backend.name)
    return info is not None and capability in info.capabilities


@dataclass(frozen=True)
class AutoChoice:
    """What auto picked and why: ``skipped`` holds one line per better-ranked candidate it passed;
    ``cpu`` the fastest path this CPU has, when auto picked the CPU (its speed depends on it)."""

    backend: str
    device: str
    skipped: tuple[str, ...]
    preferred: tuple[str, ...] = ()
    cpu: str = ""

    def explain(self) -> str:
        why = "; ".join(self.skipped) if self.skipped else "the first choice of auto's order"
        cpu = [f"this CPU: {self.cpu}"] if self.cpu else []
        return f"{self.backend} on {self.device} ({why})" + "".join(f"; {line}" for line in [*self.preferred, *cpu])


def _candidates() -> list[tuple[int, BackendInfo, str]]:
    return sorted((rank, info, kind) for info in BACKENDS.values() for kind, rank in info.auto_rank.items())


def choose_auto(device: str | None = None, precision: str | None = None) -> AutoChoice:
    """The best usable (backend, device) in auto's order, restricted to ``device``'s kind and to
    backends that run ``precision`` there when those are given."""
    want_kind = device.partition(":")[0] if device else None
    if device is not None:
        parse_device(device)
    skipped: list[str] = []
    probed: dict[str, tuple[str, ...]] = {}
    for _, info, kind in _candidates():
        if want_kind is not None and kind != want_kind:
            continue
        label = f"{info.name} {kind}"
        missing = info.missing_packages()
        if missing:
            skipped.append(f"{label}: {', '.join(missing)} not installed")
            continue
        if info.name not in probed:
            probed[info.name] = info.usable_devices()
        if kind not in probed[info.name]:
            skipped.append(f"{label}: no {kind} device")
            continue
        if precision is not None and precision not in info.precisions_here(kind):
            skipped.append(f"{label}: does not run {precision} here")
            continue
        cpu = probes.cpu_fastest_path() if kind == "cpu" else ""
        return AutoChoice(info.name, device or kind, tuple(skipped), _preferred(info, kind), cpu)
    raise BackendError(
        f"backend auto found no usable backend ({'; '.join(skipped) or 'none registered'}); "
        f"install one, e.g. pip install 'dynamicid-rt[openvino]'"
    )


def _preferred(info: BackendInfo, kind: str) -> tuple[str, ...]:
    """Lines saying why ``info`` goes before lower-ranked backends that are usable too."""
    lines = []
    for other, why in info.preferred_over.items():
        candidate = BACKENDS.get(other)
        if candidate is not None and kind in candidate.usable_devices():
            lines.append(f"preferred over {other}, also usable: {why}")
    return tuple(lines)


def parse_device(device: str) -> tuple[str, int]:
    """``cuda:1`` as ``("cuda", 1)`` (index 0 when none is given) for a device name some backend
    understands, else a BackendError saying so: otherwise a typo reads as "no usable backend, install one"."""
    kinds = sorted({kind for info in BACKENDS.values() for kind in info.precisions})
    kind, colon, index = device.partition(":")
    if kind not in kinds or (colon and not index.isdigit()):
        raise BackendError(f"device {device!r} is not a device name; use {', '.join(kinds)} (or cuda:N for the N-th GPU)")
    return kind, int(index or 0)


def precision_choices() -> tuple[str, ...]:
    """Every precision some backend declares, in declaration order (the CLI's ``--precision`` choices)."""
    return tuple(dict.fromkeys(p for info in BACKENDS.values() for offered in info.precisions.values() for p in offered))


def _resolve_device(info: BackendInfo, device: str | None) -> str:
    usable = info.usable_devices()
    if device is None:
        if not usable:
            hint = f": {info.no_device_hint()}" if info.no_device_hint is not None else ""
            raise BackendError(f"the {info.name} backend finds no device it can use here{hint}")
        return usable[0]
    kind, _, index = device.partition(":")
    if kind not in info.precisions or (index and not index.isdigit()):
        raise BackendError(f"device {device!r} is not understood by the {info.name} backend; use {' or '.join(info.precisions)}")
    if kind not in usable:
        hint = f"; {info.no_device_hint()}" if info.no_device_hint is not None else ""
        raise BackendError(
            f"device {device!r} is not usable by the {info.name} backend here (it finds: {', '.join(usable) or 'none'}){hint}"
        )
    return device


def _resolve_precision(info: BackendInfo, device: str, precision: str | None) -> str:
    kind = device.partition(":")[0]
    offered = info.precisions_here(kind)
    if precision is None:
        return offered[0]
    if precision not in offered:
        declared = info.precisions.get(kind, ())
        need = CPU_NEEDS.get(precision) if kind == "cpu" and precision in declared else None
        why = f" ({need.missing})" if need is not None else ""
        raise BackendError(
            f"the {info.name} backend cannot run {precision} on {kind}{why}; it runs {', '.join(offered)} there"
        )
    return precision


def resolve(name: str, device: str | None = None, precision: str | None = None) -> tuple[BackendInfo, str, str]:
    """The backend ``name`` (or the one auto picks), and the device and precision it runs here,
    each checked once, before any model loads: its packages are installed, the device is usable and
    the backend runs the precision there. Constructors take the two as given."""
    if name == AUTO:
        choice = choose_auto(device, precision)
        log.info("backend auto: picked %s", choice.explain())
        name, device = choice.backend, choice.device
    info = backend_info(name)
    missing = info.missing_packages()
    if missing:
        raise BackendError(f"the {name} backend needs {', '.join(missing)}, which is not installed; install it with: {info.install_advice()}")
    device = _resolve_device(info, device)
    resolved = _resolve_precision(info, device, precision)
    if precision is None and device == "cpu" and info.precisions["cpu"][0] in CPU_NEEDS:  # a default that depends on the CPU
        log.info("%s on cpu: precision %s", info.name, default_precision_reason(info, resolved))
    return info, device, resolved


def default_precision_reason(info: BackendInfo, resolved: str) -> str:
    """Why ``resolved`` is ``info``'s CPU precision here when none was asked for (its declared
    default needs CPU units, CPU_NEEDS)."""
    declared = info.precisions["cpu"][0]
    if resolved == declared:
        others = "/".join(p for p in info.precisions_here("cpu") if p != resolved)
        return f"{resolved}, its default on a CPU with bf16 units, as this one (--precision {others} on request)"
    return f"{resolved}, because {CPU_NEEDS[declared].missing} (it runs {declared} where they are)"


def check_backend_options(info: BackendInfo, options: Mapping[str, Any]) -> None:
    """A name in ``options`` that no backend declares (BACKEND_OPTIONS) is a one-line error naming
    the options of ``info``'s backend."""
    unknown = [name for name in options if name not in BACKEND_OPTIONS]
    if unknown:
        takes = ", ".join(info.backend_options()) or "none"
        raise BackendError(
            f"unknown backend option {', '.join(map(repr, unknown))}; the {info.name} backend's options: {takes}"
        )


def create_backend(
    name: str,
    paths: "ModelPaths",
    device: str | None = None,
    precision: str | None = None,
    engine_dir: Path | None = None,
    build_progress: Callable[..., None] | None = None,
    **options: Any,
) -> "Backend":
    """Build the backend ``name`` (or the one auto picks) on the device and precision
    :func:`resolve` checks. ``engine_dir``: the ONNX cache; ``build_progress``: told how its build
    goes, by the backends that build one (the others need none); ``options``: switches of
    BACKEND_OPTIONS (``trt_provider``: ONNX Runtime through its TensorRT provider; ``cuda_graphs``:
    torch replays the UNet step from a CUDA graph), each passed only to a backend that declares it."""
    info, device, precision = resolve(name, device, precision)
    check_backend_options(info, options)
    given: dict[str, Any] = {
        "device": device, "precision": precision, "engine_dir": engine_dir,
        **{k: v for k, v in options.items() if v is not False},  # False, like None: not asked for
    }
    # A switch of another backend (--trt-provider when auto picked torch) is said and left out.
    ignored = [k for k, v in given.items() if v is not None and k not in info.options]
    if ignored:
        log.warning("the %s backend takes no %s; ignoring it", info.name, ", ".join(ignored))
    given["build_progress"] = build_progress
    module_name, _, class_name = info.target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(paths, **{k: v for k, v in given.items() if k in info.options and v is not None})
