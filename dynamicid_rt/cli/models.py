"""``dynamicid-rt models pull``: get the real models in one command (see :mod:`.pull`)."""
from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

from ..errors import DownloadError
from ..hub.pull import default_models_dir
from ..hub.sources import IP_ADAPTER_REPO, LAION_CLIP_REPO, SD15_REPO, default_sources

log = logging.getLogger(__name__)

# What each licence id of a model card means for a user, where the card names one.
_LICENCES = {
    "creativeml-openrail-m": "CreativeML OpenRAIL-M: use restrictions apply, read them on the model page",
    "mit": "MIT",
    "apache-2.0": "Apache 2.0",
    "openrail": "OpenRAIL: use restrictions apply, read them on the model page",
}


def register(subparsers: "argparse._SubParsersAction") -> None:
    models = subparsers.add_parser("models", help="get and check the real models (models pull)")
    verbs = models.add_subparsers(dest="models_command", required=True)
    pull = verbs.add_parser(
        "pull", help="download the DynamicID models into the Hugging Face cache and link a model folder",
        description="Downloads only the files the runtime reads (SD1.5's parts, the CLIP image encoder, the DynamicID "
        "checkpoints, insightface's buffalo_l) into the standard Hugging Face cache (HF_HOME; HF_ENDPOINT and "
        "HF_HUB_OFFLINE are honoured) and makes --dir a model folder of links to them. Files already cached are "
        "not fetched again; Ctrl-C leaves partial files that the next run resumes.")
    pull.add_argument("--dir", type=Path, default=None, help=f"the model folder to make (default: {default_models_dir()})")
    pull.add_argument("--base", default=SD15_REPO, metavar="REPO_ID|FILE",
                      help="the SD1.5 base: a hub repo in diffusers layout (a fine-tune) or a local single-file .safetensors "
                           "(default: %(default)s)")
    pull.add_argument("--image-encoder", default=LAION_CLIP_REPO, metavar="REPO_ID",
                      help=f"CLIP ViT-H/14: %(default)s (default) or {IP_ADAPTER_REPO} (its models/image_encoder)")
    pull.add_argument("--fp16", action="store_true", help="fetch the base's fp16 files where it has them (half the download)")
    pull.add_argument("--taesd", action="store_true", help="also fetch the tiny autoencoder (madebyollin/taesd) for previews")
    pull.add_argument("--token", default=None, help="a Hugging Face token (default: the logged-in one, or HF_TOKEN)")
    pull.add_argument("--insightface-root", default="~/.insightface", metavar="DIR",
                      help="insightface's model store (default: %(default)s, where insightface looks)")
    pull.set_defaults(handler=run_pull)


class _Bars:
    """One tqdm bar per file (huggingface_hub's, made from ``file_class``) and one overall."""

    def __init__(self) -> None:
        self.overall = None
        self.logging = contextlib.ExitStack()
        bars = self

        from tqdm.auto import tqdm

        class FileBar(tqdm):
            def update(self, n: float | None = 1) -> bool | None:
                if bars.overall is not None:
                    bars.overall.update(n or 0)
                return super().update(n)

        self.file_class = FileBar

    def start(self, total: int) -> None:
        from tqdm.auto import tqdm

        from .build_engines import logging_beside_a_bar

        self.logging.enter_context(logging_beside_a_bar())
        self.overall = tqdm(total=total, unit="B", unit_scale=True, desc="all files", position=0, disable=None)

    def close(self) -> None:
        if self.overall is not None:
            self.overall.close()
        self.logging.close()


def _describe(plan, folder: Path) -> None:
    from ..hub.pull import hub_cache_dir

    for repo, licence in plan.licences.items():
        if licence:
            log.info("%s: licence %s", repo, _LICENCES.get(licence, licence) + f" (https://huggingface.co/{repo})")
    fetch = plan.fetch_bytes
    log.info("%d files, %.2f GB in all; %.2f GB to download into %s (the rest is cached); model folder %s",
             len(plan.files) + 1, plan.total_bytes / 1e9, fetch / 1e9, hub_cache_dir(), folder)


def run_pull(args: argparse.Namespace) -> int:
    from ..hub import pull
    from ..modelfiles.paths import ModelPaths
    from ..models.checkpoint_report import checkpoint_problems
    from ..models.load_check import load_problems
    from ..models.preflight import folder_problems

    folder = Path(args.dir).expanduser() if args.dir else default_models_dir()
    single_file = Path(args.base).expanduser() if Path(args.base).expanduser().suffix == ".safetensors" else None
    if single_file is not None and not single_file.is_file():
        raise DownloadError(f"--base {args.base}: no such file (give a hub repo id or an existing .safetensors file)")
    sources = default_sources(None if single_file else args.base, args.image_encoder, args.taesd)
    bars = _Bars()
    try:
        pull.pull_models(folder, sources, args.fp16, args.token, args.insightface_root, bars.file_class,
                         on_plan=lambda plan: (_describe(plan, folder), bars.start(plan.fetch_bytes)))
    except KeyboardInterrupt:
        log.error("interrupted: every finished file stays in the HF cache; run the same command again to resume")
        raise
    finally:
        bars.close()
    if single_file is not None:
        (folder / "base").mkdir(exist_ok=True)
        pull.link(single_file.resolve(), folder / "base" / single_file.name)
    paths = ModelPaths.from_folder(folder)
    problems = folder_problems(paths) or checkpoint_problems(paths) or load_problems(paths)  # what `inspect` checks
    if problems:
        raise DownloadError(f"the model folder {folder} is not usable: " + "; ".join(problems))
    print(f"ready: {folder} (dynamicid-rt generate --models {folder} --face PHOTO --prompt TEXT)")
    return 0
