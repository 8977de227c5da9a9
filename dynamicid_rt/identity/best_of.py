"""Best of N: generate N seeds one after another and return them ranked by each person's likeness.

The generation and the scoring are passed in (the pipeline passes its own), so the ranking can be
checked with a scorer fed known images.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import Cancelled
from ..request import Request
from ..results import IdentityMatch, ProgressInfo, Result
from .check import rank_key

if TYPE_CHECKING:
    from PIL import Image

ProgressCallback = Callable[[ProgressInfo], None]
GenerateOne = Callable[[Request, "ProgressCallback | None", "threading.Event | None"], Result]
Scorer = Callable[["Image.Image", Sequence, Sequence], list[IdentityMatch]]


def _run_progress(progress: ProgressCallback | None, run: int, runs: int, started: float) -> ProgressCallback | None:
    """Report one run's steps as part of all runs' steps (one bar over the whole best-of)."""
    if progress is None:
        return None

    def report(info: ProgressInfo) -> None:
        progress(ProgressInfo(step=run * info.total + info.step, total=runs * info.total, latent=info.latent,
                              elapsed=time.perf_counter() - started))

    return report


def generate_best_of(
    generate_one: GenerateOne,
    score: Scorer,
    request: Request,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Result:
    """``request.best_of`` runs with seeds ``seed, seed+1, ...`` (one image each), best first by
    :func:`~dynamicid_rt.identity.check.rank_key`; ties keep seed order. Cancel is honoured
    between runs as well as within them (:class:`Cancelled`)."""
    runs = request.best_of
    seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
    boxes = request.resolved_boxes()
    started = time.perf_counter()
    done: list[tuple[Result, list[IdentityMatch]]] = []
    for run in range(runs):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"cancelled after {run} of {runs} images")
        single = request.with_updates(seed=(seed + run) % 2**32, best_of=1, check_identities=False)
        result = generate_one(single, _run_progress(progress, run, runs, started), cancel)
        done.append((result, score(result.images[0], request.identities, boxes)))
    order = sorted(range(runs), key=lambda k: rank_key(done[k][1]))
    first = done[0][0]
    timings: dict[str, float] = {}
    for result, _ in done:
        for stage, seconds in result.timings.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    timings["total"] = time.perf_counter() - started
    maps = [done[k][0].activation_maps[0] for k in order] if all(r.activation_maps for r, _ in done) else None
    latents = [done[k][0].latents for k in order]
    return replace(
        first,
        images=[done[k][0].images[0] for k in order],
        request=first.request.with_updates(seed=seed, best_of=runs, check_identities=True),
        seeds=[done[k][0].seeds[0] for k in order],
        timings=timings,
        activation_maps=maps,
        identity_scores=[done[k][1] for k in order],
        latents=np.concatenate(latents) if all(x is not None for x in latents) else None,
    )
