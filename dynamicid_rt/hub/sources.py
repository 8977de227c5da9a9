"""Where the release files come from (SPEC §3's table) and which files of each repo the runtime
reads: the same rule as the loaders (:mod:`.part_files`), applied to a repo's file listing, so
``models pull`` fetches exactly what will be read and nothing else (no safety checker, no unused
weight variant, no open_clip copy). Pure functions over names: no network, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..modelfiles.part_files import DIFFUSERS, TRANSFORMERS, rank_weight_names

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
LAION_CLIP_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
IP_ADAPTER_REPO = "h94/IP-Adapter"
IP_ADAPTER_ENCODER = "models/image_encoder"
DYNAMICID_REPO = "meteorite2023/DynamicID"
TAESD_REPO = "madebyollin/taesd"

# The tokenizer and scheduler files the pipeline reads from an SD1.5 repo.
_TEXT_FILES = ("tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
               "tokenizer/special_tokens_map.json", "scheduler/scheduler_config.json", "model_index.json")
_CHECKPOINTS = ("SAA", "IMR", "key_point_encoder")
_OPTIONAL_CHECKPOINTS = ("IMR", "key_point_encoder")


@dataclass(frozen=True)
class Source:
    """One part of the model folder: ``repo_id``'s files under ``subfolder`` become ``part``."""

    part: str  # the model folder's entry: base, image_encoder, dynamicid, taesd (tokenizer: beside a single file)
    repo_id: str
    subfolder: str = ""
    optional: bool = False


class SelectionError(ValueError):
    """The repo lacks a file the runtime reads (the message names it)."""


def _weights(names: list[str], folder: str, stems: tuple[str, ...], fp16: bool, repo_id: str) -> list[str]:
    """config.json and the one weights file (or index) the loader will read, in ``folder``."""
    prefix = f"{folder}/" if folder else ""
    local = [n[len(prefix):] for n in names if n.startswith(prefix) and "/" not in n[len(prefix):]]
    ranked = rank_weight_names(local, stems, prefer="fp16" if fp16 else None)
    if "config.json" not in local or not ranked:
        raise SelectionError(f"{repo_id} has no {'config.json' if 'config.json' not in local else 'weights'} in "
                             f"{folder or 'its top folder'}; it is not a {('diffusers' if stems == DIFFUSERS else 'transformers')} model")
    return [prefix + "config.json", prefix + ranked[0][0]]


def select_files(source: Source, names: list[str], fp16: bool = False) -> list[str]:
    """The files of ``source``'s repo (its listing ``names``) that the runtime reads; an index
    file's shards are added once it is fetched (:func:`shard_names`)."""
    repo = source.repo_id
    if source.part == "base":
        files = [n for n in _TEXT_FILES if n in names]
        missing = {"tokenizer/vocab.json", "tokenizer/merges.txt"} - set(files) if "tokenizer/tokenizer.json" not in files else set()
        if missing or "scheduler/scheduler_config.json" not in files:
            raise SelectionError(f"{repo} lacks the tokenizer or scheduler files of an SD1.5 diffusers repo")
        for part, stems in (("unet", DIFFUSERS), ("vae", DIFFUSERS), ("text_encoder", TRANSFORMERS)):
            files += _weights(names, part, stems, fp16, repo)
        return files
    if source.part == "tokenizer":  # beside a single-file base
        files = [n for n in _TEXT_FILES if n.startswith("tokenizer/") and n in names]
        if not {"tokenizer/vocab.json", "tokenizer/merges.txt"} <= set(files) and "tokenizer/tokenizer.json" not in files:
            raise SelectionError(f"{repo} has no CLIP tokenizer files in tokenizer/")
        return files
    if source.part in ("image_encoder", "taesd"):
        stems = TRANSFORMERS if source.part == "image_encoder" else DIFFUSERS
        files = _weights(names, source.subfolder, stems, fp16=False, repo_id=repo)
        extra = f"{source.subfolder}/preprocessor_config.json" if source.subfolder else "preprocessor_config.json"
        return files + ([extra] if extra in names else [])
    if source.part == "dynamicid":
        files = []
        for stem in _CHECKPOINTS:
            found = [n for n in (f"{stem}.safetensors", f"{stem}.bin") if n in names]  # .safetensors first, as read
            if found:
                files.append(found[0])
            elif stem not in _OPTIONAL_CHECKPOINTS:
                raise SelectionError(f"{repo} has no {stem}.bin or {stem}.safetensors")
        return files
    raise ValueError(f"unknown part {source.part!r}")


def default_sources(base: str | None = SD15_REPO, image_encoder: str = LAION_CLIP_REPO, taesd: bool = False) -> list[Source]:
    """The release sources (SPEC §3), the base or image encoder replaced where given; ``base=None``:
    a single-file base given locally, which needs SD1.5's tokenizer only."""
    sub = IP_ADAPTER_ENCODER if image_encoder == IP_ADAPTER_REPO else ""
    first = Source("base", base) if base is not None else Source("tokenizer", SD15_REPO, "tokenizer")
    sources = [first, Source("image_encoder", image_encoder, sub), Source("dynamicid", DYNAMICID_REPO)]
    return sources + ([Source("taesd", TAESD_REPO, optional=True)] if taesd else [])


def shard_names(index: dict, folder: str) -> list[str]:
    """The shard files a weight index lists, as repo paths."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise SelectionError("a weight index has no weight_map")
    prefix = f"{folder}/" if folder else ""
    return sorted({prefix + str(v) for v in weight_map.values()})


__all__ = ["DYNAMICID_REPO", "IP_ADAPTER_REPO", "LAION_CLIP_REPO", "SD15_REPO", "SelectionError", "Source", "TAESD_REPO",
           "default_sources", "select_files", "shard_names"]
