"""One loaded pipeline behind the web API: its job queue, and the work of one txt2img job
(encode the people, run each batch, encode the PNGs) through the public Pipeline API only."""
from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import io
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .. import Cancelled, DynamicIDError, NoFaceError, Pipeline, RequestError, Result, format_parameters, save_png
from .a1111 import info_json
from .img2img import Img2ImgRequest, make_img2img_plan
from .jobs import Job, JobQueue
from .loras import LoraFolder
from .plan import Arrival, Plan, make_plan
from .schema import ProgressResponse, ProgressState, QueueInfo, Txt2ImgRequest, Txt2ImgResponse
from .uploads import DEFAULT_DECODE_BUDGET, DecodeBudget, decode_photo

log = logging.getLogger(__name__)

_FACE_CHECKS_KEPT = 256  # photos whose face was found, by content: a client resending one is not analysed again


class Service:
    """The pipeline, its queue, the LoRA folder, the memory budget of photo decoding and a private
    scratch folder (removed by :meth:`close`). ``stopping`` is set when the server shuts down."""

    def __init__(self, pipeline: Pipeline, lora_dir: str | Path | None = None, decode_budget: int = DEFAULT_DECODE_BUDGET) -> None:
        self.pipeline = pipeline
        self.model = pipeline.model_info()
        self.inpainting_unet = pipeline.dims.inpainting_unet  # A1111's info says when the model is one
        self.queue = JobQueue()
        self.loras = LoraFolder(lora_dir)
        self.decode_budget = DecodeBudget(decode_budget)
        self.stopping = threading.Event()
        self._scratch = Path(tempfile.mkdtemp(prefix="dynamicid-serve-"))
        self._faces_found: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._faces_lock = threading.Lock()
        self._arrival = Arrival(
            load_identity=self._load_identity,
            decode_photo=lambda text, what: decode_photo(text, what, self.decode_budget),
            find_face=self._find_face,
            lora_tags=self._lora_tags,
        )

    # -- checks, before a job is queued ------------------------------------------------------

    def plan(self, body: Txt2ImgRequest) -> Plan:
        return make_plan(body, self._arrival)

    def _find_face(self, pixels: np.ndarray, what: str) -> None:
        """A photo without a face is refused when it arrives, not when its job leaves the queue."""
        key = hashlib.sha256(np.ascontiguousarray(pixels).tobytes() + repr(pixels.shape).encode()).hexdigest()
        with self._faces_lock:
            if key in self._faces_found:
                self._faces_found.move_to_end(key)
                return
        if not self.pipeline.detect_faces(pixels):
            raise NoFaceError(f"no face found in {what}: use a photo where one face is clearly visible (at least ~64 px)")
        with self._faces_lock:
            self._faces_found[key] = None
            while len(self._faces_found) > _FACE_CHECKS_KEPT:
                self._faces_found.popitem(last=False)

    def _lora_tags(self, prompt: str) -> list[tuple[Path, float]]:
        """The prompt's ``<lora:name:w>`` files, each read and checked against this model."""
        pairs = self.loras.resolve(prompt)
        if pairs:
            self.pipeline.check_loras(pairs)
        return pairs

    def shutdown(self) -> None:
        """The server is stopping: jobs end at their next step and their clients get a 503."""
        self.stopping.set()
        self.queue.close(timeout=0)

    def plan_img2img(self, body: Img2ImgRequest) -> Plan:
        return make_img2img_plan(body, self._arrival)

    def _load_identity(self, data: bytes, what: str):
        """A saved identity from its bytes, through Pipeline.load_identity: the file it reads is
        ours (a fresh name in the scratch folder), never one the client names."""
        with tempfile.NamedTemporaryFile(dir=self._scratch, suffix=".npz") as f:
            f.write(data)
            f.flush()
            try:
                return self.pipeline.load_identity(f.name)
            except DynamicIDError as exc:
                message = str(exc).replace(f.name, what)
                raise RequestError(message if what in message else f"{what}: {message}") from None

    # -- the job -----------------------------------------------------------------------------

    def run(self, plan: Plan, job: Job) -> list[Result]:
        """Encode the people and run every batch; an interrupt keeps the batches already done."""
        identities = []
        for person in plan.people:
            if person.identity is not None:
                identities.append(dataclasses.replace(person.identity, name=person.name))
            else:
                identity = self.pipeline.encode_identity(person.pixels, face_prompt=person.face_prompt)
                identities.append(dataclasses.replace(identity, name=person.name))
        results: list[Result] = []
        done = 0
        for batch_no, request in enumerate(plan.requests):
            def progress(info, batch_no=batch_no, before=done):
                job.report(before + info.step, batch_no, info.preview)

            try:
                results.append(self.pipeline.generate(request.with_updates(identities=identities), progress, job.cancel))
            except Cancelled as exc:
                # A1111 returns the image of the current latent when interrupted.
                if job.interrupted and not self.stopping.is_set() and exc.partial_result is not None:
                    results.append(exc.partial_result())
                log.info("job interrupted after %d of %d batches", len(results), len(plan.requests))
                break
            done += request.steps_to_run()
        return results

    def response(self, plan: Plan, results: list[Result]) -> Txt2ImgResponse:
        images = [self._png_base64(r, k) for r in results for k in range(len(r.images))] if plan.send_images else []
        return Txt2ImgResponse(images=images, parameters=plan.echo, info=info_json(plan, results, self.model,
                                                                                      self.inpainting_unet))

    def _png_base64(self, result: Result, index: int) -> str:
        """The PNG exactly as the CLI writes it (save_png with format_parameters), as base64."""
        with tempfile.TemporaryDirectory(dir=self._scratch) as folder:
            path = save_png(result.images[index], Path(folder) / "image.png", format_parameters(result, index))
            return base64.b64encode(path.read_bytes()).decode("ascii")

    # -- progress ----------------------------------------------------------------------------

    def progress(self, with_image: bool) -> ProgressResponse:
        snap = self.queue.snapshot()
        job = snap.running
        queue = QueueInfo(running=1 if job else 0, waiting=snap.waiting)
        if job is None or job.started is None:
            return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState(interrupted=snap.last_interrupted),
                                    queue=queue)
        fraction = min(1.0, job.steps_done / job.total_steps)
        elapsed = time.monotonic() - job.started
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0  # A1111's estimate
        state = ProgressState(
            interrupted=job.cancel.is_set(), job=f"txt2img {job.batch_no + 1}/{job.batches}", job_count=job.batches,
            job_timestamp=job.timestamp, job_no=job.batch_no, sampling_step=job.steps_done,
            sampling_steps=job.total_steps,
        )
        image = _preview_base64(job.preview) if with_image and job.preview is not None else None
        return ProgressResponse(progress=fraction, eta_relative=eta, state=state, current_image=image, queue=queue)

    def close(self) -> None:
        self.stopping.set()
        self.queue.close()
        shutil.rmtree(self._scratch, ignore_errors=True)


def _preview_base64(frame) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
