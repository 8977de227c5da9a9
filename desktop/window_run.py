"""The request and its run, part of the main window: the request the form, the people and the
LoRA list describe; what keeps it from starting (said in the message strip, gone once it no
longer applies) or needs an answer first (a photo without a face, a LoRA tag without its LoRA);
progress, the result into the gallery, failure and cancel."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtGui import QColor

from dynamicid_rt import Request, RequestError, mask_boxes

from .gallery_entry import entries_of
from .people import Status
from .run_controller import progress_text
from .settings_form import DEFAULTS

if TYPE_CHECKING:
    from dynamicid_rt import Box, Result


class WindowRun:
    """Part of :class:`~.app.MainWindow` (which provides the attributes used here)."""

    # -- the request ---------------------------------------------------------------------------

    def _update_buttons(self) -> None:
        ready = self.loaded_info is not None and not self.loading
        running = self.runner.running
        self.generate_button.setEnabled(ready and not running)
        self.cancel_button.setEnabled(running)

    def build_request(self) -> Request:
        """The request the form and the people describe; RequestError says what to fix."""
        people = self.people.people()
        waiting = [p.name for p in people if p.status is Status.ENCODING]
        if waiting:
            raise RequestError(f"still encoding {', '.join(waiting)}: wait a moment and generate again")
        usable = [p for p in people if p.status is Status.READY]
        start = self.layout_tab.start_bar.values()  # the start photo, its mask, strength and blur
        # An untouched layout over a mask is the mask's regions: the generator derives them (and
        # says in one line when they do not fit the people), as the canvas shows them.
        mask_layout = start.get("mask") is not None and not self.people.arranged and not self.people.mix
        request = Request(
            identities=[p.identity for p in usable],
            boxes=self.people.request_boxes(usable) if usable and not mask_layout else None,
            id_scale=[p.id_scale for p in usable] if usable else DEFAULTS.id_scale,
            mix=self.layout_tab.mix(),
            activation_maps=bool(usable),  # shown in the activation view where the backend provides them
            check_identities=bool(usable),  # the badges
            loras=self.lora_panel.loras(),
            **self.form.values(),
            **start,
        )
        request.validate()
        return request

    def mask_regions(self, people: int) -> "list[Box] | None":
        """The boxes the painted mask gives ``people`` people; None without a mask or when its
        regions do not fit them (Generate then says so)."""
        mask = self.start_photo.mask_array()
        if mask is None:
            return None
        try:
            return mask_boxes(mask, people, self.layout_tab.start_bar.blur_spin.value())
        except RequestError:
            return None

    def start_from_result(self) -> None:
        """The selected result becomes the start photo (A1111's "Send to inpaint"), on the Layout tab."""
        entry = self.gallery.current_entry()
        if entry is None:
            self.messages.show_problem("Select a result first: it becomes the photo the next image starts from")
            return
        if self.layout_tab.start_bar.open_photo(np.asarray(entry.image.convert("RGB")), f"result, seed {entry.seed}"):
            self.tabs.setCurrentWidget(self.layout_tab)

    def start_from_photo(self, width: int, height: int) -> None:
        """A start photo was chosen: the output takes the size it fits (the size fields stay editable)."""
        self.form.apply({"width": width, "height": height})
        name, (photo_w, photo_h) = self.start_photo.name, self.start_photo.photo_size
        resized = "" if (photo_w, photo_h) == (width, height) else f", cropped and resized from {photo_w}×{photo_h}"
        self.statusBar().showMessage(f"Starting from {name} at {width}×{height}{resized}; your file is left as it is", 10000)

    # -- generation ----------------------------------------------------------------------------

    def generate(self) -> bool:
        """Start a generation in the pipeline thread; False (with the reason shown, or a question
        asked) when it cannot start yet."""
        if self.runner.running:
            return False
        request, problem = self._request_or_problem()
        if request is None:
            if "prompt" in problem:
                self.form.prompt_edit.setFocus()
            self.messages.show_problem(problem, recheck=lambda: self._request_or_problem()[1])
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("not started")  # not the previous run's "done"
            return False
        left_out = [p for p in self.people.people() if p.status is Status.ERROR]
        if left_out and frozenset((p.key, p.encode_version) for p in left_out) != self._left_out_ok:
            names = ", ".join(p.name for p in left_out)
            self._asking = "left out"
            self.question_bar.ask(
                f"{names}: no usable face, so {'they are' if len(left_out) > 1 else 'this person is'} not in the image.",
                "Generate without them",
            )
            return False
        # The prompt that runs is the prompt the user sees: a tag without its LoRA goes only when they say so.
        unlisted = self.lora_panel.unlisted(self.form.prompt_edit.toPlainText())
        if unlisted:
            tags = ", ".join(f"<lora:{name}>" for name in unlisted)
            self._asking = "lora tags"
            self.question_bar.ask(f"The prompt tags {tags}, but no such LoRA is in the LoRA list: the image would be made "
                                  "without it.", "Remove the tag and generate")
            return False
        self.question_bar.dismiss()
        self.messages.clear()
        ready = [p for p in self.people.people() if p.status is Status.READY]
        self._run_people = [(p.name, QColor(p.color).getRgb()[:3]) for p in ready]
        steps = max(1, request.steps_to_run())  # img2img runs int(steps × strength) of them
        self._run_shape = (steps, request.best_of)
        self.remember_generation()
        self.progress_bar.setRange(0, steps * request.best_of)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat(f"computing step 1/{steps * request.best_of}…")  # the log may say more
        self.tabs.show_preview()  # once, at the start: during the run the tabs are the user's
        return self.runner.start(request)

    def _request_or_problem(self) -> tuple[Request | None, str]:
        """The request to run, or why there is none (what to fix)."""
        if self.loaded_info is None or self.loading:
            return None, "The models are not loaded yet."
        if not self.form.prompt_edit.toPlainText().strip():
            return None, "Write a prompt first: describe the picture you want (the grey text is only an example)."
        try:
            return self.build_request(), ""
        except RequestError as exc:
            return None, str(exc)

    def _answer_yes(self) -> None:
        if self._asking == "left out":
            left_out = [p for p in self.people.people() if p.status is Status.ERROR]
            self._left_out_ok = frozenset((p.key, p.encode_version) for p in left_out)
        elif self._asking == "lora tags":
            prompt = self.form.prompt_edit.toPlainText()
            for name in self.lora_panel.unlisted(prompt):
                prompt = re.sub(rf"\s*<lora:{re.escape(name)}(?::[^<>]*)?>", "", prompt)
            self.form.prompt_edit.setPlainText(prompt.strip())
        self.generate()

    def cancel(self) -> None:
        if self.runner.running:
            self.runner.cancel()
            self.progress_bar.setFormat("cancelling…")

    def _on_progress(self, step: int, total: int, seconds_left: float, preview: np.ndarray) -> None:
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(step)
        if not self.runner.cancelling:
            self.progress_bar.setFormat(progress_text(step, total, seconds_left, *self._run_shape))
        self.tabs.set_preview(preview)

    def _on_finished(self, result: "Result", seconds: float) -> None:
        self.progress_bar.setFormat(f"done in {seconds:.1f} s")
        first = self.gallery.add(entries_of(result, [color for _, color in self._run_people]))
        self.gallery.select(first)  # the best of a best-of run comes first
        if self.tabs.currentWidget() is self.preview_view:  # the user did not pick another tab meanwhile
            self.tabs.setCurrentWidget(self.tabs.result_tab)
        self.runEnded.emit("done")

    def _on_failed(self, message: str) -> None:
        self.progress_bar.setFormat("failed")
        self.messages.show_problem(f"Generation failed: {message}")
        self.runEnded.emit("failed")

    def _on_cancelled(self, _message: str) -> None:
        done, total = self.progress_bar.value(), self.progress_bar.maximum()
        self.progress_bar.setFormat("cancelled")
        # In the user's steps (the sampler's own count can hold one model call more).
        self.statusBar().showMessage(f"Cancelled after step {done} of {total}" if done else "Cancelled before the first step",
                                     10000)
        self.runEnded.emit("cancelled")
