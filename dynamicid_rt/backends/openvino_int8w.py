"""The OpenVINO backend's ``int8w`` precision: the UNet's weights compressed to 8 bits by NNCF.

NNCF's data-free ``compress_weights`` in its default INT8_ASYM mode stores each weight of the
UNet's MatMuls and convolutions as u8 with a per-output-channel scale and zero point; OpenVINO's
CPU plugin decompresses them inside the kernels, so activations stay f32 and the weights read
from memory are a quarter of the fp32 ones. The other engines run once per request and stay f32.

Compressing the full-size UNet takes a while, so the compressed model is kept as OpenVINO IR in
the engine's cache entry (``<entry>/int8w``), beside the ONNX graph it comes from. It is written
in a temporary folder, its manifest last, and renamed into place under a lock, as the ONNX entries
are; its manifest names the source graph's SHA-256, the NNCF version and the mode, and the SHA-256
of each file. A later start reads the IR without importing NNCF (a 4 s import); one that does not
match its manifest is compressed again, with the reason logged.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from ..errors import BackendError
from ..files.stamps import first_mismatch, sha256_file

if TYPE_CHECKING:
    import openvino as ov

    from dynamicid_rt.export.cache import CacheEntry

log = logging.getLogger(__name__)

INT8W_ENGINES = frozenset({"unet"})
MODE = "int8_asym"  # nncf.CompressWeightsMode.INT8_ASYM, compress_weights' default
FOLDER = "int8w"
MANIFEST = "manifest.json"
MODEL_XML, MODEL_BIN = "model.xml", "model.bin"
FORMAT_VERSION = 1


def nncf_version() -> str:
    """The installed NNCF's version, read without importing it; a BackendError without NNCF."""
    try:
        return metadata.version("nncf")
    except metadata.PackageNotFoundError:
        raise BackendError("precision int8w needs NNCF, which is not installed: pip install 'dynamicid-rt[openvino]'") from None


def compressed_model(core: "ov.Core", entry: "CacheEntry") -> "ov.Model":
    """The UNet of ``entry`` with int8 weights: read from the cached IR when it is valid, else
    compressed from the entry's ONNX graph and cached (where the entry can be written)."""
    folder = entry.path / FOLDER
    expected = _expected(entry)
    with FileLock(str(entry.path / f".lock-{FOLDER}")):  # one compressor per entry across processes
        why = _problem(folder, expected)
        if why is None:
            return core.read_model(str(folder / MODEL_XML))
        for left in [*entry.path.glob(f".building-{FOLDER}-*"), *entry.path.glob(f".old-{FOLDER}-*")]:
            shutil.rmtree(left, ignore_errors=True)  # under the lock, no other build is running: left by a killed one
        if folder.exists():
            log.info("%s: compressing the int8w weights again (%s)", entry.engine, why)
        started = time.perf_counter()
        model = _compress(core.read_model(str(entry.onnx)))
        log.info("%s: weights compressed to int8 (NNCF %s) in %.1f s", entry.engine, expected["nncf"], time.perf_counter() - started)
        try:
            _write(model, folder, expected)
        except OSError as exc:  # a read-only or full cache still runs, it compresses again next time
            log.warning("%s: the int8w model is not cached in %s (%s)", entry.engine, folder, exc)
        return model


def _expected(entry: "CacheEntry") -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "source_sha256": entry.graph_sha256,
        "nncf": nncf_version(),
        "mode": MODE,
    }


def _problem(folder: Path, expected: dict[str, Any]) -> str | None:
    """Why the cached IR in ``folder`` cannot be used, or None when it can."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = {name: (int(info["size"]), str(info["sha256"])) for name, info in manifest["files"].items()}
    except FileNotFoundError:
        return "not built yet"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"manifest is unreadable ({type(exc).__name__})"
    changed = next((key for key, want in expected.items() if manifest.get(key) != want), None)
    if changed is not None:
        return f"{changed} changed ({manifest.get(changed)} -> {expected[changed]})"
    for name in (MODEL_XML, MODEL_BIN):
        path = folder / name
        if name not in files or not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != files[name][0]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {files[name][0]} (truncated or corrupt)"
    bad = first_mismatch(folder, {name: digest for name, (_, digest) in files.items()})
    return None if bad is None else f"{bad} does not match its SHA-256 in the manifest (corrupt)"


def _compress(model: "ov.Model") -> "ov.Model":
    import nncf

    # NNCF reports on stdout (a table through its logger, a progress bar through rich); a library
    # keeps stdout for its caller: the table is dropped, the progress bar goes to stderr.
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    finally:
        nncf_log.setLevel(level)


def _write(model: "ov.Model", folder: Path, expected: dict[str, Any]) -> None:
    import openvino as ov

    tmp = folder.with_name(f".building-{FOLDER}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        ov.save_model(model, str(tmp / MODEL_XML), compress_to_fp16=False)  # the scales stay as NNCF made them
        files = {name: {"size": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)} for name in (MODEL_XML, MODEL_BIN)}
        # The manifest is written last: without it the folder is never taken for a valid model.
        (tmp / MANIFEST).write_text(json.dumps(expected | {"files": files}, indent=1, sort_keys=True))
        if folder.exists():  # a folder cannot be replaced atomically when not empty: the old one goes first
            old = folder.with_name(f".old-{FOLDER}-{uuid.uuid4().hex[:8]}")
            os.replace(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
