"""The denoising progress of ``generate`` and ``demo``: a tqdm bar with the time left on a
terminal; elsewhere (a log file, a pipe) a log line about every tenth of the steps with the time
left, so a long denoise is never silent."""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Callable, Iterator

log = logging.getLogger("dynamicid_rt.cli")


def _eta(elapsed: float, step: int, total: int) -> str:
    left = elapsed / step * (total - step) if step else 0.0
    return f"{left:.0f} s left" if left < 120 else f"{left / 60:.1f} min left"


@contextlib.contextmanager
def step_progress(desc: str = "denoising") -> Iterator[Callable]:
    """A ``Pipeline.generate`` progress callback for the duration of the block."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=None, desc=desc, unit="step") as bar:
            def on_bar(info) -> None:
                bar.total = info.total
                bar.update(info.step - bar.n)

            yield on_bar
        return
    shown = [0]

    def on_line(info) -> None:
        every = max(1, info.total // 10)
        if info.step == info.total or info.step - shown[0] >= every:
            shown[0] = info.step
            log.info("%s: step %d/%d, %.1f s, %s", desc, info.step, info.total, info.elapsed,
                     _eta(info.elapsed, info.step, info.total))

    yield on_line
