"""The report of ``dynamicid-rt inspect``: a checkpoint file or a model folder, and whether it loads."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from ..modelfiles.paths import ModelPaths
from .checkpoint_report import describe_checkpoint
from .preflight import folder_problems


def inspect_path(path: Path, **overrides: str | Path | None) -> tuple[str, bool]:
    """Human-readable report of a checkpoint file or a model folder (with parts pointed elsewhere
    by ``overrides``, as ``generate`` takes them), and whether it loads."""
    path = Path(path)
    if path.is_file():
        if overrides:
            return f"{path} is a file: the part options (--base, --vae...) apply to a model folder", False
        lines, ok = describe_checkpoint(path)
        return "\n".join(lines), ok
    if not path.is_dir():
        return f"{path}: no such file or folder", False
    return inspect_paths(ModelPaths.from_folder(path, **overrides))


def _weights_lines(paths: ModelPaths) -> list[str]:
    """Which weight file each engine source reads, where the folder holds a choice."""
    from ..modelfiles.part_files import model_parts, part_files

    lines = []
    for part in model_parts(paths):
        files = [f for f in part_files(paths, part) if f.name != "config.json"]
        if files and files[0].parent.is_dir() and Path(paths.source(part) or "").is_dir():
            lines.append(f"  reads {part + ':':17s} {', '.join(f.name for f in files)}")
    return lines


def engine_load_lines(paths: ModelPaths, lines: list[str]) -> list[str]:
    """Every engine built by generate's own loaders (:mod:`.load_check`): a line in ``lines``,
    and the problems."""
    from .load_check import load_problems, torch_available

    if not torch_available():
        lines.append("  engines: not loaded here (no torch); the folder checks above passed")
        return []
    problems = load_problems(paths)
    if not problems:
        lines.append("  engines: every engine loads with generate's loaders")
    return problems


def inspect_paths(paths: ModelPaths) -> tuple[str, bool]:
    """The report of a resolved model folder: its parts, the files read, and whether it loads."""
    lines = [f"model folder {paths.root or paths.base}"]
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
        lines += _weights_lines(paths)
        lines.append(f"  sizes: context width {dims.context_dim}, CLIP width {dims.clip_width}, CLIP tokens {dims.clip_tokens}")
        if dims.inpainting_unet:
            lines.append(f"  UNet: an inpainting UNet ({dims.unet_in_channels} input channels: latent, mask, masked picture)")
        for ckpt in (paths.saa, paths.projector, paths.imr, paths.keypoint_encoder):
            if ckpt is not None:
                sub, sub_ok = describe_checkpoint(ckpt)
                lines += ["  " + s for s in sub]
                ok &= sub_ok
        if ok:
            problems = engine_load_lines(paths, lines)
            ok = not problems
    lines += [f"  PROBLEM: {p}" for p in problems]
    face_note = paths.face_analysis_problem()
    if face_note:
        lines.append(f"  NOTE: {face_note}")
    lines.append("usable: yes" if ok else "usable: NO")
    return "\n".join(lines), ok
