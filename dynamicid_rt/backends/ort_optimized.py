"""ONNX Runtime's own optimized graph of an engine, kept so that a warm CPU start skips optimizing.

Creating the full-size UNet's CPU session is mostly graph optimization: 5.8-8.4 s from the
exported graph, 1.3 s from a graph ONNX Runtime optimized before (measured at full size). ONNX
Runtime saves the graph it optimized when asked (``optimized_model_filepath``, its offline
mode); loaded with optimizations off, that graph computes bit for bit what the saving session
computes (``tests/test_warm_start.py``). It is specific to the machine (the layout
optimizations of ``ORT_ENABLE_ALL`` choose the CPU's vector width) and to the ONNX Runtime
version, so it is kept under a key of both and of the source graph's SHA-256, in
``<entry>/onnxruntime/cpu-<key>/``: a verified folder entry like the ONNX cache's own
(``export/store.py``: built aside, manifest last, SHA-256 with stamps, one builder at a time).
A key that no longer fits (another ONNX Runtime, another CPU) is replaced, so each entry holds
one optimized copy (the UNet's is 3.5 GB). Only for the CPU provider: the GPU providers'
optimized graphs would be tied to their device as well, and their sessions are made rarely.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from dynamicid_rt.errors import OutputError
from dynamicid_rt.export.store import MANIFEST, build_folder, build_lock, check_files, read_manifest

from .probes import cpu_flags, cpu_model

if TYPE_CHECKING:
    import onnxruntime as ort

    from dynamicid_rt.export.cache import CacheEntry

log = logging.getLogger(__name__)

OPTIMIZED = "model.onnx"
SessionMaker = Callable[[Path, "ort.SessionOptions"], "ort.InferenceSession"]
OptionsMaker = Callable[[], "ort.SessionOptions"]


def optimized_key(entry: "CacheEntry") -> str:
    """``cpu-<digest>`` of what the optimized graph depends on: the source graph, ONNX Runtime's
    version, and the CPU (its model and feature flags)."""
    import onnxruntime as ort

    facts = {
        "source_sha256": entry.graph_sha256,
        "onnxruntime": ort.__version__,
        "cpu": cpu_model(),
        "flags": sorted(cpu_flags()),
    }
    return "cpu-" + hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def cpu_session(entry: "CacheEntry", new_options: OptionsMaker, make: SessionMaker) -> "ort.InferenceSession":
    """A CPU session on ``entry``: from its stored optimized graph when that is valid, else from
    the entry's graph, optimized as ``new_options()`` says and stored for the next start.
    ``make(graph, options)`` creates a session (the backend's error handling around ONNX Runtime)."""
    import onnxruntime as ort

    folder, name = entry.path / "onnxruntime", optimized_key(entry)
    session = _stored(entry, folder / name, new_options(), make)
    if session is not None:
        return session
    made: list["ort.InferenceSession"] = []

    def fill(tmp: Path) -> dict:
        options = new_options()
        options.optimized_model_filepath = str(tmp / OPTIMIZED)
        # ONNX Runtime warns, on every save, that the graph holds optimizations for this CPU: that is
        # why the copy is keyed by CPU (optimized_key); errors still show.
        options.log_severity_level = 3
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{OPTIMIZED}.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        made.append(make(entry.onnx, options))
        return {"format": "onnxruntime-optimized", "onnxruntime": ort.__version__, "key": name,
                "source_sha256": entry.graph_sha256}

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with build_lock(folder, name):
            session = _stored(entry, folder / name, new_options(), make)  # another process may have built it
            if session is not None:
                return session
            for other in folder.glob("cpu-*"):  # another ONNX Runtime or CPU: one optimized copy per entry
                log.info("%s: replacing ONNX Runtime's optimized graph %s (made by another ONNX Runtime or CPU)", entry.engine, other.name)
                shutil.rmtree(other, ignore_errors=True)
            build_folder(folder, name, fill)
    except (OSError, OutputError, *_load_errors()) as exc:
        # A read-only or full cache (ONNX Runtime reports a failed save as its own error): this start
        # optimizes in memory, and so will the next. A fault of the graph itself recurs in make().
        log.warning("%s: ONNX Runtime's optimized graph cannot be stored in %s (%s); optimizing at each start", entry.engine, folder, exc)
        return made[0] if made else make(entry.onnx, new_options())
    log.info("%s: stored ONNX Runtime's optimized graph in %s", entry.engine, folder / name)
    return made[0]


def _stored(entry: "CacheEntry", path: Path, options: "ort.SessionOptions", make: SessionMaker) -> "ort.InferenceSession | None":
    """The session on the stored optimized graph at ``path``, or None when there is none or it is
    damaged (then removed, with the reason logged)."""
    import onnxruntime as ort

    if not (path / MANIFEST).is_file():
        return None
    manifest, problem = read_manifest(path / MANIFEST, "files")
    if manifest is not None:
        problem = check_files(path, manifest["files"])
    if not problem:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimized already
        try:
            return make(path / OPTIMIZED, options)
        except _load_errors() as exc:
            problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    log.warning("%s: ONNX Runtime's optimized graph in %s: %s; optimizing the graph again", entry.engine, path, problem)
    shutil.rmtree(path, ignore_errors=True)
    return None


def _load_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises for a stored graph it cannot load (truncated, overwritten)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (state.InvalidProtobuf, state.InvalidGraph, state.NoSuchFile, state.Fail, state.RuntimeException)
