"""Checkpoint readers (SPEC §2): SAA, IMR and keypoint-encoder files, `.bin` or `.safetensors`.

Readers return plain ``{key: torch.Tensor}`` dicts and never build modules; the modules in
``dynamicid_rt.models`` read their sizes from the tensor shapes. Pickles are untrusted input and are
loaded with ``weights_only=True``.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ..errors import CheckpointError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Section names of an SAA checkpoint: the release's and the IP-Adapter convention.
PROJECTOR_SECTIONS = ("proj_module", "image_proj")
PROCESSOR_SECTIONS = ("SAA_module", "ip_adapter")


def load_tensor_file(path: str | Path) -> dict:
    """Read a ``.safetensors`` or torch pickle (``.bin``/``.pt``/``.pth``) file into a dict.

    Nested dicts are kept as they are (a torch pickle may hold ``{"proj_module": {...}}``).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(_unreadable(path, exc)) from exc
        # weights_only refused a pickle that would build arbitrary objects (or run code).
        raise CheckpointError(
            f"refusing to load {path}: the pickle holds objects other than tensors ({_refusal_reason(exc)}); "
            "pickles are untrusted input and are only read with weights_only=True. Save the weights as "
            ".safetensors or as a plain dict of tensors"
        ) from exc
    except Exception as exc:  # corrupt, truncated or not a checkpoint at all
        raise CheckpointError(_unreadable(path, exc)) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    return unwrap_state(dict(obj), path)


# Where training scripts put the weights: Lightning and most trainers under "state_dict", others
# under "model" / "module"; DataParallel / DDP prefix every key with "module.".
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module")
_PARALLEL_PREFIX = "module."


def unwrap_state(state: dict, path: Path) -> dict:
    """The weights of a training checkpoint's wrapper (``{"state_dict": {...}, "epoch": ...}``)
    and without DataParallel's ``module.`` key prefix, each said in one log line."""
    for wrapper in _WRAPPERS:
        inner = state.get(wrapper)
        if isinstance(inner, Mapping) and not any(hasattr(v, "shape") for v in state.values()):
            log.info("%s: reading the weights under %r (a training checkpoint's wrapper)", path.name, wrapper)
            state = dict(inner)
            break
    keys = [k for k in state if isinstance(k, str)]
    if keys and len(keys) == len(state) and all(k.startswith(_PARALLEL_PREFIX) for k in keys):
        log.info("%s: dropping the %r prefix of every key (saved from DataParallel)", path.name, _PARALLEL_PREFIX)
        state = {k[len(_PARALLEL_PREFIX):]: v for k, v in state.items()}
    return {k: (_strip_parallel(v) if isinstance(v, Mapping) else v) for k, v in state.items()}


def _strip_parallel(section: Mapping) -> dict:
    """A section (``SAA_module``...) whose keys all carry DataParallel's prefix, without it."""
    keys = list(section)
    if keys and all(isinstance(k, str) and k.startswith(_PARALLEL_PREFIX) for k in keys):
        return {k[len(_PARALLEL_PREFIX):]: v for k, v in section.items()}
    return dict(section)


def _unreadable(path: Path, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"cannot read checkpoint {path} ({type(exc).__name__}: {first}); "
        "the file may be truncated or not a .bin/.safetensors checkpoint: download it again"
    )


def _refusal_reason(exc: Exception) -> str:
    """The one line of torch's weights_only refusal that names the offending object."""
    for line in str(exc).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(" was not", 1)[0]
    return type(exc).__name__


def _unflatten_sections(flat: Mapping, sections: tuple[str, ...]) -> dict:
    """Split ``{"section.key": t}`` (how safetensors stores nested dicts) into ``{"section": {key: t}}``."""
    out: dict = {}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head in sections and rest:
            out.setdefault(head, {})[rest] = value
        else:
            out[key] = value
    return out


@dataclass
class SAACheckpoint:
    """The two parts of an SAA checkpoint; ``projector`` is None when the file lacks it.

    ``found`` describes the file's top-level keys (sections with their sizes), for error messages.
    """

    processors: dict[str, "torch.Tensor"]
    projector: dict[str, "torch.Tensor"] | None
    path: Path
    found: str = ""


def _describe(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:8])
    return f"{shown}{', ...' if len(keys) > 8 else ''} ({len(keys)} keys)"


def read_saa_checkpoint(path: str | Path) -> SAACheckpoint:
    """Read an SAA checkpoint in either layout of SPEC §2.

    The processors live under ``SAA_module`` (or ``ip_adapter``) with keys ``"{i}.{param}"``; the
    projector under ``proj_module`` (or ``image_proj``) and may be missing.
    """
    path = Path(path)
    raw = _unflatten_sections(load_tensor_file(path), PROJECTOR_SECTIONS + PROCESSOR_SECTIONS)
    processors = next((raw[s] for s in PROCESSOR_SECTIONS if isinstance(raw.get(s), Mapping)), None)
    projector = next((raw[s] for s in PROJECTOR_SECTIONS if isinstance(raw.get(s), Mapping)), None)
    if processors is None:
        raise CheckpointError(
            f"{path} is not an SAA checkpoint: expected a section {' or '.join(PROCESSOR_SECTIONS)} "
            f"with keys like '1.to_k_ip.weight'; found top-level keys {_describe(raw.keys())}"
        )
    found = ", ".join(
        f"{k} ({len(v)} keys)" if isinstance(v, Mapping) else k for k, v in sorted(raw.items())[:12]
    ) + (", ..." if len(raw) > 12 else "")
    return SAACheckpoint(dict(processors), dict(projector) if projector is not None else None, path, found)


def read_projector_checkpoint(path: str | Path) -> dict[str, "torch.Tensor"]:
    """Read a face-projector state dict: an SAA file with a projector section, or a plain state dict."""
    path = Path(path)
    raw = _unflatten_sections(load_tensor_file(path), PROJECTOR_SECTIONS + PROCESSOR_SECTIONS)
    for section in PROJECTOR_SECTIONS:
        if isinstance(raw.get(section), Mapping):
            return dict(raw[section])
    if any(isinstance(raw.get(s), Mapping) for s in PROCESSOR_SECTIONS):
        raise CheckpointError(
            f"{path} holds SAA processors but no face projector (no {' or '.join(PROJECTOR_SECTIONS)} "
            f"section; found {_describe(raw.keys())}). Some releases ship the projector separately: "
            "pass that file as the projector checkpoint."
        )
    if not any(k.startswith("perceiver_resampler.") for k in raw):
        raise CheckpointError(
            f"{path} is not a face-projector checkpoint: expected keys 'proj.0.weight', "
            f"'perceiver_resampler.*'; found {_describe(raw.keys())}"
        )
    return raw


def read_state_dict(path: str | Path, what: str, required_prefixes: tuple[str, ...]) -> dict[str, "torch.Tensor"]:
    """Read a plain state dict (IMR, keypoint encoder) and check it looks like ``what``."""
    path = Path(path)
    raw = load_tensor_file(path)
    bad = [k for k, v in raw.items() if not hasattr(v, "shape")]
    if bad or not all(any(k.startswith(p) for k in raw) for p in required_prefixes):
        raise CheckpointError(
            f"{path} is not the expected {what} checkpoint: expected keys starting with "
            f"{', '.join(repr(p) for p in required_prefixes)}; found {_describe(raw.keys())}"
        )
    return raw


def check_keys(state: Mapping[str, object], expected: Mapping[str, tuple[int, ...]], what: str, path: Path | str) -> None:
    """Raise a CheckpointError listing missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: {_shape_of(state[k])} (expected {tuple(expected[k])})"
        for k in expected
        if k in state and _shape_of(state[k]) != tuple(expected[k])
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected {_describe(unexpected)}")
        if wrong:
            parts.append("wrong shapes " + "; ".join(wrong[:5]))
        raise CheckpointError(f"{what} checkpoint {path} does not fit: " + " | ".join(parts))


def _shape_of(value: object) -> tuple[int, ...] | str:
    # A non-tensor value (a weights_only pickle may hold ints or strings) never matches a shape.
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else f"{type(value).__name__} value, not a tensor"
