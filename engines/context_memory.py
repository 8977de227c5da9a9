"""The execution contexts' scratch memory: one device block shared by every plan of a backend.

Plans run one at a time on one stream, so their contexts can share one block. It is sized per
request shape, not for the worst case: after a context's input shapes are set, the context says
how much it needs for them (``update_device_memory_size_for_shapes``, TensorRT-RTX and TensorRT
10.1+; older libraries only know the profile's worst case). The block only grows; when it grows,
every context is pointed at the new block and their CUDA graphs, which hold the old address, are
dropped and captured again on their next call. So a 512² request on an 8 GB card does not pay for
the profile's batch 8 at 1024².

At load, each plan's worst case (its profile maximum, ``device_memory_size_v2``) is compared with
the card's free memory (:func:`plans_that_fit`): a dynamic plan that cannot reach its own maximum
gives way to the static plans stored beside it, and an engine with no plan that fits is refused in
one line.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Mapping, Sequence

from dynamicid_rt.errors import DynamicIDError

from .cuda import DeviceBuffer

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger(__name__)

MiB = 2**20
MIN_BLOCK = 256  # bytes: a context that needs nothing still gets a real (256-byte aligned) address


class ContextMemoryError(DynamicIDError):
    """A plan's context memory cannot fit the GPU."""


class ContextMemory:
    """The shared block, grown on demand (never shrunk: shapes come back), and the contexts on it."""

    def __init__(self) -> None:
        self.buffer = DeviceBuffer()
        self.engines: list["Engine"] = []

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes

    def attach(self, engine: "Engine") -> None:
        self.engines.append(engine)

    def fit(self, engine: "Engine", nbytes: int) -> bool:
        """Make the block hold ``nbytes`` for ``engine``'s shapes and point ``engine`` at it;
        returns True when ``engine``'s memory moved (its CUDA graph is then gone)."""
        nbytes = max(nbytes, MIN_BLOCK)
        if nbytes > self.buffer.nbytes:
            old = self.buffer.nbytes
            self.buffer.ensure(nbytes)
            log.info("context memory grown %.0f -> %.0f MiB for %s", old / MiB, nbytes / MiB, engine.name)
            for other in self.engines:
                if other is not engine and other.memory_at is not None:
                    other.point_memory(self.buffer)
        if engine.memory_at != (self.buffer.ptr, self.buffer.nbytes):
            engine.point_memory(self.buffer)
            return True
        return False

    def free(self) -> None:
        self.buffer.free()
        self.engines.clear()


def plans_that_fit(
    engines: Mapping[str, Sequence["Engine"]], free: int, gpu_name: str, backend: str
) -> dict[str, list["Engine"]]:
    """Per engine, the loaded plans whose worst-case context memory fits ``free`` bytes (plans in
    preference order, the dynamic plan last). A dynamic plan that does not fit is dropped, with a
    log line, when a static plan of the engine fits; an engine none of whose plans fit raises
    :class:`ContextMemoryError` naming the free memory and the way out."""
    kept: dict[str, list["Engine"]] = {}
    for name, plans in engines.items():
        fitting = [p for p in plans if p.device_memory_size <= free]
        if not fitting:
            worst = max(plans, key=lambda p: p.device_memory_size)
            raise ContextMemoryError(
                f"{name}: the {backend} {worst.plan_path.stem} plan needs {worst.device_memory_size / MiB:.0f} MiB of "
                f"context memory at its largest shapes, but {gpu_name} has {free / MiB:.0f} MiB free; build static plans "
                f"for the size you use (dynamicid-rt build-engines --backend {backend} --static 512x512), or free GPU "
                "memory (close other GPU programs)"
            )
        for dropped in plans:
            if dropped not in fitting:
                log.warning(
                    "%s: the %s plan is not used: it needs %.0f MiB of context memory at its largest shapes, more than "
                    "the %.0f MiB free on %s (plans in use: %s)", name, dropped.plan_path.stem,
                    dropped.device_memory_size / MiB, free / MiB, gpu_name, ", ".join(p.plan_path.stem for p in fitting),
                )
        kept[name] = fitting
    return kept
