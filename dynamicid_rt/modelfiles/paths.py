"""Model folder layout (SPEC §3) and its resolution; every part can be pointed elsewhere."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..contract import ENGINES, VAE_SCALE, decoder_engines
from ..errors import ModelFolderError, RequestError

log = logging.getLogger(__name__)

SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
INSIGHTFACE_PACK = "buffalo_l"


def checkpoint_file(folder: Path, stem: str) -> Path:
    """``<stem>.safetensors`` or ``<stem>.bin`` in ``folder``: one rule for both present, the
    ``.safetensors`` (no pickle), said in the log; the ``.bin`` name where neither is."""
    safe, pickle = folder / f"{stem}.safetensors", folder / f"{stem}.bin"
    if safe.exists() and pickle.exists():
        log.info("%s: reading %s, not %s beside it (.safetensors before .bin)", folder, safe.name, pickle.name)
    return safe if safe.exists() else pickle


def _holds_weights(folder: Path) -> bool:
    from .part_files import DIFFUSERS, choose_weights

    try:
        choose_weights(folder, DIFFUSERS, "unet")
    except ModelFolderError:
        return False
    return True


def tokenizer_beside(checkpoint: Path) -> Path | None:
    """The tokenizer folder beside a single-file base (``tokenizer/`` with its files), if any."""
    folder = checkpoint.parent / "tokenizer"
    return folder if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file() else None


@dataclass(frozen=True)
class ModelPaths:
    """Where each part of a DynamicID model lives.

    ``base`` is an SD1.5 diffusers folder, its ``unet/`` folder or a single-file ``.safetensors``
    checkpoint; ``vae`` and ``tokenizer`` override the base's own; ``projector`` is only needed
    when the SAA file lacks the face projector; ``imr`` and ``keypoint_encoder`` are optional
    (no expression editing without them), and so is ``taesd``, the tiny autoencoder's folder
    (diffusers ``AutoencoderTiny``: live previews and fast decodes).
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
    taesd: Path | None = None

    @classmethod
    def from_folder(cls, root: str | Path, **overrides: str | Path | None) -> "ModelPaths":
        """Resolve the SPEC §3 layout under ``root``; keyword arguments override single parts."""
        root = Path(root).expanduser()
        _check_readable_folder(root)
        base = root / "base"
        # A single file with its configs beside it (unet/config.json and no UNet weights) is a
        # single-file base, not a diffusers folder.
        if base.is_dir() and not _holds_weights(base / "unet"):
            singles = sorted(base.glob("*.safetensors"))
            if len(singles) == 1:
                base = singles[0]
        dyn = root / "dynamicid"
        imr = checkpoint_file(dyn, "IMR")
        kpe = checkpoint_file(dyn, "key_point_encoder")
        taesd = root / "taesd"
        paths = cls(
            root=root,
            base=base,
            image_encoder=root / "image_encoder",
            saa=checkpoint_file(dyn, "SAA"),
            insightface=root / "insightface" / INSIGHTFACE_PACK,
            imr=imr if imr.exists() else None,
            keypoint_encoder=kpe if kpe.exists() else None,
            taesd=taesd if taesd.is_dir() else None,
        )
        return paths.with_overrides(**overrides)

    def with_overrides(self, **overrides: str | Path | None) -> "ModelPaths":
        """These paths with single parts pointed elsewhere (``vae=...``; None drops an optional part)."""
        parts = [f.name for f in fields(self)]
        unknown = set(overrides) - set(parts)
        if unknown:  # checked before the values: Path() of a wrong type would raise first
            raise ModelFolderError(f"unknown model part(s): {', '.join(sorted(unknown))}; the parts are {', '.join(parts)}")
        given = {k: (Path(v).expanduser() if v is not None else None) for k, v in overrides.items()}
        paths = replace(self, **given)
        if paths.base_is_single_file and "tokenizer" not in given and paths.tokenizer is None:
            paths = replace(paths, tokenizer=tokenizer_beside(paths.base))
        return paths

    @property
    def base_is_single_file(self) -> bool:
        return self.base.suffix == ".safetensors"

    @property
    def has_imr(self) -> bool:
        return self.provides("imr")

    def source(self, part: str) -> Path | None:
        """One part an engine is built from (``EngineSpec.sources``): a field (``saa``, ``imr``...;
        None where an optional part is absent), or ``base/<name>``, a part of the SD1.5 base: its
        override where one is given (``vae``), else that folder of the base, or the base itself when
        it is a single file or a bare ``unet/`` folder."""
        holder, sep, name = part.partition("/")
        if not sep:
            return getattr(self, part)
        if holder != "base":
            raise KeyError(f"unknown model part {part!r}: expected a field of ModelPaths or base/<name>")
        override = getattr(self, name, None) if name in {f.name for f in fields(self)} else None
        if override is not None:
            return override
        if self.base_is_single_file or not (self.base / name).is_dir():
            return self.base
        return self.base / name

    def provides(self, engine: str) -> bool:
        """Whether this model folder has ``engine``: an optional one only with all its sources."""
        spec = ENGINES[engine]
        return not spec.optional or all(self.source(part) is not None for part in spec.sources)

    def decoder_engine(self, decoder: str) -> str:
        """The engine that decodes final images for ``Request.decoder``; a RequestError, before any
        work, for a name the contract lacks or a decoder whose weights this folder lacks."""
        engines = decoder_engines()
        if decoder not in engines:
            raise RequestError(f"decoder {decoder!r}: use one of {', '.join(engines)}")
        engine = engines[decoder]
        if not self.provides(engine):
            raise RequestError(
                f"decoder {decoder!r} needs {ENGINES[engine].needs}, which {self.root or self.base} lacks; "
                f"add it, or decode with the full VAE (decoder {next(iter(engines))!r})"
            )
        return engine

    def problems(self) -> list[str]:
        """What is missing or malformed, one line each (empty when the folder is usable)."""
        out = []
        if self.base_is_single_file:
            if not self.base.is_file():
                out.append(f"base checkpoint {self.base} is missing")
            if self.tokenizer is None:
                out.append("a single-file base needs a tokenizer folder (--tokenizer DIR with tokenizer.json, or vocab.json "
                           f"and merges.txt; or a tokenizer/ folder beside {self.base.name})")
        elif self.base.name == "unet" and (self.base / "config.json").is_file():
            pass  # a bare unet/ folder is enough for load_unet
        else:
            for part in SD_PARTS:
                if not (self.base / part).is_dir():
                    out.append(f"base model part {self.base / part} is missing (expected an SD1.5 diffusers folder)")
        if self.vae is not None and not self.vae.exists():
            out.append(f"VAE {self.vae} does not exist (give a diffusers VAE folder or a .safetensors file)")
        elif self.vae is not None and self.vae.is_file() and self.vae.suffix != ".safetensors":
            out.append(f"VAE {self.vae} is a file but not .safetensors (give a diffusers VAE folder or a .safetensors file)")
        for name, folder, marker in (
            ("image encoder", self.image_encoder, "config.json"),
            ("VAE", self.vae if self.vae is not None and self.vae.is_dir() else None, "config.json"),
            ("TAESD", self.taesd, "config.json"),
        ):
            if folder is not None and not (folder / marker).is_file():
                out.append(f"{name} folder {folder} lacks {marker}")
        if self.tokenizer is not None and not (
            (self.tokenizer / "tokenizer.json").is_file() or (self.tokenizer / "vocab.json").is_file()
        ):
            out.append(f"tokenizer folder {self.tokenizer} lacks tokenizer.json (or vocab.json and merges.txt)")
        if not self.saa.is_file():
            out.append(f"SAA checkpoint {self.saa} is missing")
        for name, path in (("projector", self.projector), ("IMR", self.imr), ("keypoint encoder", self.keypoint_encoder)):
            if path is not None and not path.is_file():
                out.append(f"{name} checkpoint {path} is missing")
        if (self.imr is None) != (self.keypoint_encoder is None):
            out.append("IMR and key_point_encoder come together: one of them is missing (expression editing is off)")
        if not out:  # the weights each loader would read, chosen as the loader chooses them
            from .part_files import source_problems

            out += source_problems(self)
        return out

    def face_analysis_problem(self) -> str | None:
        """Why photos cannot be analysed here, or None. Not a problem of the folder as such: the
        pack is only needed for photos, not for stored tokens or ArcFace embeddings."""
        if not self.insightface.is_dir() or not list(self.insightface.glob("*.onnx")):
            return (f"insightface pack {self.insightface} holds no .onnx models (expected buffalo_l): "
                    "photos cannot be analysed, identities from tokens or embeddings still work")
        return None

    def check(self) -> None:
        problems = self.problems()
        if problems:
            where = self.root or self.base
            raise ModelFolderError(f"model folder {where} is not usable: " + "; ".join(problems))


def _check_readable_folder(root: Path) -> None:
    """A missing, non-folder or unreadable model folder, each named as what it is."""
    if not root.exists():
        raise ModelFolderError(
            f"model folder {root} does not exist; get the real models with `dynamicid-rt models pull --dir {root}`, "
            f"or run `dynamicid-rt demo --models {root}` for a tiny test bundle"
        )
    if not root.is_dir():
        raise ModelFolderError(f"model folder {root} is not a folder (it is a file); give the folder that holds base/, dynamicid/...")
    try:
        next(root.iterdir(), None)
    except PermissionError as exc:
        raise ModelFolderError(f"model folder {root} cannot be read (permission denied); check its permissions") from exc


def vae_scaling_factor(paths: ModelPaths) -> float:
    """The VAE's latent scale: ``scaling_factor`` of its diffusers config (the VAE override folder's,
    else the base folder's ``vae/config.json``); SD1.5's 0.18215 where there is none (single-file
    bases and VAEs, configs older than the key)."""
    config = paths.vae / "config.json" if paths.vae is not None else paths.base / "vae" / "config.json"
    if not config.is_file():
        return VAE_SCALE
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("scaling_factor", VAE_SCALE)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise ModelFolderError(f"VAE config {config} is not a readable JSON object ({exc}); restore the file") from exc
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ModelFolderError(f"VAE config {config}: scaling_factor {value!r} must be a positive number (SD1.5: 0.18215)")
    return float(value)
