"""``dynamicid-rt models pull``: the release files from the Hugging Face Hub into the standard HF
cache, with a model folder (SPEC §3) whose parts are links into that cache, or (``--models hf:``)
the parts resolved in the cache without a folder.

``huggingface_hub`` does the transfers and insightface's own model store gives buffalo_l
(:mod:`.fetch`); :mod:`.sources` decides what to fetch (only what the loaders read). It
says before the first byte what it costs (sizes, free disk, licences, gated repos), checks every
cached file against its hash (a corrupt one is fetched again) and links the folder. Nothing is
stored twice: a file already in the HF cache (from diffusers, say) is not fetched again.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import DownloadError
from ..modelfiles.paths import INSIGHTFACE_PACK
from .fetch import (
    INSIGHTFACE_ROOT,
    PullPlan,
    blob_matches,
    check_disk,
    fetch,
    fetch_insightface,
    hub_cache_dir,
    offline,
    plan_from_cache,
    plan_pull,
)
from .sources import SD15_REPO, Source

if TYPE_CHECKING:
    from ..modelfiles.paths import ModelPaths

log = logging.getLogger(__name__)


def default_models_dir() -> Path:
    """Where ``models pull`` makes the model folder unless told: the user's data folder."""
    import platformdirs

    return Path(platformdirs.user_data_dir("dynamicid-rt")) / "models"


def link_model_folder(folder: Path, plan: PullPlan, snapshots: dict[str, Path], insightface_dir: Path) -> None:
    """The model folder (SPEC §3) as links into the HF cache and insightface's store."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in {f.source for f in plan.files}:
        target = snapshots[source.repo_id] / source.subfolder if source.subfolder else snapshots[source.repo_id]
        # A single-file base's tokenizer lies beside the file, in base/.
        link(target, folder / "base" / "tokenizer" if source.part == "tokenizer" else folder / source.part)
    link(insightface_dir, folder / "insightface" / INSIGHTFACE_PACK)


HUB_SPEC = "hf:"


def pull_models(folder: Path, sources: list[Source] | None = None, fp16: bool = False, token: str | bool | None = None,
                insightface_root: str | Path = INSIGHTFACE_ROOT, tqdm_class: Any = None,
                on_plan: "Callable[[PullPlan], None] | None" = None) -> "ModelPaths":
    """The whole pull, as ``models pull`` and the desktop run it: the plan (from the cache when
    offline), ``on_plan`` told before the first byte, the disk check, the fetch, insightface's
    pack, the folder of links. Ctrl-C, or a ``tqdm_class`` whose update raises, leaves every
    finished file for the next run."""
    from ..modelfiles.paths import ModelPaths
    from .sources import default_sources

    sources = sources if sources is not None else default_sources()
    plan = plan_from_cache(sources, fp16, insightface_root) if offline() else plan_pull(sources, fp16, token, insightface_root)
    if on_plan is not None:
        on_plan(plan)
    check_disk(plan)
    snapshots = fetch(plan, token, tqdm_class)
    link_model_folder(Path(folder), plan, snapshots, fetch_insightface(insightface_root))
    return ModelPaths.from_folder(folder)


def paths_from_hub(spec: str, insightface_root: str | Path = INSIGHTFACE_ROOT) -> "ModelPaths":
    """``--models hf:[BASE_REPO]``: the release sources (the base replaced where given) resolved
    in the HF cache, fetched first where missing (never with HF_HUB_OFFLINE=1: then one line names
    what is missing); the parts point into the cache, no folder is made."""
    from ..modelfiles.paths import ModelPaths, checkpoint_file
    from .sources import default_sources

    sources = default_sources(spec.removeprefix(HUB_SPEC) or SD15_REPO)
    plan = plan_from_cache(sources, insightface_root=insightface_root) if offline() else plan_pull(sources, insightface_root=insightface_root)
    if plan.fetch_bytes:
        check_disk(plan)
        log.info("fetching %.2f GB of models into %s", plan.fetch_bytes / 1e9, hub_cache_dir())
    snapshots = fetch(plan)
    part = {s.part: snapshots[s.repo_id] / s.subfolder if s.subfolder else snapshots[s.repo_id] for s in sources}
    dyn = part["dynamicid"]
    imr, kpe = checkpoint_file(dyn, "IMR"), checkpoint_file(dyn, "key_point_encoder")
    return ModelPaths(root=None, base=part["base"], image_encoder=part["image_encoder"], saa=checkpoint_file(dyn, "SAA"),
                      insightface=fetch_insightface(insightface_root), imr=imr if imr.is_file() else None,
                      keypoint_encoder=kpe if kpe.is_file() else None)


def link(target: Path, link_path: Path) -> None:
    """``link_path`` -> ``target``; an earlier link is replaced, anything else is never touched."""
    if link_path.is_symlink():
        link_path.unlink()
    elif link_path.exists():
        raise DownloadError(f"{link_path} exists and is not a link made by `models pull`; move it away or pull into "
                            "another --dir (nothing was overwritten)")
    link_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        link_path.symlink_to(target, target_is_directory=target.is_dir())
    except OSError as exc:
        raise DownloadError(f"cannot link {link_path} to {target} ({exc.strerror}); on Windows enable Developer Mode "
                            "(symlinks), or give the parts with --base/--image-encoder... pointing into the HF cache") from exc


__all__ = ["HUB_SPEC", "PullPlan", "blob_matches", "check_disk", "fetch", "fetch_insightface", "hub_cache_dir", "link",
           "link_model_folder", "offline", "paths_from_hub", "plan_from_cache", "plan_pull", "pull_models", "default_models_dir"]
