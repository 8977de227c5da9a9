"""What an ONNX cache build reports while it runs: the engine, the stage and an estimate of the time left.

The estimate weighs each engine by the bytes of the weights it is exported from (export time grows
with them: about 40 s per GB of fp32 weights on 2 cores, measured), and measures the rate on this
machine as engines finish; before the first one finishes it has no estimate. Imports nothing heavy.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildStatus:
    """One report of :func:`dynamicid_rt.export.build_engines`.

    ``stage`` is "checking", "reused", "built", or while building, the step under way ("loading
    weights", "tracing", "folding constants", "checking parity"...). ``done_bytes`` of
    ``total_bytes`` are the source weights of the engines finished or reused; ``seconds_left`` is
    None until the first built engine has given the rate."""

    engine: str
    index: int  # of the engine, from 0
    count: int
    stage: str
    done_bytes: int
    total_bytes: int
    seconds_left: float | None

    @property
    def time_left(self) -> str:
        """``seconds_left`` in words: "about 3 min 05 s left"."""
        if self.seconds_left is None:
            return "time left not known yet"
        minutes, secs = divmod(round(self.seconds_left), 60)
        return f"about {minutes} min {secs:02d} s left" if minutes else f"about {secs} s left"


BuildProgress = Callable[[BuildStatus], None]


class StageClock:
    """The seconds of each stage of one engine's export (``seconds``, by key), and ``on_stage`` told
    each stage's words as it starts (stages without words are timed only)."""

    def __init__(self, on_stage: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self._on_stage = on_stage

    @contextmanager
    def stage(self, key: str, words: str | None = None) -> Iterator[None]:
        if self._on_stage is not None and words is not None:
            self._on_stage(words)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = time.perf_counter() - started


class BuildTracker:
    """Turns the builder's events into :class:`BuildStatus` reports and INFO log lines (which the
    desktop shows as its loading activity)."""

    def __init__(self, weights: Mapping[str, int], to_build: set[str], progress: BuildProgress | None) -> None:
        self.names = list(weights)
        self.weights = dict(weights)
        self.to_build = to_build
        self.progress = progress
        self.done_bytes = 0
        self.built_bytes = 0
        self.built_seconds = 0.0
        self._started: float | None = None

    def _seconds_left(self, engine: str) -> float | None:
        if not self.built_bytes:
            return None
        left = sum(self.weights[n] for n in self.to_build)
        elapsed = time.perf_counter() - self._started if self._started is not None else 0.0
        rate = self.built_seconds / self.built_bytes
        return max(0.0, left * rate - (elapsed if engine in self.to_build else 0.0))

    def report(self, engine: str, stage: str) -> None:
        if stage == "building":
            self._started = time.perf_counter()
        status = BuildStatus(
            engine, self.names.index(engine), len(self.names), stage, self.done_bytes, sum(self.weights.values()),
            self._seconds_left(engine),
        )
        if engine in self.to_build and stage != "checking":
            log.info("%s (engine %d/%d): %s, %s", engine, status.index + 1, status.count, stage, status.time_left)
        if self.progress is not None:
            self.progress(status)

    def finished(self, engine: str, built: bool) -> None:
        """``engine`` is done: reused from the cache, or built (which measures the rate)."""
        self.done_bytes += self.weights[engine]
        if built and self._started is not None:
            self.built_seconds += time.perf_counter() - self._started
            self.built_bytes += self.weights[engine]
        self.to_build.discard(engine)
        self._started = None
        self.report(engine, "built" if built else "reused")
