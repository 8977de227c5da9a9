"""The report of ``dynamicid-rt inspect``: a checkpoint file or a model folder, and whether it loads."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from .checkpoint_report import describe_checkpoint
from ..modelfiles.paths import ModelPaths
from .preflight import folder_problems


def inspect_path(path: Path) -> tuple[str, bool]:
    """Human-readable report of a checkpoint file or a model folder, and whether it loads."""
    path = Path(path)
    if path.is_file():
        lines, ok = describe_checkpoint(path)
        return "\n".join(lines), ok
    if not path.is_dir():
        return f"{path}: no such file or folder", False
    paths = ModelPaths.from_folder(path)
    lines = [f"model folder {path}"]
    for part in fields(ModelPaths):  # every part, optional ones (imr, taesd...) included
        if part.name == "root":
            continue
        name, value = part.name, getattr(paths, part.name)
        lines.append(f"  {name:17s} {value if value is not None else '-'}")
    problems = folder_problems(paths)  # the checks Pipeline.load makes: what is unusable here is refused there
    ok = not problems
    if not problems:
        from .base import read_model_dims

        dims = read_model_dims(paths)
        lines.append(f"  sizes: context width {dims.context_dim}, CLIP width {dims.clip_width}, CLIP tokens {dims.clip_tokens}")
        for ckpt in (paths.saa, paths.projector, paths.imr, paths.keypoint_encoder):
            if ckpt is not None:
                sub, sub_ok = describe_checkpoint(ckpt)
                lines += ["  " + s for s in sub]
                ok &= sub_ok
    lines += [f"  PROBLEM: {p}" for p in problems]
    face_note = paths.face_analysis_problem()
    if face_note:
        lines.append(f"  NOTE: {face_note}")
    lines.append("usable: yes" if ok else "usable: NO")
    return "\n".join(lines), ok
