"""The generation settings form: prompt, size, steps, sampler, seed, best-of and the SAA knobs.

One binding (request field name -> getter, setter) maps the form to Request fields and back; the
window builds requests with :meth:`SettingsForm.values` and restoring from a PNG goes through
:meth:`SettingsForm.apply` with the parsed parameters.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from dynamicid_rt import SAMPLERS, SIZE_RANGE, Request, RequestError, canonical_sampler, max_sampler_steps

from .messages import MessageLine
from .views import RANKING

DEFAULTS = Request(prompt="")  # the form starts on the Request defaults
MAX_BEST_OF = 16
FORM_WIDTH = 290  # the settings column's width: its fields never need more
PROMPT_HINT = "Describe the picture, e.g.: two friends at the beach, photo"
BATCH_TIP = "Images per run, from consecutive seeds"
BEST_OF_TIP = "Generate this many seeds, one image each, and show them ranked. " + RANKING
Binding = dict[str, tuple[Callable[[], Any], Callable[[Any], None]]]


def _spin(value: int, lo: int, hi: int, step: int = 1, suffix: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(lo, hi)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setSuffix(suffix)
    return spin


def _double_spin(value: float, lo: float, hi: float, step: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(lo, hi)
    spin.setSingleStep(step)
    spin.setDecimals(2)
    spin.setValue(value)
    return spin


def _text_box(height: int, placeholder: str = "") -> QPlainTextEdit:
    box = QPlainTextEdit()
    box.setFixedHeight(height)
    box.setPlaceholderText(placeholder)
    box.setTabChangesFocus(True)  # Tab moves on to the next field, as in every other form field
    return box


class SettingsForm(QWidget):
    """``changed`` is emitted on every edit of a field (by the user or by :meth:`apply`)."""

    changed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        # The most steps each sampler takes ("default": the model's own); the loaded model's
        # schedule replaces these SD1.5 values (set_step_limits).
        self._step_limits = {name: max_sampler_steps(name) for name in SAMPLERS}
        self._step_limits["default"] = self._step_limits["pndm"]
        self.prompt_edit = _text_box(80, PROMPT_HINT)
        self.negative_edit = _text_box(50, "what to keep out, e.g.: blurry, lowres")
        # The hints are examples, not text: italic and faint, so that they never pass for a prompt.
        for box in (self.prompt_edit, self.negative_edit):
            box.setStyleSheet("QPlainTextEdit[empty=\"true\"] { font-style: italic; }")
            box.textChanged.connect(lambda box=box: _mark_empty(box))
            _mark_empty(box)
        self.width_spin = _spin(DEFAULTS.width, *SIZE_RANGE, step=64, suffix=" px")
        self.height_spin = _spin(DEFAULTS.height, *SIZE_RANGE, step=64, suffix=" px")
        self.steps_spin = _spin(DEFAULTS.steps, 1, 1000)
        self.guidance_spin = _double_spin(DEFAULTS.guidance, 0.0, 30.0, 0.5)
        self.guidance_spin.setToolTip("How closely the image follows the prompt (classifier-free guidance; 1 = off)")
        self.sampler_combo = QComboBox()
        for name in ("default", *SAMPLERS):
            self.sampler_combo.addItem(name, name)
        self.sampler_combo.setToolTip("The denoising method; “default” is the base model's own scheduler")
        self.random_seed_check = QCheckBox("random")
        self.seed_edit = QLineEdit("0")
        self.seed_edit.setToolTip("The same seed and settings give the same image")
        self.batch_spin = _spin(DEFAULTS.batch, 1, 16)
        self.best_of_spin = _spin(DEFAULTS.best_of, 1, MAX_BEST_OF)
        self.can_rank = False  # best-of ranks by people's likeness: it needs at least one person
        self.boost_spin = _double_spin(DEFAULTS.boost, 0.0, 20.0, 0.5)
        self.boost_spin.setToolTip("Extra weight of the identities inside their boxes in the first steps "
                                   "(settles who goes where); 0 turns it off")
        self.boost_steps_spin = _spin(DEFAULTS.boost_steps, 0, 1000)
        self.boost_steps_spin.setToolTip("For how many of the first steps the boost applies")
        self.gating_combo = QComboBox()
        self.gating_combo.addItems(["auto", "on", "off"])
        self.gating_combo.setToolTip("Region gating keeps each identity inside its own box; "
                                     "auto: on with two or more people")
        # LoRA tags of the prompt that no listed LoRA answers; its height is kept when empty, so
        # that a note appearing never moves the fields below it.
        self.prompt_note = MessageLine("#c62828", lines=2)
        self.fast_decode_check = QCheckBox("tiny autoencoder (TAESD)")
        self.set_decoders(["vae"])  # until models with a taesd/ folder load

        seed_row = QHBoxLayout()
        seed_row.addWidget(self.random_seed_check)
        seed_row.addWidget(self.seed_edit, 1)
        size_row = QHBoxLayout()
        size_row.addWidget(self.width_spin)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.height_spin)
        form = QFormLayout()
        form.addRow(QLabel("<b>Prompt</b>"))
        form.addRow(self.prompt_edit)
        form.addRow(self.prompt_note)
        form.addRow("Negative prompt:", self.negative_edit)
        form.addRow("Size:", size_row)
        form.addRow("Steps:", self.steps_spin)
        form.addRow("Guidance:", self.guidance_spin)
        form.addRow("Sampler:", self.sampler_combo)
        form.addRow("Seed:", seed_row)
        form.addRow("Batch:", self.batch_spin)
        form.addRow("Best of:", self.best_of_spin)
        form.addRow("Boost:", self.boost_spin)
        form.addRow("Boost steps:", self.boost_steps_spin)
        form.addRow("Region gating:", self.gating_combo)
        form.addRow("Fast decode:", self.fast_decode_check)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(form)
        column.addStretch(1)

        self.random_seed_check.toggled.connect(lambda on: self.seed_edit.setEnabled(not on))
        for spin in (self.batch_spin, self.best_of_spin):
            spin.valueChanged.connect(lambda _: self._update_batch_and_best_of())
        self.binding: Binding = {
            "prompt": (lambda: self.prompt_edit.toPlainText().strip(), self.prompt_edit.setPlainText),
            "negative_prompt": (lambda: self.negative_edit.toPlainText().strip(), self.negative_edit.setPlainText),
            "width": (self.width_spin.value, self.width_spin.setValue),
            "height": (self.height_spin.value, self.height_spin.setValue),
            # The sampler before the steps: its limit decides which step counts the field takes.
            "sampler": (self.sampler_combo.currentData, self._set_sampler),
            "steps": (self.steps_spin.value, self._set_steps),
            "guidance": (self.guidance_spin.value, self.guidance_spin.setValue),
            "seed": (self._seed, self._set_seed),
            "batch": (self.batch_spin.value, self.batch_spin.setValue),
            "best_of": (self.best_of, self.best_of_spin.setValue),
            "boost": (self.boost_spin.value, self.boost_spin.setValue),
            "boost_steps": (self.boost_steps_spin.value, self.boost_steps_spin.setValue),
            "gating": (self.gating_combo.currentText, self._set_gating),
            "decoder": (lambda: "taesd" if self.fast_decode_check.isChecked() else "vae", self._set_decoder),
        }
        self.sampler_combo.currentIndexChanged.connect(lambda _: self._limit_steps())
        for spin in (self.width_spin, self.height_spin, self.steps_spin, self.guidance_spin, self.batch_spin,
                     self.best_of_spin, self.boost_spin, self.boost_steps_spin):
            spin.valueChanged.connect(lambda _: self.changed.emit())
        for combo in (self.sampler_combo, self.gating_combo):
            combo.currentIndexChanged.connect(lambda _: self.changed.emit())
        for box in (self.prompt_edit, self.negative_edit):
            box.textChanged.connect(self.changed)
        self.seed_edit.textChanged.connect(lambda _: self.changed.emit())
        self.random_seed_check.toggled.connect(lambda _: self.changed.emit())
        self.set_request(DEFAULTS)
        self._update_batch_and_best_of()
        self._limit_steps()

    # -- the binding ---------------------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """The Request fields the form holds; RequestError names a field the user must fix."""
        return {name: get() for name, (get, _set) in self.binding.items()}

    def apply(self, values: Mapping[str, Any]) -> list[str]:
        """Set the fields present in ``values`` (e.g. parsed PNG parameters); returns the names of
        those that could not be shown (out of range or unknown)."""
        skipped = []
        for name, (_get, set_value) in self.binding.items():
            if name in values:
                try:
                    set_value(values[name])
                except (RequestError, TypeError, ValueError):
                    skipped.append(name)
        return skipped

    def set_request(self, request: Request) -> None:
        self.apply({name: getattr(request, name) for name in self.binding})

    # -- fields that need more than a spin box ---------------------------------------------------

    def _seed(self) -> int | None:
        if self.random_seed_check.isChecked():
            return None
        text = self.seed_edit.text().strip()
        if not text.isdigit() or int(text) >= 2**32:
            raise RequestError(f"seed {text!r}: enter a whole number from 0 to 4294967295, or tick “random”")
        return int(text)

    def _set_seed(self, seed: int | None) -> None:
        self.random_seed_check.setChecked(seed is None)
        if seed is not None:
            self.seed_edit.setText(str(int(seed)))

    def _set_sampler(self, name: str) -> None:
        index = self.sampler_combo.findData(canonical_sampler(str(name)))
        if index < 0:
            raise ValueError(name)
        self.sampler_combo.setCurrentIndex(index)

    def _set_steps(self, steps: int) -> None:
        """Steps from a restored image or the last session: beyond the sampler's limit they are
        refused (ValueError: the field keeps its value), never silently cut."""
        if not 1 <= int(steps) <= self.steps_spin.maximum():
            raise ValueError(steps)
        self.steps_spin.setValue(int(steps))

    def set_step_limits(self, limits: Mapping[str, int]) -> None:
        """The loaded model's most steps per sampler ("default" included)."""
        self._step_limits.update(limits)
        self._limit_steps()

    def step_limit(self) -> int:
        return self._step_limits.get(self.sampler_combo.currentData(), 1000)

    def _limit_steps(self) -> None:
        """The steps field takes only what the chosen sampler can run (LCM/TCD: at most their
        distillation schedule), so Generate is never refused for it afterwards."""
        name, limit = self.sampler_combo.currentData(), self.step_limit()
        self.steps_spin.setMaximum(limit)
        self.steps_spin.setToolTip(f"{name} takes 1 to {limit} steps" + (" (few-step sampler: 2 to 8 are usual)"
                                                                         if name in ("lcm", "tcd") else ""))

    def _set_gating(self, gating: str | bool) -> None:
        text = {True: "on", False: "off"}.get(gating, gating) if isinstance(gating, bool) else str(gating)
        if text not in ("auto", "on", "off"):
            raise ValueError(gating)
        self.gating_combo.setCurrentText(text)

    def best_of(self) -> int:
        """Best of N in effect: a greyed-out Best of (no one to rank, or a batch) is 1."""
        return self.best_of_spin.value() if self.best_of_spin.isEnabledTo(self) else 1

    def set_can_rank(self, can_rank: bool) -> None:
        """Whether there is anyone whose likeness best-of can rank (the window's people)."""
        self.can_rank = can_rank
        self._update_batch_and_best_of()

    def _update_batch_and_best_of(self) -> None:
        """Batch and best-of exclude each other (best-of makes one image per seed), and best-of
        needs a person: the form greys out what cannot apply, keeping its value, and says why."""
        batch = self.batch_spin.value()
        self.best_of_spin.setEnabled(self.can_rank and batch == 1)
        if not self.can_rank:
            self.best_of_spin.setToolTip("Add a person: best of N ranks images by each person's likeness. " + RANKING)
        elif batch > 1:
            self.best_of_spin.setToolTip(f"Set Batch to 1 to use Best of (now: batch {batch}). " + BEST_OF_TIP)
        else:
            self.best_of_spin.setToolTip(BEST_OF_TIP)
        ranking = self.best_of() > 1
        self.batch_spin.setEnabled(not ranking)
        self.batch_spin.setToolTip(f"Set Best of to 1 for a batch: best of {self.best_of()} makes one image per seed"
                                   if ranking else BATCH_TIP)

    def _set_decoder(self, name: str) -> None:
        if name not in ("vae", "taesd") or (name == "taesd" and not self.fast_decode_check.isEnabled()):
            raise ValueError(name)  # the loaded models have no tiny autoencoder
        self.fast_decode_check.setChecked(name == "taesd")

    def set_decoders(self, names: list[str]) -> None:
        """The decoders the loaded models offer (``Pipeline.decoders``): TAESD only with a taesd/ folder."""
        available = "taesd" in names
        self.fast_decode_check.setEnabled(available)
        if not available:
            self.fast_decode_check.setChecked(False)
        self.fast_decode_check.setToolTip(
            "Decode the final image with the tiny autoencoder: many times faster than the full VAE, slightly softer"
            if available else "Needs a taesd/ folder (madebyollin/taesd) in the model folder")

    def set_default_sampler(self, name: str) -> None:
        """Say which sampler “default” is for the loaded model (SD1.5: PNDM)."""
        index = self.sampler_combo.findData("default")
        self.sampler_combo.setItemText(index, f"default ({name})" if name else "default")


def _mark_empty(box: QPlainTextEdit) -> None:
    empty = not box.toPlainText()
    if box.property("empty") != empty:
        box.setProperty("empty", empty)
        box.style().unpolish(box)
        box.style().polish(box)
