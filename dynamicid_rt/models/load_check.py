"""The check ``inspect``, ``doctor`` and ``models pull`` end with: every engine's module built by
the very loader ``generate`` uses (the contract's ``EngineSpec.loader``), one at a time, so no part
is "usable" in one command and refused by another. Needs torch (the export does); without it the
folder checks of :mod:`.preflight` are all there is, and the report says so."""
from __future__ import annotations

import gc
import importlib.util
import logging

from ..errors import DynamicIDError
from ..modelfiles.paths import ModelPaths

log = logging.getLogger(__name__)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def load_problems(paths: ModelPaths) -> list[str]:
    """One line per engine whose module does not load from this folder (empty: all load)."""
    if not torch_available():
        return []
    import torch

    from ..contract import ENGINES
    from . import load_engine_module

    out = []
    for name in ENGINES:
        if not paths.provides(name):
            continue
        try:
            with torch.no_grad():
                module = load_engine_module(paths, name, torch.float32, "cpu")
            del module
        except DynamicIDError as exc:
            out.append(f"{name}: {exc}")
        except Exception as exc:  # a loader's unexpected failure is still one line, never a traceback
            log.debug("loading %s failed", name, exc_info=True)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            out.append(f"{name}: does not load ({type(exc).__name__}: {first})")
        finally:
            gc.collect()  # one engine's weights at a time (the UNet alone is 3.4 GB in fp32)
    return out
