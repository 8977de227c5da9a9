"""Model folder layout (SPEC §3) and its resolution; every part can be pointed elsewhere."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from .errors import ModelFolderError

SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
INSIGHTFACE_PACK = "buffalo_l"


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).exists():
            return folder / name
    return folder / names[0]


@dataclass(frozen=True)
class ModelPaths:
    """Where each part of a DynamicID model lives.

    ``base`` is an SD1.5 diffusers folder, its ``unet/`` folder or a single-file ``.safetensors``
    checkpoint; ``vae`` and ``tokenizer`` override the base's own; ``projector`` is only needed
    when the SAA file lacks the face projector; ``imr`` and ``keypoint_encoder`` are optional
    (no expression editing without them).
    """

    root: Path | None
    base: Path
    image_encoder: Path
    saa: Path
    insightface: Path
    vae: Path | None = None
    tokenizer: Path | None = None
    projector: Path | None = None
    imr: Path | None = None
    keypoint_encoder: Path | None = None

    @classmethod
    def from_folder(cls, root: str | Path, **overrides: str | Path | None) -> "ModelPaths":
        """Resolve the SPEC §3 layout under ``root``; keyword arguments override single parts."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ModelFolderError(
                f"model folder {root} does not exist; run `dynamicid-rt demo --models {root}` for a tiny "
                "test bundle, or lay out the real weights as the README describes"
            )
        base = root / "base"
        if base.is_dir() and not (base / "unet").is_dir():
            singles = sorted(base.glob("*.safetensors"))
            if len(singles) == 1:
                base = singles[0]
        dyn = root / "dynamicid"
        imr = _first_existing(dyn, ("IMR.bin", "IMR.safetensors"))
        kpe = _first_existing(dyn, ("key_point_encoder.bin", "key_point_encoder.safetensors"))
        paths = cls(
            root=root,
            base=base,
            image_encoder=root / "image_encoder",
            saa=_first_existing(dyn, ("SAA.bin", "SAA.safetensors")),
            insightface=root / "insightface" / INSIGHTFACE_PACK,
            imr=imr if imr.exists() else None,
            keypoint_encoder=kpe if kpe.exists() else None,
        )
        given = {k: (Path(v).expanduser() if v is not None else None) for k, v in overrides.items()}
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown model part(s): {', '.join(sorted(unknown))}")
        return replace(paths, **given)

    @property
    def base_is_single_file(self) -> bool:
        return self.base.suffix == ".safetensors"

    @property
    def has_imr(self) -> bool:
        return self.imr is not None and self.keypoint_encoder is not None

    def problems(self) -> list[str]:
        """What is missing or malformed, one line each (empty when the folder is usable)."""
        out = []
        if self.base_is_single_file:
            if not self.base.is_file():
                out.append(f"base checkpoint {self.base} is missing")
            if self.tokenizer is None:
                out.append("a single-file base needs a tokenizer folder (--tokenizer DIR with vocab.json, merges.txt)")
        elif self.base.name == "unet" and (self.base / "config.json").is_file():
            pass  # a bare unet/ folder is enough for load_unet
        else:
            for part in SD_PARTS:
                if not (self.base / part).is_dir():
                    out.append(f"base model part {self.base / part} is missing (expected an SD1.5 diffusers folder)")
        for name, folder, marker in (
            ("image encoder", self.image_encoder, "config.json"),
            ("tokenizer", self.tokenizer, "vocab.json"),
            ("VAE", self.vae, "config.json"),
        ):
            if folder is not None and not (folder / marker).is_file():
                out.append(f"{name} folder {folder} lacks {marker}")
        if not self.saa.is_file():
            out.append(f"SAA checkpoint {self.saa} is missing")
        for name, path in (("projector", self.projector), ("IMR", self.imr), ("keypoint encoder", self.keypoint_encoder)):
            if path is not None and not path.is_file():
                out.append(f"{name} checkpoint {path} is missing")
        if (self.imr is None) != (self.keypoint_encoder is None):
            out.append("IMR and key_point_encoder come together: one of them is missing (expression editing is off)")
        if not self.insightface.is_dir() or not list(self.insightface.glob("*.onnx")):
            out.append(f"insightface pack {self.insightface} holds no .onnx models (expected buffalo_l)")
        return out

    def check(self) -> None:
        problems = self.problems()
        if problems:
            where = self.root or self.base
            raise ModelFolderError(f"model folder {where} is not usable:\n  - " + "\n  - ".join(problems))
