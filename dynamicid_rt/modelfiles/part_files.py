"""Which files the loader of each model part reads, by one rule, whatever else the folder holds.

Real repos ship more than the runtime reads: SD1.5's ``unet/`` holds six weight files (fp32 and
fp16, ``.safetensors`` and ``.bin``, EMA and non-EMA), laion's CLIP folder the open_clip files
beside transformers' ones. One rule picks the weights of a part (:func:`choose_weights`): full
precision before a variant (``fp16`` first among variants), ``.safetensors`` before ``.bin``, and
the loader reads exactly that file (or its shards). :func:`part_files` lists those files: they are
the sources of an engine (its cache key) and the files the checks before any work read.

No torch here: this runs on every start, on the onnxruntime and OpenVINO paths too.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFolderError

# The weight file stems of each library: diffusers names its weights differently from transformers.
DIFFUSERS = ("diffusion_pytorch_model",)
TRANSFORMERS = ("model", "pytorch_model")
_WEIGHT = re.compile(r"(?P<stem>diffusion_pytorch_model|model|pytorch_model)(?:\.(?P<variant>[A-Za-z0-9_]+))?\.(?P<ext>safetensors|bin)")
_INDEX = re.compile(r"(?P<stem>diffusion_pytorch_model|model|pytorch_model)\.(?P<ext>safetensors|bin)\.index(?:\.(?P<variant>[A-Za-z0-9_]+))?\.json")
DIFFUSERS_PARTS = ("unet", "vae", "taesd")  # the parts diffusers loads (the base's unet/vae, taesd/)
TRANSFORMERS_PARTS = ("text_encoder", "image_encoder")  # the parts transformers loads
RULE = "full precision before variants (fp16 first), .safetensors before .bin"


@dataclass(frozen=True)
class WeightChoice:
    """The weights a part's loader reads: ``name`` in ``folder`` (an index for sharded weights,
    ``shards`` then lists its files), its ``variant`` (None, ``"fp16"``...), and the other weight
    files found there, which are not read."""

    folder: Path
    name: str
    variant: str | None
    safetensors: bool
    shards: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def files(self) -> list[Path]:
        return [self.folder / self.name] + [self.folder / s for s in self.shards]

    def describe(self) -> str:
        """e.g. ``diffusion_pytorch_model.fp16.safetensors (fp16 variant; not read: ...)``."""
        notes = [f"{self.variant} variant"] if self.variant else []
        if self.ignored:
            notes.append("not read: " + ", ".join(self.ignored))
        return self.name + (f" ({'; '.join(notes)})" if notes else "")


def rank_weight_names(names: list[str], stems: tuple[str, ...], prefer: str | None = None) -> list[tuple[str, str | None, bool]]:
    """``(name, variant, safetensors)`` of the weight files and indexes of ``stems`` among
    ``names``, best first by :data:`RULE`; ``prefer``: a variant ranked before full precision
    (``models pull --fp16``). Used on a folder (what to read) and on a repo listing (what to fetch)."""
    out = []
    for name in names:
        for pattern, is_index in ((_WEIGHT, False), (_INDEX, True)):
            match = pattern.fullmatch(name)
            if match is None or match["stem"] not in stems:
                continue
            variant = match["variant"]
            order = 0 if variant == prefer else 1 if variant is None else 2 if variant == "fp16" else 3
            out.append(((order, match["ext"] != "safetensors", is_index, name), name, variant, match["ext"] == "safetensors"))
    return [(name, variant, safe) for _, name, variant, safe in sorted(out)]


def _shards(index: Path) -> tuple[str, ...]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise ModelFolderError(f"weight index {index} is not a readable JSON object ({exc}); download it again") from exc
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelFolderError(f"weight index {index} has no weight_map of file names; download it again")
    names = tuple(sorted(set(weight_map.values())))
    bad = [n for n in names if Path(n).name != n or not (index.parent / n).is_file()]
    if bad:
        raise ModelFolderError(f"weight index {index} lists shard(s) that are not beside it: {', '.join(bad[:4])}; download them")
    return names


def choose_weights(folder: Path, stems: tuple[str, ...], what: str) -> WeightChoice:
    """The weights the loader of ``what`` reads in ``folder``, by :data:`RULE`; a one-line error
    naming what is there when nothing fits."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{what} folder {folder} is missing (expected a diffusers/transformers model folder)")
    found = rank_weight_names([p.name for p in folder.iterdir() if p.is_file() or p.is_symlink()], stems)
    if not found:
        others = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt", ".pth"))
        expected = f"{stems[0]}.safetensors or .bin" if stems == DIFFUSERS else "model.safetensors or pytorch_model.bin"
        raise ModelFolderError(
            f"{what} folder {folder} holds no weights the loader reads (expected {expected}, or a variant such as "
            f"{stems[0]}.fp16.safetensors); found {', '.join(others) if others else 'no weight files'}"
        )
    name, variant, safetensors = found[0]
    if not (folder / name).is_file():
        raise ModelFolderError(f"{folder / name} is a broken symlink or a symlink loop; point it at the real file")
    shards = _shards(folder / name) if name.endswith(".json") else ()
    ignored = tuple(n for n, _, _ in found[1:])
    return WeightChoice(folder, name, variant, safetensors, shards, ignored)


def part_files(paths, part: str) -> list[Path]:
    """The files the loader of one engine source reads (``EngineSpec.sources``: a ModelPaths
    field, or ``base/<name>``): config and chosen weights of a folder part, the file itself for a
    single-file part. Empty when an optional part is absent."""
    root = paths.source(part)
    if root is None:
        return []
    root = Path(root)
    if root.is_file():
        if part.startswith("base/") and paths.base_is_single_file and root == paths.base:
            return [root, *_single_file_configs(root, part.partition("/")[2])]
        return [root]
    if not root.is_dir():
        raise ModelFolderError(f"{part} needs {root}, which does not exist; check the model folder")
    name = part.rpartition("/")[2]
    if name not in DIFFUSERS_PARTS + TRANSFORMERS_PARTS:  # a folder of another kind (a registered engine's): all of it
        return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    choice = choose_weights(root, DIFFUSERS if name in DIFFUSERS_PARTS else TRANSFORMERS, part)
    return [root / "config.json", *choice.files]


def engine_files(paths, engine: str) -> list[Path]:
    """The files the loader of ``engine`` reads (its contract sources), in order."""
    from ..contract import engine_spec

    return list(dict.fromkeys(f for part in engine_spec(engine).sources for f in part_files(paths, part)))


def model_parts(paths) -> list[str]:
    """The engine sources this model folder has (a bare ``unet/`` base has only its UNet)."""
    from ..contract import ENGINES

    bare_unet = paths.base.name == "unet" and (paths.base / "config.json").is_file()
    parts = dict.fromkeys(p for name in ENGINES if paths.provides(name) for p in ENGINES[name].sources)
    return [p for p in parts if not (bare_unet and p.startswith("base/") and p != "base/unet" and paths.source(p) == paths.base)]


def model_files(paths) -> list[Path]:
    """Every file the engines this model folder provides are built from, once each."""
    return list(dict.fromkeys(f for part in model_parts(paths) for f in part_files(paths, part)))


def source_problems(paths) -> list[str]:
    """One line per engine source whose files the loader would not find (no weights it reads)."""
    out: list[str] = []
    for part in model_parts(paths):
        try:
            part_files(paths, part)
        except ModelFolderError as exc:
            out.append(str(exc))
    return list(dict.fromkeys(out))


def configs_beside(checkpoint: Path) -> Path | None:
    """The diffusers-layout folder of configs beside a single-file checkpoint (it holds
    ``unet/config.json``): beside the path given, or beside the file a link points to."""
    for folder in dict.fromkeys((Path(checkpoint).parent, Path(checkpoint).resolve().parent)):
        if (folder / "unet" / "config.json").is_file():
            return folder
    return None


def _single_file_configs(checkpoint: Path, name: str) -> list[Path]:
    """The config a single-file part is converted with, where it lies beside the file."""
    folder = configs_beside(checkpoint)
    config = folder / name / "config.json" if folder is not None else None
    return [config] if config is not None and config.is_file() else []


__all__ = ["DIFFUSERS", "RULE", "TRANSFORMERS", "WeightChoice", "choose_weights", "configs_beside", "engine_files", "model_files",
           "model_parts", "part_files", "rank_weight_names", "source_problems"]
