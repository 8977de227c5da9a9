"""OpenVINO's model cache inside an ONNX cache entry (``<entry>/openvino/<precision>/``), verified.

OpenVINO writes a compiled plan there as ``<hash>.blob`` and imports it on the next start. A
damaged blob is not reported by OpenVINO: it compiles again in silence. So, as every cache of this
project, the folder gets a manifest (``blobs.json``: size, modification time and SHA-256 of each
blob, written after a compile); before the next compile a blob that no longer matches is removed
with the reason logged, and one the manifest does not list is left to OpenVINO. Imports neither
OpenVINO nor torch.
"""
from __future__ import annotations

import logging
from pathlib import Path

from dynamicid_rt.export.store import check_file, file_record, read_manifest, write_manifest

log = logging.getLogger(__name__)

MANIFEST = "blobs.json"


def check_blobs(folder: Path, engine: str) -> None:
    """Remove each blob of ``folder`` that does not match the manifest, saying why."""
    path = folder / MANIFEST
    if not path.is_file():
        return
    manifest, why = read_manifest(path, "blobs")
    if manifest is None:
        log.warning("%s: OpenVINO's model cache in %s: %s; compiling again", engine, folder, why)
        for blob in folder.glob("*.blob"):
            blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        return
    for name, record in manifest["blobs"].items():
        blob = folder / name
        problem = check_file(blob, record, f"the compiled plan {name}") if blob.exists() else ""
        if problem:
            log.warning("%s: %s in OpenVINO's model cache (%s); compiling again", engine, problem, folder)
            blob.unlink(missing_ok=True)


def record_blobs(folder: Path) -> None:
    """Write the manifest of the blobs ``folder`` holds now (after a compile wrote or imported one)."""
    if not folder.is_dir():
        return
    path = folder / MANIFEST
    old, _ = read_manifest(path, "blobs") if path.is_file() else (None, "")
    known = old["blobs"] if old is not None else {}
    blobs = {}
    for blob in sorted(folder.glob("*.blob")):
        record = known.get(blob.name)
        stat = blob.stat()
        unchanged = record is not None and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns
        blobs[blob.name] = record if unchanged else file_record(blob)
    if blobs != known:
        write_manifest(path, {"blobs": blobs})


def drop_unkeyed_blobs(folder: Path, engine: str) -> None:
    """Remove the blobs directly in a sized engine's ``folder``: plans an earlier release compiled
    from a reshaped model object, before each shape had a graph file and a plan folder of its own
    (``openvino_graphs.py``); no start imports them any more."""
    blobs = list(folder.glob("*.blob"))
    if not blobs:
        return
    size = sum(b.stat().st_size for b in blobs)
    for blob in blobs:
        blob.unlink(missing_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    log.info("%s: removed %d compiled plan(s) of the earlier OpenVINO cache layout from %s (%.1f GB)",
             engine, len(blobs), folder, size / 1e9)
