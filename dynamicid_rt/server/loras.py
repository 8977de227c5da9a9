"""``serve --lora-dir DIR``: A1111's ``models/Lora`` convention. ``<lora:name:weight>`` tags of a
prompt name ``.safetensors`` files of the folder (by file stem, subfolders included); a tag that
names no file, or a weight that is not a plain number, is refused before the job is queued, so
the returned image never claims a LoRA that was not applied."""
from __future__ import annotations

import re
from pathlib import Path

from .. import RequestError

MAX_FILES = 10_000  # a LoRA folder is listed on every request; beyond this it is no LoRA folder
_TAG = re.compile(r"<lora:([^:<>]+)((?::[^<>]*)?)>")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


class LoraFolder:
    """The LoRA files of one folder (None: no folder, so no tag resolves)."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder).expanduser() if folder is not None else None

    def files(self) -> dict[str, Path]:
        """{name: path} of every ``.safetensors`` file, read anew each time (A1111 refreshes too)."""
        if self.folder is None:
            return {}
        found: dict[str, Path] = {}
        for count, path in enumerate(sorted(self.folder.rglob("*.safetensors"))):
            if count >= MAX_FILES:
                break
            found.setdefault(path.stem, path)  # the first in sorted order, as listed
        return found

    def listing(self) -> list[dict]:
        """``/sdapi/v1/loras``: name, alias and the path inside the folder."""
        if self.folder is None:
            return []
        return [{"name": name, "alias": name, "path": str(path.relative_to(self.folder))} for name, path in self.files().items()]

    def resolve(self, prompt: str) -> list[tuple[Path, float]]:
        """(file, weight) of each ``<lora:name:weight>`` tag of ``prompt``; RequestError for a tag
        that names no file of the folder or whose weight is not a plain number."""
        tags = list(_TAG.finditer(prompt))
        if not tags:
            return []
        files = self.files()
        out = []
        for tag in tags:
            name, rest = tag.group(1), tag.group(2)[1:]
            if self.folder is None:
                raise RequestError(f"the prompt names {tag.group(0)} but the server has no LoRA folder; start it with "
                                   "`serve --lora-dir DIR`, or leave the tag out")
            if name not in files:
                known = ", ".join(sorted(files)[:8]) or "none"
                raise RequestError(f"the prompt names {tag.group(0)} but no {name}.safetensors is in the server's LoRA folder "
                                   f"(GET /sdapi/v1/loras lists them: {known})")
            weight = rest.split(":")[0] if rest else "1"
            if not _NUMBER.fullmatch(weight.strip()) or ":" in rest:
                raise RequestError(f"{tag.group(0)}: the weight must be one plain number, e.g. <lora:{name}:0.8>")
            out.append((files[name], float(weight)))
        return out
