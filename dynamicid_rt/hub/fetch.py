"""The transfers of ``models pull``: what to fetch (a plan, with sizes, licences and what the HF
cache already holds, asked of the hub, or of the cache alone when offline), whether it fits on the
disk, the download through ``huggingface_hub`` (resume, ETags, tokens, ``HF_ENDPOINT``) with every
file checked against its hash, and insightface's buffalo_l through insightface's own download."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DownloadError
from ..modelfiles.paths import INSIGHTFACE_PACK
from .sources import SelectionError, Source, select_files, shard_names

log = logging.getLogger(__name__)

INSIGHTFACE_ROOT = "~/.insightface"  # insightface's own store (FaceAnalysis' default root)
BUFFALO_L_BYTES = 288_621_354  # insightface's buffalo_l.zip; its store has no size query
DISK_MARGIN = 256 << 20  # room kept free beyond the files


@dataclass(frozen=True)
class PlannedFile:
    source: Source
    name: str  # path in the repo
    size: int
    etag: str
    cached: bool


@dataclass
class PullPlan:
    """What a pull fetches: per repo the revision and files, licences, and what is cached."""

    revisions: dict[str, str] = field(default_factory=dict)
    licences: dict[str, str | None] = field(default_factory=dict)
    files: list[PlannedFile] = field(default_factory=list)
    insightface_cached: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files) + BUFFALO_L_BYTES

    @property
    def fetch_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.cached) + (0 if self.insightface_cached else BUFFALO_L_BYTES)


def _hub_error(exc: Exception, repo_id: str) -> DownloadError:
    """One line for the hub's errors, saying what to do."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return DownloadError(
            f"{repo_id} is gated: accept its terms at https://huggingface.co/{repo_id} with your account, then log in "
            "(`hf auth login`) or set HF_TOKEN, and run the pull again")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return DownloadError(f"{repo_id} was not found on the hub (or is private: log in with `hf auth login` or set HF_TOKEN)")
    if isinstance(exc, errors.LocalEntryNotFoundError) or isinstance(exc, errors.OfflineModeIsEnabled):
        return DownloadError(f"{repo_id} is not in the Hugging Face cache and the hub cannot be reached "
                             f"({str(exc).splitlines()[0]}); run `dynamicid-rt models pull` online first")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DownloadError(f"{repo_id}: {first}")


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _repo_listing(source: Source, token: str | bool | None) -> tuple[str, list[str], str | None]:
    """(revision, file names, licence) of the repo, from the hub."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(source.repo_id, revision="main", token=token)
    except Exception as exc:  # every hub error becomes one line
        raise _hub_error(exc, source.repo_id) from exc
    licence = info.card_data.get("license") if info.card_data is not None else None
    if info.gated and not token:
        from huggingface_hub import get_token

        if get_token() is None:
            raise DownloadError(
                f"{source.repo_id} is gated ({info.gated}): accept its terms at https://huggingface.co/{source.repo_id}, "
                "then log in (`hf auth login`) or set HF_TOKEN, and run the pull again")
    return info.sha, [s.rfilename for s in info.siblings or []], licence


def plan_pull(sources: list[Source], fp16: bool = False, token: str | bool | None = None,
              insightface_root: str | Path = INSIGHTFACE_ROOT) -> PullPlan:
    """What to fetch: the files each source's loader reads, their sizes and what is cached."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    plan = PullPlan()
    for source in sources:
        revision, names, licence = _repo_listing(source, token)
        plan.revisions[source.repo_id] = revision
        plan.licences[source.repo_id] = licence
        try:
            wanted = select_files(source, names, fp16)
        except SelectionError as exc:
            raise DownloadError(f"{source.repo_id} cannot be the {source.part}: {exc}") from exc
        for name in wanted:
            try:
                meta = get_hf_file_metadata(hf_hub_url(source.repo_id, name, revision=revision), token=token)
            except Exception as exc:
                raise _hub_error(exc, source.repo_id) from exc
            cached = isinstance(try_to_load_from_cache(source.repo_id, name, revision=revision), str) or isinstance(
                try_to_load_from_cache(source.repo_id, name, revision="main"), str)
            plan.files.append(PlannedFile(source, name, int(meta.size or 0), meta.etag or "", cached))
    plan.insightface_cached = any(_insightface_dir(insightface_root).glob("*.onnx"))
    return plan


def plan_from_cache(sources: list[Source], fp16: bool = False, insightface_root: str | Path = INSIGHTFACE_ROOT) -> PullPlan:
    """The plan when the hub cannot be asked (HF_HUB_OFFLINE=1): every file from the HF cache, or
    one line naming what is missing there."""
    from huggingface_hub import snapshot_download

    plan = PullPlan()
    for source in sources:
        try:
            snapshot = Path(snapshot_download(source.repo_id, local_files_only=True))
        except Exception as exc:
            raise _hub_error(exc, source.repo_id) from exc
        names = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
        try:
            wanted = select_files(source, names, fp16)
        except SelectionError as exc:
            raise DownloadError(f"offline (HF_HUB_OFFLINE=1) and the HF cache's {source.repo_id} is incomplete: {exc}; "
                                "run the pull online once") from exc
        plan.revisions[source.repo_id] = snapshot.name
        plan.licences[source.repo_id] = None
        for name in wanted:
            blob = (snapshot / name).resolve()
            plan.files.append(PlannedFile(source, name, blob.stat().st_size, blob.name, cached=True))
    plan.insightface_cached = any(_insightface_dir(insightface_root).glob("*.onnx"))
    if not plan.insightface_cached:
        raise DownloadError(f"offline (HF_HUB_OFFLINE=1) and insightface's {INSIGHTFACE_PACK} is not in "
                            f"{_insightface_dir(insightface_root)}; run the pull online once")
    return plan


def _insightface_dir(root: str | Path) -> Path:
    return Path(os.path.expanduser(str(root))) / "models" / INSIGHTFACE_PACK


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(plan: PullPlan) -> None:
    """Refuse, before the first byte, a pull that does not fit on the HF cache's disk."""
    free = shutil.disk_usage(_existing_parent(hub_cache_dir())).free
    need = plan.fetch_bytes
    if need and need + DISK_MARGIN > free:
        raise DownloadError(
            f"not enough disk space: the pull needs {need / 1e9:.2f} GB (plus {DISK_MARGIN >> 20} MiB spare) in "
            f"{hub_cache_dir()}, {free / 1e9:.2f} GB are free; free some space or set HF_HOME to a larger disk")


def blob_matches(path: Path, etag: str) -> bool:
    """Whether a cached file holds what its ETag names: the SHA-256 of LFS files, the git blob
    SHA-1 of small ones; other ETags cannot be checked and pass."""
    etag = etag.strip('"').removeprefix("W/").strip('"')
    if len(etag) == 64:
        digest = hashlib.sha256()
    elif len(etag) == 40:
        digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    else:
        return True
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest() == etag.lower()


def fetch(plan: PullPlan, token: str | bool | None = None, tqdm_class: Any = None) -> dict[str, Path]:
    """Download what is not cached (huggingface_hub resumes partial files), check every file
    against its hash (a corrupt blob is fetched again) and return each repo's snapshot folder."""
    from huggingface_hub import hf_hub_download

    snapshots: dict[str, Path] = {}
    for item in list(plan.files):
        # By branch, not commit: so the cache records main's commit and an offline run finds it.
        repo, revision = item.source.repo_id, "main"
        path = _download(hf_hub_download, repo, item.name, revision, token, tqdm_class, force=False)
        if not blob_matches(path.resolve(), item.etag):
            log.warning("%s/%s in the HF cache does not match its hash (corrupt): fetching it again", repo, item.name)
            path.resolve().unlink()
            path = _download(hf_hub_download, repo, item.name, revision, token, tqdm_class, force=True)
            if not blob_matches(path.resolve(), item.etag):
                raise DownloadError(f"{repo}/{item.name} was downloaded again and still does not match its hash; "
                                    "the mirror or the disk is damaged")
        snapshots[repo] = Path(str(path)[: -len(item.name)].rstrip("/\\"))
        if item.name.endswith(".index.json"):
            _fetch_shards(plan, item, path, token, tqdm_class)
    return snapshots


def _download(hf_hub_download, repo: str, name: str, revision: str, token, tqdm_class, force: bool) -> Path:
    try:
        return Path(hf_hub_download(repo, name, revision=revision, token=token, tqdm_class=tqdm_class, force_download=force))
    except Exception as exc:
        raise _hub_error(exc, repo) from exc


def _fetch_shards(plan: PullPlan, index_item: PlannedFile, index_path: Path, token, tqdm_class) -> None:
    import json

    from huggingface_hub import hf_hub_download

    folder = index_item.name.rpartition("/")[0]
    for shard in shard_names(json.loads(index_path.read_text(encoding="utf-8")), folder):
        _download(hf_hub_download, index_item.source.repo_id, shard, "main", token, tqdm_class, force=False)


def fetch_insightface(root: str | Path = INSIGHTFACE_ROOT) -> Path:
    """buffalo_l through insightface's own model download (its store, its URL, its unzip)."""
    folder = _insightface_dir(root)
    if any(folder.glob("*.onnx")):
        return folder
    if offline():
        raise DownloadError(f"insightface's {INSIGHTFACE_PACK} is not in {folder} and HF_HUB_OFFLINE is set; "
                            "run the pull online once")
    from insightface.utils.storage import ensure_available

    return Path(ensure_available("models", INSIGHTFACE_PACK, root=os.path.expanduser(str(root))))


__all__ = ["BUFFALO_L_BYTES", "INSIGHTFACE_ROOT", "PlannedFile", "PullPlan", "blob_matches", "check_disk", "fetch",
           "fetch_insightface", "hub_cache_dir", "offline", "plan_from_cache", "plan_pull"]
