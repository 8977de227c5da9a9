"""``dynamicid-rt models pull`` with the real huggingface_hub client against olah on 127.0.0.1,
serving the tiny bundle laid out as the real repos (SPEC §3's table)."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported (the desktop offer's test)
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dynamicid_rt.hub.sources import DYNAMICID_REPO, LAION_CLIP_REPO, SD15_REPO
from dynamicid_rt.modelfiles.paths import ModelPaths
from dynamicid_rt.tiny import repo_layouts as repos

pytest.importorskip("olah")
from hub_server import gated_stand_in, git_repo, olah_server  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="olah serves git repositories")


@pytest.fixture(scope="module")
def hub(tiny_bundle, tmp_path_factory):
    """olah serving the SD1.5, laion CLIP and DynamicID repos; yields (endpoint, log, repo folders)."""
    tiny = ModelPaths.from_folder(tiny_bundle)
    work = tmp_path_factory.mktemp("hub")
    layouts = work / "layouts"
    contents = {SD15_REPO: repos.write_sd15_repo(tiny, layouts / "sd15"),
                LAION_CLIP_REPO: repos.write_laion_clip_repo(tiny, layouts / "laion"),
                DYNAMICID_REPO: repos.write_dynamicid_repo(tiny, layouts / "dynamicid")}
    mirrors = work / "mirrors"
    served = {repo_id: git_repo(mirrors, repo_id, folder) for repo_id, folder in contents.items()}
    insightface_store = work / "insightface-store"
    shutil.copytree(tiny.insightface, insightface_store / "models" / "buffalo_l")  # insightface's store, already filled
    with olah_server(mirrors, work / "olah") as (endpoint, log):
        yield {"endpoint": endpoint, "log": log, "repos": served, "insightface": insightface_store}


def _pull(hub, home: Path, *args: str, offline: bool = False, endpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env |= {"HF_HOME": str(home), "HF_ENDPOINT": endpoint or hub["endpoint"], "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "1" if offline else "0", "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dynamicid_rt", "models", "pull", "--insightface-root", str(hub["insightface"]), *args],
        env=env, capture_output=True, text=True, timeout=300)


def _gets(hub) -> int:
    """File downloads the server has answered so far."""
    return len(re.findall(r'"GET /[^ ]+/resolve/', hub["log"].read_text(errors="replace")))


def _snapshot_names(home: Path, repo_id: str) -> set[str]:
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (snapshot,) = (repo / "snapshots").iterdir()
    return {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}


def test_full_pull_fetches_only_what_is_read_then_nothing(hub, tmp_path):
    home, folder = tmp_path / "hf", tmp_path / "models"
    result = _pull(hub, home, "--dir", str(folder))
    assert result.returncode == 0, result.stderr
    assert "ready" in result.stdout and "CreativeML OpenRAIL-M" in result.stderr
    sd15 = _snapshot_names(home, SD15_REPO)
    assert "unet/diffusion_pytorch_model.safetensors" in sd15
    assert not {n for n in sd15 if n.startswith(("safety_checker", "feature_extractor")) or ".fp16." in n
                or ".non_ema." in n or n.endswith((".bin", ".ckpt")) or "/" not in n and n.endswith(".safetensors")}
    assert _snapshot_names(home, LAION_CLIP_REPO) == {"config.json", "model.safetensors", "preprocessor_config.json"}
    paths = ModelPaths.from_folder(folder)
    assert paths.problems() == [] and (home / "hub").resolve() in paths.base.resolve().parents
    for part in ("base", "image_encoder", "dynamicid"):  # links into the HF cache: nothing stored twice
        assert (folder / part).is_symlink()
    weights = paths.base / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.read_bytes() == (hub["repos"][SD15_REPO] / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()

    before = _gets(hub)
    again = _pull(hub, home, "--dir", str(folder))
    assert again.returncode == 0, again.stderr
    assert _gets(hub) == before  # the second pull downloads nothing

    blob = weights.resolve()  # a corrupt blob is found and fetched again
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    fixed = _pull(hub, home, "--dir", str(folder))
    assert fixed.returncode == 0, fixed.stderr
    assert "does not match its hash" in fixed.stderr
    assert weights.read_bytes() == (hub["repos"][SD15_REPO] / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()

    offline = _pull(hub, home, "--dir", str(tmp_path / "offline-models"), offline=True)  # offline, from the cache
    assert offline.returncode == 0, offline.stderr
    assert _gets(hub) == before + 1


def test_interrupted_pull_resumes(hub, tmp_path):
    """Ctrl-C once the first file has landed; the next run fetches only what is missing, so no file
    is fetched twice. (huggingface_hub 2.x drops a cut file's partial bytes: a pull resumes by file,
    and on the hub's Xet storage by chunk through hf_xet's cache.)"""
    import signal
    import time

    home, folder = tmp_path / "hf", tmp_path / "models"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env |= {"HF_HOME": str(home), "HF_ENDPOINT": hub["endpoint"], "HF_HUB_DISABLE_XET": "1", "TQDM_DISABLE": "1"}
    before = _gets(hub)
    process = subprocess.Popen(
        [sys.executable, "-m", "dynamicid_rt", "models", "pull", "--insightface-root", str(hub["insightface"]),
         "--dir", str(folder)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and not any(home.rglob("blobs/*")):
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode in (0, 130), stderr
    first = _gets(hub) - before
    result = _pull(hub, home, "--dir", str(folder))
    assert result.returncode == 0, result.stderr
    assert ModelPaths.from_folder(folder).problems() == []
    files = sum(len(_snapshot_names(home, repo)) for repo in hub["repos"])
    # Every file fetched once across the two runs, but the one cut by Ctrl-C.
    assert files <= _gets(hub) - before <= files + 1
    if process.returncode == 130:
        assert first < files and "run the same command again to resume" in stderr


def test_fp16_pull(hub, tmp_path):
    home, folder = tmp_path / "hf", tmp_path / "models"
    result = _pull(hub, home, "--dir", str(folder), "--fp16")
    assert result.returncode == 0, result.stderr
    unet = {n for n in _snapshot_names(home, SD15_REPO) if n.startswith("unet/")}
    assert unet == {"unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"}
    assert ModelPaths.from_folder(folder).problems() == []


def test_offline_without_cache_names_what_is_missing(hub, tmp_path):
    result = _pull(hub, tmp_path / "empty-hf", "--dir", str(tmp_path / "models"), offline=True)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and SD15_REPO in errors[0] and "cache" in errors[0]


def test_gated_repo_without_token_is_one_line(hub, tmp_path):
    with gated_stand_in() as endpoint:
        result = _pull(hub, tmp_path / "hf", "--dir", str(tmp_path / "models"), endpoint=endpoint)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "gated" in errors[0] and "HF_TOKEN" in errors[0] and "Traceback" not in result.stderr


def test_not_enough_disk_is_refused_before_the_first_byte(hub, tmp_path, monkeypatch):
    import argparse
    import collections

    from huggingface_hub import constants

    from dynamicid_rt.hub import fetch as hub_fetch
    from dynamicid_rt.cli import models as models_command
    from dynamicid_rt.errors import DownloadError

    home = tmp_path / "hf"
    monkeypatch.setattr(constants, "ENDPOINT", hub["endpoint"])
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub["endpoint"] + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(hub_fetch.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    before = _gets(hub)
    args = argparse.Namespace(dir=tmp_path / "models", base=SD15_REPO, image_encoder=LAION_CLIP_REPO, fp16=False,
                              taesd=False, token=None, insightface_root=str(tmp_path / "no-insightface"))
    with pytest.raises(DownloadError, match="not enough disk space"):
        models_command.run_pull(args)
    assert _gets(hub) == before and not any((home / "hub").rglob("blobs/*"))


def test_models_hub_spec_resolves_from_the_cache_offline(hub, tmp_path):
    """``--models hf:``: the parts point into the HF cache, offline once pulled; missing: one line."""
    home = tmp_path / "hf"
    assert _pull(hub, home, "--dir", str(tmp_path / "models")).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env |= {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path / "home"), "TQDM_DISABLE": "1"}
    shutil.copytree(hub["insightface"], tmp_path / "home" / ".insightface")
    script = ("from dynamicid_rt.hub.pull import paths_from_hub; p = paths_from_hub('hf:'); "
              "print(p.base.resolve()); print(p.problems())")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    base, problems = result.stdout.splitlines()[-2:]
    assert problems == "[]" and str((home / "hub").resolve()) in base
    env["HF_HOME"] = str(tmp_path / "empty")
    missing = subprocess.run([sys.executable, "-m", "dynamicid_rt", "build-engines", "--models", "hf:"], env=env,
                             capture_output=True, text=True, timeout=120)
    errors = [line for line in missing.stderr.splitlines() if line.startswith("ERROR")]
    assert missing.returncode == 1 and len(errors) == 1 and SD15_REPO in errors[0], missing.stderr


def _in_process_hub(monkeypatch, hub, home: Path) -> None:
    """huggingface_hub's settings, read at its import, pointed at the test hub for this process."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub["endpoint"])
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub["endpoint"] + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_desktop_offer_downloads_in_its_thread_and_cancels(hub, tmp_path, monkeypatch, qtbot):
    pytest.importorskip("PySide6")
    from dynamicid_rt.desktop.models_download import DownloadOffer

    _in_process_hub(monkeypatch, hub, tmp_path / "hf")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    shutil.copytree(hub["insightface"], tmp_path / "home" / ".insightface")
    offer = DownloadOffer(tmp_path / "models")
    qtbot.addWidget(offer)
    assert offer.button.text().startswith("Download the DynamicID models (")
    with qtbot.waitSignal(offer.message, timeout=120_000) as cancelled:
        offer.start()
        offer.worker.cancel.set()  # cancel at once: the first chunk stops it
    assert "cancelled" in cancelled.args[0] and offer.button.isEnabled()
    next_launch = DownloadOffer(tmp_path / "models")  # a new launch offers to resume
    qtbot.addWidget(next_launch)
    assert next_launch.button.text().startswith("Resume")
    with qtbot.waitSignal(offer.ready, timeout=120_000) as ready:  # the next try finishes the job
        offer.button.click()
    assert ready.args[0] == tmp_path / "models" and ModelPaths.from_folder(tmp_path / "models").problems() == []
    assert DownloadOffer(tmp_path / "models").button.text().startswith("Download")


def test_single_file_base_fetches_only_the_tokenizer(hub, tiny_bundle, tmp_path):
    """``--base FILE.safetensors``: the file is linked into base/, SD1.5's tokenizer beside it is
    the only part of SD1.5's repo fetched, and the folder passes inspect's checks (the configs
    beside the real file are found through the link)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from test_tiny_bundle import _unet_to_ldm, _vae_to_ldm
    from transformers import CLIPTextModel

    tiny = ModelPaths.from_folder(tiny_bundle)
    unet = UNet2DConditionModel.from_pretrained(str(tiny.base / "unet"))
    state = _unet_to_ldm(unet.state_dict(), layers=1, levels=4)
    state |= _vae_to_ldm(AutoencoderKL.from_pretrained(str(tiny.base / "vae")).state_dict(), levels=4)
    state |= {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
              for k, v in CLIPTextModel.from_pretrained(str(tiny.base / "text_encoder")).state_dict().items()}
    checkpoint = tmp_path / "my-finetune.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(checkpoint))
    for part in ("unet", "vae", "text_encoder"):  # its configs beside it (tiny widths)
        (tmp_path / part).mkdir()
        shutil.copy(tiny.base / part / "config.json", tmp_path / part / "config.json")
    home, folder = tmp_path / "hf", tmp_path / "models"
    result = _pull(hub, home, "--dir", str(folder), "--base", str(checkpoint))
    sd15 = _snapshot_names(home, SD15_REPO)
    assert sd15 and all(n.startswith("tokenizer/") for n in sd15), sd15
    paths = ModelPaths.from_folder(folder)
    assert paths.base_is_single_file and paths.base.resolve() == checkpoint and paths.tokenizer == folder / "base" / "tokenizer"
    # Its configs lie beside the file the link points to: they are found, and the folder passes.
    assert result.returncode == 0 and "ready" in result.stdout, result.stderr
