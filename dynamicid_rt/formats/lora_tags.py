"""AUTOMATIC1111's LoRA text: ``<lora:name:scale>`` prompt tags and the ``Lora hashes`` field.

A1111 users name LoRAs in the prompt and A1111 writes the prompt as given into the PNG parameters,
with a ``Lora hashes`` field (name: the first 12 hex digits of the SHA-256 of the file after its
safetensors header). The pipeline writes what A1111 would, and never shows the tags to CLIP.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from ..errors import RequestError
from ..modelfiles.lora import LoraFile, file_hashes

_TAG = re.compile(r"<lora:[^:<>]+(?::[^<>]*)?>")


def strip_lora_tags(prompt: str) -> str:
    """``prompt`` without A1111's ``<lora:name:scale>`` tags (A1111 never shows them to CLIP)."""
    _check_prompt(prompt)
    return " ".join(_TAG.sub(" ", prompt).split()) if "<lora:" in prompt else prompt


def prompt_loras(prompt: str) -> list[tuple[str, float]]:
    """(name, scale) of each ``<lora:name:scale>`` tag of an A1111 prompt (scale 1 when missing or
    not a number, as A1111 reads it)."""
    _check_prompt(prompt)
    out = []
    for tag in _TAG.finditer(prompt):
        name, _, rest = tag.group(0)[6:-1].partition(":")
        try:
            scale = float(rest.split(":")[0]) if rest else 1.0
        except ValueError:
            scale = 1.0
        out.append((name, scale))
    return out


def _check_prompt(prompt: object) -> None:
    if not isinstance(prompt, str):
        raise RequestError(f"prompt={prompt!r}: must be text")


def lora_short_hash(path: str | Path) -> str:
    """A1111's short hash of a LoRA file (the first 12 hex digits of the SHA-256 after the header).
    Anything but a regular file (a folder, FIFO, device, symlink loop) is a RequestError before
    any read, so a hostile symlink never blocks the caller."""
    return file_hashes(path)[1]


def with_prompt_tags(prompt: str, loras: Iterable[tuple[LoraFile, float]]) -> str:
    """``prompt`` with A1111's ``<lora:name:scale>`` tag appended for each LoRA it does not tag yet,
    as A1111's prompts (and so its PNG parameters) carry them."""
    tagged = {name for name, _ in prompt_loras(prompt)}
    tags = [f"<lora:{lora.name}:{scale:g}>" for lora, scale in loras if lora.name not in tagged]
    return " ".join([prompt, *tags]) if tags and prompt else " ".join(tags) or prompt


def lora_hashes(loras: Iterable[tuple[LoraFile, float]]) -> dict[str, str]:
    """A1111's ``Lora hashes`` field as {name: short hash} (``pngmeta.format_lora_hashes`` writes it)."""
    return {lora.name: lora.short_hash for lora, _ in loras}
