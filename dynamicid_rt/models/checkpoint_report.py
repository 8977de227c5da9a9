"""What each DynamicID checkpoint of a model folder holds and whether it loads: the lines of
``dynamicid-rt inspect`` and the checks made before the first export."""
from __future__ import annotations

from pathlib import Path

from ..errors import DynamicIDError
from ..modelfiles.checkpoints import PROCESSOR_SECTIONS, PROJECTOR_SECTIONS, _unflatten_sections, load_tensor_file
from ..modelfiles.paths import ModelPaths
from ..modelfiles.weightcheck import weight_file_problem


def _shape(t) -> str:
    return "x".join(str(d) for d in t.shape)


def describe_checkpoint(path: Path) -> tuple[list[str], bool]:
    """What a DynamicID checkpoint holds, as report lines, and whether it loads (problems are reported, not raised)."""
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
                from .projector import FaceProjector

                FaceProjector.from_state_dict(projector, source=str(path))
            lines.append("  loads: yes")
        elif any(k.startswith("feature_fusion.") for k in raw):
            from .imr import IMR

            d = raw["proj_in.weight"].shape[0]
            depth = len({k.split(".")[1] for k in raw if k.startswith("disentangleNet.")})
            lines.append(f"  IMR: width {d}, heads {d // 64}, depth {depth}, token width {raw['proj_out.weight'].shape[0]}")
            IMR.from_state_dict(raw, source=str(path))
            lines.append("  loads: yes")
        elif any(k.startswith("blocks.") for k in raw):
            from .imr import KeyPointEncoder

            convs = [k for k in raw if k.endswith("conv_block.0.weight")]
            lines.append(f"  keypoint encoder: {len(convs)} convolutions, output width {raw[sorted(convs)[-1]].shape[0]}")
            KeyPointEncoder.from_state_dict(raw, source=str(path))
            lines.append("  loads: yes")
        elif any(k.startswith("perceiver_resampler.") for k in raw):
            from .projector import FaceProjector

            lines.append(f"  face projector: token width {raw['norm.weight'].shape[0]}, CLIP width {raw['perceiver_resampler.proj_in.weight'].shape[1]}")
            FaceProjector.from_state_dict(raw, source=str(path))
            lines.append("  loads: yes")
        else:
            keys = sorted(raw)
            lines.append(f"  unknown checkpoint: {len(keys)} keys, e.g. {', '.join(keys[:6])}")
            return lines, False
    except (DynamicIDError, KeyError, StopIteration, IndexError, AttributeError, TypeError, ValueError) as exc:
        lines.append(f"  loads: NO ({exc})")
        return lines, False
    return lines, True


def checkpoint_problems(paths: ModelPaths) -> list[str]:
    """Why each DynamicID checkpoint of the folder does not load (as this report loads it)."""
    out = []
    for ckpt in (paths.saa, paths.projector, paths.imr, paths.keypoint_encoder):
        if ckpt is not None:
            lines, ok = describe_checkpoint(ckpt)
            if not ok:
                out.append(f"checkpoint {ckpt}: " + (lines[-1].strip().removeprefix("loads: NO ") if len(lines) > 1 else "does not load"))
    return out
