"""One generation at a time per pipeline: jobs run in order on one worker thread, the others wait.

A job can be cancelled while it waits (it never starts) or while it runs (the pipeline stops
between two steps). The queue also keeps what ``/progress`` reports: the running job's steps,
its latest preview frame and how many jobs wait behind it.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


class Job:
    """One queued piece of work; ``work(job)`` runs on the worker and reports through the job."""

    def __init__(self, work: Callable[["Job"], Any], total_steps: int, batches: int) -> None:
        self.work = work
        self.total_steps = max(1, total_steps)
        self.batches = batches
        self.cancel = threading.Event()  # set by interrupt or by the client going away
        self.interrupted = False  # by A1111's interrupt: the current image is still wanted
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.timestamp = time.strftime("%Y%m%d%H%M%S")
        self.started: float | None = None
        self.steps_done = 0
        self.batch_no = 0
        self.preview: np.ndarray | None = None  # (h, w, 3) uint8 live preview of the first image

    def report(self, steps_done: int, batch_no: int, preview: np.ndarray | None) -> None:
        """Called by ``work`` after each sampler step, with the step's preview frame (ProgressInfo.preview)."""
        self.steps_done, self.batch_no = steps_done, batch_no
        if preview is not None:
            self.preview = preview


@dataclass(frozen=True)
class Snapshot:
    """What the queue is doing, read in one go."""

    running: Job | None
    waiting: int
    last_interrupted: bool


class JobQueue:
    """FIFO of jobs run by one worker thread (started here, stopped by :meth:`close`)."""

    def __init__(self, name: str = "dynamicid-generate") -> None:
        self._waiting: collections.deque[Job] = collections.deque()
        self._lock = threading.Condition()
        self._running: Job | None = None
        self._last_interrupted = False
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    def submit(self, work: Callable[[Job], Any], total_steps: int, batches: int = 1) -> Job:
        job = Job(work, total_steps, batches)
        with self._lock:
            if self._closed:
                raise RuntimeError("the job queue is closed")
            self._waiting.append(job)
            self._lock.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Stop ``job``: a waiting job is dropped, a running one stops after its current step."""
        job.cancel.set()
        with self._lock:
            if job in self._waiting:
                self._waiting.remove(job)
                job.future.cancel()

    def interrupt(self) -> bool:
        """Stop the running job (A1111's interrupt); False when nothing runs."""
        with self._lock:
            job = self._running
        if job is None:
            return False
        job.interrupted = True
        job.cancel.set()
        return True

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._running, len(self._waiting), self._last_interrupted)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel everything and stop the worker."""
        with self._lock:
            self._closed = True
            jobs = list(self._waiting) + ([self._running] if self._running else [])
            self._lock.notify_all()
        for job in jobs:
            self.cancel(job)
        self._worker.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                self._running = job
            if job.future.set_running_or_notify_cancel():
                job.started = time.monotonic()
                try:
                    job.future.set_result(job.work(job))
                except Exception as exc:  # handed to the waiting request, which reports it
                    job.future.set_exception(exc)
            with self._lock:
                self._running = None
                self._last_interrupted = job.cancel.is_set()
