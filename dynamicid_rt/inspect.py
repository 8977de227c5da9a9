"""Reports for ``dynamicid-rt inspect`` and ``dynamicid-rt doctor``."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from pathlib import Path
from typing import Callable

from .checkpoints import PROCESSOR_SECTIONS, PROJECTOR_SECTIONS, _unflatten_sections, load_tensor_file
from .errors import DynamicIDError
from .paths import ModelPaths
from .preflight import folder_problems
from .weightcheck import weight_file_problem


def _shape(t) -> str:
    return "x".join(str(d) for d in t.shape)


def _describe_checkpoint(path: Path) -> tuple[list[str], bool]:
    lines = [f"checkpoint {path} ({path.stat().st_size / 2**20:.1f} MiB)"]
    problem = weight_file_problem(path)
    if problem is not None:
        return lines + [f"  loads: NO ({path.name} {problem}; download or copy it again)"], False
    try:
        raw = _unflatten_sections(load_tensor_file(path), PROJECTOR_SECTIONS + PROCESSOR_SECTIONS)
    except DynamicIDError as exc:  # truncated, corrupt or refused: reported, not raised
        return lines + [f"  loads: NO ({exc})"], False
    processors = next((raw[s] for s in PROCESSOR_SECTIONS if isinstance(raw.get(s), dict)), None)
    projector = next((raw[s] for s in PROJECTOR_SECTIONS if isinstance(raw.get(s), dict)), None)
    try:
        if processors is not None:
            layers = {k.split(".")[0] for k in processors}
            cross = sorted({k.split(".")[0] for k in processors if "to_k_ip" in k}, key=int)
            rank = next(v.shape[0] for k, v in processors.items() if k.endswith("to_q_lora.down.weight"))
            ctx = processors[f"{cross[0]}.to_k_ip.weight"].shape[1] if cross else "?"
            lines.append(f"  SAA processors: {len(layers)} attention layers ({len(cross)} cross-attention), LoRA rank {rank}, context width {ctx}")
            lines.append(f"  projector: {'present' if projector is not None else 'MISSING (give it as a separate file)'}")
            if projector is not None:
                from .models.projector import FaceProjector

                FaceProjector.from_state_dict(projector, source=str(path))
            lines.append("  loads: yes")
        elif any(k.startswith("feature_fusion.") for k in raw):
            from .models.imr import IMR

            d = raw["proj_in.weight"].shape[0]
            depth = len({k.split(".")[1] for k in raw if k.startswith("disentangleNet.")})
            lines.append(f"  IMR: width {d}, heads {d // 64}, depth {depth}, token width {raw['proj_out.weight'].shape[0]}")
            IMR.from_state_dict(raw, source=str(path))
            lines.append("  loads: yes")
        elif any(k.startswith("blocks.") for k in raw):
            from .models.imr import KeyPointEncoder

            convs = [k for k in raw if k.endswith("conv_block.0.weight")]
            lines.append(f"  keypoint encoder: {len(convs)} convolutions, output width {raw[sorted(convs)[-1]].shape[0]}")
            KeyPointEncoder.from_state_dict(raw, source=str(path))
            lines.append("  loads: yes")
        elif any(k.startswith("perceiver_resampler.") for k in raw):
            from .models.projector import FaceProjector

            lines.append(f"  face projector: token width {raw['norm.weight'].shape[0]}, CLIP width {raw['perceiver_resampler.proj_in.weight'].shape[1]}")
            FaceProjector.from_state_dict(raw, source=str(path))
            lines.append("  loads: yes")
        else:
            keys = sorted(raw)
            lines.append(f"  unknown checkpoint: {len(keys)} keys, e.g. {', '.join(keys[:6])}")
            return lines, False
    except (DynamicIDError, KeyError, StopIteration, IndexError) as exc:
        lines.append(f"  loads: NO ({exc})")
        return lines, False
    return lines, True


def checkpoint_problems(paths: ModelPaths) -> list[str]:
    """Why each DynamicID checkpoint of the folder does not load (as this report loads it)."""
    out = []
    for ckpt in (paths.saa, paths.projector, paths.imr, paths.keypoint_encoder):
        if ckpt is not None:
            lines, ok = _describe_checkpoint(ckpt)
            if not ok:
                out.append(f"checkpoint {ckpt}: " + (lines[-1].strip().removeprefix("loads: NO ") if len(lines) > 1 else "does not load"))
    return out


def inspect_path(path: Path) -> tuple[str, bool]:
    """Human-readable report of a checkpoint file or a model folder, and whether it loads."""
    path = Path(path)
    if path.is_file():
        lines, ok = _describe_checkpoint(path)
        return "\n".join(lines), ok
    if not path.is_dir():
        return f"{path}: no such file or folder", False
    paths = ModelPaths.from_folder(path)
    lines = [f"model folder {path}"]
    for name in ("base", "vae", "tokenizer", "image_encoder", "saa", "projector", "imr", "keypoint_encoder", "insightface"):
        value = getattr(paths, name)
        lines.append(f"  {name:17s} {value if value is not None else '-'}")
    problems = folder_problems(paths)  # the checks Pipeline.load makes: what is unusable here is refused there
    ok = not problems
    if not problems:
        from .models.base import read_model_dims

        dims = read_model_dims(paths)
        lines.append(f"  sizes: context width {dims.context_dim}, CLIP width {dims.clip_width}, CLIP tokens {dims.clip_tokens}")
        for ckpt in (paths.saa, paths.projector, paths.imr, paths.keypoint_encoder):
            if ckpt is not None:
                sub, sub_ok = _describe_checkpoint(ckpt)
                lines += ["  " + s for s in sub]
                ok &= sub_ok
    lines += [f"  PROBLEM: {p}" for p in problems]
    face_note = paths.face_analysis_problem()
    if face_note:
        lines.append(f"  NOTE: {face_note}")
    lines.append("usable: yes" if ok else "usable: NO")
    return "\n".join(lines), ok


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# Distributions that install the same import package, so one overwrites the other's files; what
# to run instead (keep the first for an NVIDIA GPU / a desktop, the second otherwise).
_CLASHES = (
    ("onnxruntime", "onnxruntime-gpu",
     "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install onnxruntime-gpu (GPU) or onnxruntime (CPU)"),
    ("opencv-python", "opencv-python-headless",
     "pip uninstall -y opencv-python opencv-python-headless, then pip install opencv-python (what insightface asks for)"),
)


def clash_lines(installed: Callable[[str], bool]) -> list[str]:
    """One line per pair of clashing distributions that are both installed."""
    return [f"CONFLICT: {a} and {b} are both installed and overwrite each other's files; fix: {fix}"
            for a, b, fix in _CLASHES if installed(a) and installed(b)]


def _installed(dist: str) -> bool:
    return _version(dist) != "not installed"


def _backend_lines() -> list[str]:
    """Each registered backend's state here, and what ``--backend auto`` would pick."""
    from .backends import BACKENDS, choose_auto

    lines = ["backends:"]
    for info in BACKENDS.values():
        missing = info.missing_packages()
        if missing:
            lines.append(f"  {info.name:12s} not installed ({', '.join(missing)}): {info.install_advice()}")
            continue
        devices = info.usable_devices()
        runs = "; ".join(f"{kind} {'/'.join(info.precisions_here(kind))}" for kind in devices) or "no usable device" + (
            f" ({info.no_device_hint()})" if info.no_device_hint is not None else ""
        )
        extras = f" [{', '.join(sorted(info.capabilities))}]" if info.capabilities else ""
        lines.append(f"  {info.name:12s} {runs}{extras}")
    try:
        lines.append(f"auto picks: {choose_auto().explain()}")
    except DynamicIDError as exc:
        lines.append(f"auto picks: nothing ({exc})")
    return lines


def doctor_report(models: Path | None) -> tuple[str, bool]:
    lines = [f"python {sys.version.split()[0]} on {platform.platform()}"]
    for dist in ("dynamicid-rt", "numpy", "torch", "diffusers", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu",
                 "insightface", "tensorrt", "tensorrt-rtx-cu13-bindings", "tensorrt-rtx-cu12-bindings", "cuda-python",
                 "PySide6-Essentials"):
        lines.append(f"  {dist:20s} {_version(dist)}")
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        lines.append(f"onnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            lines.append(f"GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")
        else:
            lines.append("GPU: none visible to torch (CPU only)")
    lines += _backend_lines()
    clashes = clash_lines(_installed)
    lines += clashes
    ok = not clashes
    if models is None:
        lines.append("model folder: none given (--models or $DYNAMICID_MODELS); `dynamicid-rt demo` uses a tiny test bundle")
    else:
        try:
            folder = ModelPaths.from_folder(models)
            problems = folder_problems(folder)
        except DynamicIDError as exc:
            problems = [str(exc)]
        lines.append(f"model folder {models}: " + ("complete" if not problems else "INCOMPLETE"))
        lines += [f"  - {p}" for p in problems]
        ok = ok and not problems
        face_note = None if problems else ModelPaths.from_folder(models).face_analysis_problem()
        if face_note:
            lines.append(f"  note: {face_note}")
    from .engines.report import tensorrt_report  # imports TensorRT only when it is installed

    lines += tensorrt_report(models)
    return "\n".join(lines), ok
