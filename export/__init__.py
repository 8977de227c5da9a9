"""ONNX export of the contract engines and the engine cache (`dynamicid-rt build-engines`).

Importing this package is light (no torch): reusing cached engines needs only the standard library
and numpy; torch and the exporter are imported when something has to be built.
"""
from .cache import CacheEntry, build_engines, default_engine_dir, find_entry
from .progress import BuildProgress, BuildStatus

__all__ = ["BuildProgress", "BuildStatus", "CacheEntry", "build_engines", "default_engine_dir", "find_entry"]
