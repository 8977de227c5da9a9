"""Static-shape graph files for OpenVINO, one per input shape, beside an ONNX cache entry's weights.

OpenVINO compiles the sized engines (UNet, VAE decoder) per input shape. Compiled from a model
object (``read_model`` + ``reshape``), its model cache must hash the whole model, weights
included, to find the compiled plan: the UNet's 3.5 GB are read at every start (4 s from the page
cache, 10 s from disk, measured), and they stay in memory beside the plan. Compiled from a file,
it keys the cache by the file's path, size and modification time and imports the plan without
reading the graph. So each shape gets a graph file of its own: the entry's graph proto with the
input dimensions fixed (1.4 MB for the UNet), in ``<entry>/openvino/graphs/``, whose external
weights are hard links to the entry's own files (OpenVINO reads external data only from the
graph's folder; a link costs no space).

A graph file is trusted only while graphs.json records its SHA-256 (1.4 MB, hashed at each use),
the SHA-256 of the entry graph it was made from, and links that are the entry's files; else it is
written again, with the reason logged. The entry itself is validated by the ONNX cache before
this runs. Where the file system has no hard links or the cache cannot be written,
:func:`static_graph` returns None and the caller reshapes a model object. Imports ``onnx`` only to write a graph, never torch.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from dynamicid_rt.errors import OutputError
from dynamicid_rt.export.store import build_lock, check_file, file_record, read_manifest, write_manifest
from dynamicid_rt.files.atomic import atomic_write

if TYPE_CHECKING:
    from dynamicid_rt.export.cache import CacheEntry

log = logging.getLogger(__name__)

MANIFEST = "graphs.json"

Shapes = Mapping[str, tuple[int, ...]]


def graph_name(shapes: Shapes) -> str:
    """``static-<digest>``: the file stem of one set of input shapes (also names its plan folder)."""
    text = json.dumps({name: list(shape) for name, shape in sorted(shapes.items())})
    return "static-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def static_graph(entry: "CacheEntry", shapes: Shapes) -> Path | None:
    """The graph file of ``entry`` with ``shapes`` fixed, checked or written now; None where it
    cannot be written (no hard links on this file system, a read-only or full cache folder)."""
    folder = entry.path / "openvino" / "graphs"
    name = graph_name(shapes)
    source = entry.graph_sha256
    problem = _check(folder, name, source)
    if not problem:
        return folder / f"{name}.onnx"
    try:
        with build_lock(folder.parent, "graphs"):
            problem = _check(folder, name, source)  # another process may have written it meanwhile
            if not problem:
                return folder / f"{name}.onnx"
            if problem != "absent":
                log.warning("%s: OpenVINO's static graph %s: %s; writing it again", entry.engine, name, problem)
                for plans in (entry.path / "openvino").glob(f"*/{name}"):  # keyed by the old file: never imported again
                    shutil.rmtree(plans, ignore_errors=True)
            record = _write(entry, folder, name, shapes)
            manifest, _ = read_manifest(folder / MANIFEST, "graphs") if (folder / MANIFEST).is_file() else (None, "")
            graphs = dict(manifest["graphs"]) if manifest else {}
            graphs[name] = record
            write_manifest(folder / MANIFEST, {"graphs": graphs})
    except (OSError, OutputError) as exc:  # reshaping a model object writes nothing: slower, never wrong
        why = "no hard links" if isinstance(exc, OSError) and _no_hard_links(exc) else "cannot write there"
        log.log(logging.INFO if why == "no hard links" else logging.WARNING,
                "%s: OpenVINO's static graph in %s: %s (%s); reshaping the graph at each start instead", entry.engine, folder, why, exc)
        return None
    return folder / f"{name}.onnx"


def _check(folder: Path, name: str, source: str) -> str:
    """Empty when ``name`` can be used as it is, ``"absent"`` when it was never written, else why not."""
    path = folder / MANIFEST
    if not path.is_file():
        return "absent"
    manifest, why = read_manifest(path, "graphs")
    if manifest is None:
        return why
    record = manifest["graphs"].get(name)
    if not isinstance(record, dict):
        return "absent"
    if record.get("source_sha256") != source:
        return "it was made from another graph of this engine"
    problem = check_file(folder / f"{name}.onnx", record, f"{name}.onnx", verify=True)
    if problem:
        return problem
    for link in record.get("links", []):
        here, there = folder / link, folder.parent.parent / link
        if not (here.is_file() and there.is_file() and os.path.samefile(here, there)):
            return f"its weights file {link} is not the entry's"
    return ""


def _write(entry: "CacheEntry", folder: Path, name: str, shapes: Shapes) -> dict[str, Any]:
    import onnx

    graph = onnx.load(str(entry.onnx), load_external_data=False)
    for value in graph.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    links = sorted({kv.value for tensor in graph.graph.initializer for kv in tensor.external_data if kv.key == "location"})
    folder.mkdir(parents=True, exist_ok=True)
    for link in links:
        _link(entry.path / link, folder / link)
    path = folder / f"{name}.onnx"
    with atomic_write(path) as f:
        f.write(graph.SerializeToString())
    record = file_record(path)
    return record | {"source_sha256": entry.graph_sha256, "links": links,
                     "shapes": {n: list(s) for n, s in shapes.items()}}


def _link(target: Path, link: Path) -> None:
    """``link`` as a hard link to ``target``, replacing whatever ``link`` was."""
    if link.is_file() and os.path.samefile(link, target):
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    os.link(target, tmp)
    os.replace(tmp, link)


def _no_hard_links(exc: OSError) -> bool:
    return exc.errno in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)
