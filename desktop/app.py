"""The main window: models bar, people, box canvas, prompt and settings, generation and results."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PySide6.QtCore import QRect, QSettings, QSize, Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices, QIcon, QImage, QKeySequence, QPainter, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from dynamicid_rt.errors import RequestError
from dynamicid_rt.pngmeta import parse_parameters, read_parameters, save_png
from dynamicid_rt.request import SIZE_RANGE, Request
from dynamicid_rt.samplers import SAMPLERS

from .canvas import BoxCanvas
from .people import PeopleModel, PeoplePanel, Role, Status, array_to_qimage
from .settings import BACKENDS, AppSettings
from .worker import ModelSpec, PipelineThread, default_pipeline_factory

if TYPE_CHECKING:
    from PIL import Image

    from dynamicid_rt import Result


DEFAULTS = Request(prompt="")  # the UI starts on the Request defaults
NO_MAPS = "Activation maps are not available for this backend."


@dataclass
class GalleryEntry:
    """One image of this session, with the text that goes into its PNG."""

    image: "Image.Image"
    parameters: str
    result: "Result"
    index: int
    colors: list[tuple[int, int, int]] = field(default_factory=list)  # the people's, in request order
    saved: Path | None = None


class ImageView(QWidget):
    """Shows an image fitted to the widget with its aspect ratio kept, or a line of text."""

    def __init__(self, text: str, parent=None) -> None:
        super().__init__(parent)
        self.setMinimumSize(256, 256)
        self._text = text
        self._image: QImage | None = None

    def set_image(self, rgb: np.ndarray) -> None:
        self._image = array_to_qimage(rgb)
        self.update()

    def set_text(self, text: str) -> None:
        self._image, self._text = None, text
        self.update()

    def text(self) -> str:
        return "" if self._image is not None else self._text

    def has_image(self) -> bool:
        return self._image is not None

    def image_rect(self) -> QRect:
        """Where the image is drawn (centred, aspect kept)."""
        if self._image is None:
            return QRect()
        size = self._image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        return QRect((self.width() - size.width()) // 2, (self.height() - size.height()) // 2, size.width(), size.height())

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#1e1e1e"))
        if self._image is None:
            painter.setPen(QColor("#bdbdbd"))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self._text)
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawImage(self.image_rect(), self._image)


def overlay_activation_maps(image: np.ndarray, maps: np.ndarray, colors: list[tuple[int, int, int]], alpha: float = 0.6) -> np.ndarray:
    """Blend each person's activation map (N, h, w) in [0, 1], in that person's colour, over the image."""
    from PIL import Image

    h, w = image.shape[:2]
    out = image.astype(np.float32)
    for amap, color in zip(maps, colors):
        resized = np.asarray(Image.fromarray(np.clip(amap, 0, 1).astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
        weight = alpha * np.clip(resized, 0.0, 1.0)[..., None]
        out = out * (1.0 - weight) + np.asarray(color, np.float32) * weight
    return out.round().clip(0, 255).astype(np.uint8)


class MainWindow(QMainWindow):
    runEnded = Signal(str)  # "done", "failed" or "cancelled", once the window has shown the outcome

    def __init__(
        self,
        store: QSettings | None = None,
        pipeline_factory: Callable[[ModelSpec], Any] = default_pipeline_factory,
        spec_override: ModelSpec | None = None,
    ) -> None:
        super().__init__()
        self.setWindowTitle("DynamicID")
        self.setAcceptDrops(True)
        self.store = store if store is not None else QSettings("dynamicid-rt", "desktop")
        self.settings = AppSettings.load(self.store)
        self.spec = spec_override or self.settings.model_spec()
        self.results: list[GalleryEntry] = []
        self.running = False
        self._cancel: threading.Event | None = None
        self._run_started = 0.0
        self._run_colors: list[tuple[int, int, int]] = []
        self.loaded_info: dict | None = None

        self.people = PeopleModel(self)
        self.pipeline = PipelineThread(pipeline_factory, self)
        self._build_ui()
        self._connect()
        self.pipeline.load(self.spec)

    # -- layout ------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        # Models bar
        self.notice_label = QLabel()
        self.notice_label.setWordWrap(True)
        self.notice_label.setStyleSheet("background: #fff3cd; color: #5c4400; padding: 4px;")
        self.model_label = QLabel()
        self.backend_combo = QComboBox()
        self.backend_combo.addItems(list(BACKENDS))
        self.backend_combo.setCurrentText(self.spec.backend)
        self.choose_models_button = QPushButton("Choose model folder…")
        self.demo_button = QPushButton("Use demo bundle")
        self.load_bar = QProgressBar()
        self.load_bar.setRange(0, 0)  # busy: Pipeline.load reports no fractions
        self.load_bar.setMaximumWidth(160)
        models_row = QHBoxLayout()
        models_row.addWidget(QLabel("<b>Models:</b>"))
        models_row.addWidget(self.model_label, 1)
        models_row.addWidget(self.load_bar)
        models_row.addWidget(QLabel("Backend:"))
        models_row.addWidget(self.backend_combo)
        models_row.addWidget(self.choose_models_button)
        models_row.addWidget(self.demo_button)

        # People and canvas
        self.people_panel = PeoplePanel(self.people)
        self.canvas = BoxCanvas(self.people)
        self.mix_check = QCheckBox("Mix people in one box")
        self.mix_check.setToolTip("Two or more people in one box blend their identities")
        self.mix_slider = QSlider(Qt.Orientation.Horizontal)
        self.mix_slider.setRange(0, 100)
        self.mix_slider.setValue(round(DEFAULTS.mix * 100))
        self.mix_label = QLabel()
        self.reset_boxes_button = QPushButton("Reset boxes")
        mix_row = QHBoxLayout()
        mix_row.addWidget(self.mix_check)
        mix_row.addWidget(self.mix_slider, 1)
        mix_row.addWidget(self.mix_label)
        mix_row.addWidget(self.reset_boxes_button)
        layout_tab = QWidget()
        lt = QVBoxLayout(layout_tab)
        lt.addWidget(self.canvas, 1)
        lt.addLayout(mix_row)

        self.preview_label = ImageView("The live preview appears here while generating.")
        self.result_label = ImageView("No image yet: press Generate (Ctrl+Enter).")
        self.maps_label = ImageView(NO_MAPS)
        self.tabs = QTabWidget()
        self.tabs.addTab(layout_tab, "Layout")
        self.tabs.addTab(self.preview_label, "Preview")
        self.tabs.addTab(self.result_label, "Result")
        self.tabs.addTab(self.maps_label, "Activation maps")

        self.gallery = QListWidget()
        self.gallery.setViewMode(QListView.ViewMode.IconMode)
        self.gallery.setFlow(QListView.Flow.LeftToRight)
        self.gallery.setWrapping(False)
        self.gallery.setIconSize(QSize(96, 96))
        self.gallery.setFixedHeight(130)
        self.params_view = QPlainTextEdit()
        self.params_view.setReadOnly(True)
        self.params_view.setFixedHeight(130)
        self.save_button = QPushButton("Save PNG")
        self.save_as_button = QPushButton("Save as…")
        self.open_folder_button = QPushButton("Open output folder")
        results_buttons = QVBoxLayout()
        for b in (self.save_button, self.save_as_button, self.open_folder_button):
            results_buttons.addWidget(b)
        results_buttons.addStretch(1)
        results_row = QHBoxLayout()
        results_row.addWidget(self.gallery, 2)
        results_row.addWidget(self.params_view, 2)
        results_row.addLayout(results_buttons)

        middle = QWidget()
        mv = QVBoxLayout(middle)
        mv.setContentsMargins(0, 0, 0, 0)
        mv.addWidget(self.tabs, 1)
        mv.addLayout(results_row)

        splitter = QSplitter()
        splitter.addWidget(self.people_panel)
        splitter.addWidget(middle)
        splitter.addWidget(self._build_settings())
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([320, 600, 360])

        # Generate bar
        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip("Ctrl+Enter")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Esc")
        self.progress_bar = QProgressBar()
        self.progress_bar.setFormat("idle")
        self.progress_bar.setValue(0)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #c62828;")
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        gen_row = QHBoxLayout()
        gen_row.addWidget(self.generate_button)
        gen_row.addWidget(self.cancel_button)
        gen_row.addWidget(self.progress_bar, 1)

        central = QWidget()
        root = QVBoxLayout(central)
        root.addLayout(models_row)
        root.addWidget(self.notice_label)
        root.addWidget(splitter, 1)
        root.addLayout(gen_row)
        root.addWidget(self.error_label)
        self.setCentralWidget(central)
        self.resize(1280, 820)
        self._update_models_bar(loading=True)
        self._update_buttons()
        self._update_mix()

    def _build_settings(self) -> QWidget:
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("a photo of two people at the beach")
        self.prompt_edit.setFixedHeight(80)
        self.negative_edit = QPlainTextEdit()
        self.negative_edit.setFixedHeight(50)
        self.width_spin = self._size_spin(DEFAULTS.width)
        self.height_spin = self._size_spin(DEFAULTS.height)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1000)
        self.steps_spin.setValue(DEFAULTS.steps)
        self.guidance_spin = self._double_spin(DEFAULTS.guidance, 0.0, 30.0, 0.5)
        self.sampler_combo = QComboBox()
        self.sampler_combo.addItems(["default", *SAMPLERS])
        self.sampler_combo.setCurrentText(DEFAULTS.sampler)
        self.random_seed_check = QCheckBox("random")
        self.random_seed_check.setChecked(DEFAULTS.seed is None)
        self.seed_edit = QLineEdit("0" if DEFAULTS.seed is None else str(DEFAULTS.seed))
        self.seed_edit.setEnabled(DEFAULTS.seed is not None)
        self.last_seed_label = QLabel("last seed: –")
        self.reuse_seed_button = QPushButton("Reuse")
        self.reuse_seed_button.setEnabled(False)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 16)
        self.batch_spin.setValue(DEFAULTS.batch)
        self.id_scale_spin = self._double_spin(DEFAULTS.id_scale, 0.0, 3.0, 0.05)
        self.id_scale_spin.setToolTip("Identity strength (how strongly the faces are imposed)")
        self.boost_spin = self._double_spin(DEFAULTS.boost, 0.0, 20.0, 0.5)
        self.boost_steps_spin = QSpinBox()
        self.boost_steps_spin.setRange(0, 1000)
        self.boost_steps_spin.setValue(DEFAULTS.boost_steps)
        self.gating_combo = QComboBox()
        self.gating_combo.addItems(["auto", "on", "off"])
        self.gating_combo.setCurrentText(str(DEFAULTS.gating))

        seed_row = QHBoxLayout()
        seed_row.addWidget(self.random_seed_check)
        seed_row.addWidget(self.seed_edit, 1)
        seed_row.addWidget(self.reuse_seed_button)
        size_row = QHBoxLayout()
        size_row.addWidget(self.width_spin)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.height_spin)
        box = QWidget()
        form = QFormLayout(box)
        form.addRow(QLabel("<b>Prompt</b>"))
        form.addRow(self.prompt_edit)
        form.addRow("Negative prompt:", self.negative_edit)
        form.addRow("Size:", size_row)
        form.addRow("Steps:", self.steps_spin)
        form.addRow("Guidance:", self.guidance_spin)
        form.addRow("Sampler:", self.sampler_combo)
        form.addRow("Seed:", seed_row)
        form.addRow("", self.last_seed_label)
        form.addRow("Batch:", self.batch_spin)
        form.addRow("Identity strength:", self.id_scale_spin)
        form.addRow("Boost:", self.boost_spin)
        form.addRow("Boost steps:", self.boost_steps_spin)
        form.addRow("Region gating:", self.gating_combo)
        outer = QWidget()
        column = QVBoxLayout(outer)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(box)
        column.addStretch(1)
        return outer

    @staticmethod
    def _size_spin(value: int) -> QSpinBox:
        spin = QSpinBox()
        spin.setRange(*SIZE_RANGE)
        spin.setSingleStep(64)
        spin.setValue(value)
        spin.setSuffix(" px")
        return spin

    @staticmethod
    def _double_spin(value: float, lo: float, hi: float, step: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(lo, hi)
        spin.setSingleStep(step)
        spin.setDecimals(2)
        spin.setValue(value)
        return spin

    def _connect(self) -> None:
        w = self.pipeline.worker
        w.loading.connect(lambda text: self.model_label.setText(text))
        w.loaded.connect(self._on_loaded)
        w.loadFailed.connect(self._on_load_failed)
        w.encoded.connect(self.people.set_encoded)
        w.encodeFailed.connect(self.people.set_encode_failed)
        w.progressed.connect(self._on_progress)
        w.finished.connect(self._on_finished)
        w.failed.connect(self._on_failed)
        w.cancelled.connect(self._on_cancelled)
        self.people.encodeRequested.connect(self.pipeline.encode)
        self.people.rowsInserted.connect(lambda *_: self._update_mix())
        self.people.rowsRemoved.connect(lambda *_: self._update_mix())
        self.people.mixChanged.connect(self._update_mix)
        self.people.dataChanged.connect(lambda *_: self._update_buttons())

        self.choose_models_button.clicked.connect(self.choose_model_folder)
        self.demo_button.clicked.connect(lambda: self.set_models(None, self.backend_combo.currentText()))
        self.backend_combo.activated.connect(lambda _: self.set_models(self.spec.folder, self.backend_combo.currentText()))
        self.mix_check.toggled.connect(self.people.set_mix)
        self.mix_slider.valueChanged.connect(lambda _: self._update_mix())
        self.reset_boxes_button.clicked.connect(self.people.reset_boxes)
        self.width_spin.valueChanged.connect(self._size_changed)
        self.height_spin.valueChanged.connect(self._size_changed)
        self.random_seed_check.toggled.connect(lambda on: self.seed_edit.setEnabled(not on))
        self.reuse_seed_button.clicked.connect(self._reuse_seed)
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.gallery.currentRowChanged.connect(self._show_entry)
        self.save_button.clicked.connect(lambda: self.save_current())
        self.save_as_button.clicked.connect(self._save_as)
        self.open_folder_button.clicked.connect(self.open_output_folder)

        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            QShortcut(QKeySequence(keys), self, self.generate)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.cancel)
        QShortcut(QKeySequence.StandardKey.Save, self, lambda: self.save_current())

    # -- models --------------------------------------------------------------------------------

    def choose_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose the model folder (base/, image_encoder/, dynamicid/, insightface/)")
        if folder:
            self.set_models(Path(folder), self.backend_combo.currentText())

    def set_models(self, folder: Path | None, backend: str) -> None:
        """Remember the choice and reload in the background; people are encoded again afterwards."""
        self.settings.model_dir, self.settings.backend = folder, backend
        self.settings.save(self.store)
        self.spec = ModelSpec(folder, backend)
        self.loaded_info = None
        self._update_models_bar(loading=True)
        self._update_buttons()
        self.pipeline.load(self.spec)
        for row in range(self.people.rowCount()):
            self.people.retry(row)

    def _update_models_bar(self, loading: bool) -> None:
        self.load_bar.setVisible(loading)
        where = str(self.spec.folder) if self.spec.folder else "tiny demo bundle"
        if not loading:
            self.model_label.setText(f"{where} ({self.spec.backend})")
        tiny = self.spec.folder is None or bool(self.loaded_info and self.loaded_info["is_tiny"])
        self.notice_label.setVisible(tiny)
        first = ("No model folder is configured: this is the tiny demo bundle" if self.spec.folder is None
                 else "This folder is a tiny test bundle")
        self.notice_label.setText(
            f"{first} (random weights, the images are noise). "
            "Use “Choose model folder…” to open the real DynamicID weights."
        )

    def _on_loaded(self, info: dict) -> None:
        self.loaded_info = info
        self._update_models_bar(loading=False)
        self.people_panel.set_expressions_enabled(info["has_imr"])
        self.statusBar().showMessage(f"Models loaded in {info['seconds']:.1f} s", 10000)
        self._update_buttons()

    def _on_load_failed(self, message: str) -> None:
        self.loaded_info = None
        self.load_bar.setVisible(False)
        self.model_label.setText("not loaded")
        self.error_label.setText(f"Could not load the models: {message}")
        self._update_buttons()

    # -- layout and settings -------------------------------------------------------------------

    def _size_changed(self) -> None:
        self.canvas.set_output_size(self.width_spin.value(), self.height_spin.value())
        self.canvas.fit_boxes()

    def _update_mix(self) -> None:
        can_mix = self.people.rowCount() >= 2
        self.mix_check.setEnabled(can_mix)
        self.mix_check.setChecked(self.people.mix)
        self.mix_slider.setEnabled(self.people.mix)
        self.mix_label.setText(f"{self.mix_slider.value()}% person 1")
        self._update_buttons()

    def _update_buttons(self) -> None:
        ready = self.loaded_info is not None
        self.generate_button.setEnabled(ready and not self.running)
        self.cancel_button.setEnabled(self.running)
        has_image = bool(self.results)
        for b in (self.save_button, self.save_as_button):
            b.setEnabled(has_image)

    def _reuse_seed(self) -> None:
        if self.results:
            self.random_seed_check.setChecked(False)
            self.seed_edit.setText(str(self.results[-1].result.seeds[0]))

    def build_request(self) -> Request:
        """The request the form describes; raises RequestError with a message for the window."""
        people = self.people.people()
        waiting = [p.name for p in people if p.status is Status.ENCODING]
        if waiting:
            raise RequestError(f"still encoding {', '.join(waiting)}: wait a moment and generate again")
        usable = [p for p in people if p.status is Status.READY]
        seed = None
        if not self.random_seed_check.isChecked():
            text = self.seed_edit.text().strip()
            if not text.isdigit():
                raise RequestError(f"seed {text!r}: enter a whole number from 0 to 4294967295, or tick “random”")
            seed = int(text)
        request = Request(
            prompt=self.prompt_edit.toPlainText().strip(),
            identities=[p.identity for p in usable],
            negative_prompt=self.negative_edit.toPlainText().strip(),
            boxes=self.people.request_boxes(usable) if usable else None,
            width=self.width_spin.value(),
            height=self.height_spin.value(),
            steps=self.steps_spin.value(),
            guidance=self.guidance_spin.value(),
            sampler=self.sampler_combo.currentText(),
            seed=seed,
            batch=self.batch_spin.value(),
            id_scale=self.id_scale_spin.value(),
            gating=self.gating_combo.currentText(),  # type: ignore[arg-type]
            boost=self.boost_spin.value(),
            boost_steps=self.boost_steps_spin.value(),
            mix=self.mix_slider.value() / 100.0,
            activation_maps=bool(usable),  # shown in the activation view where the backend provides them
        )
        request.validate()
        return request

    # -- generation ----------------------------------------------------------------------------

    def generate(self) -> bool:
        """Start a generation in the pipeline thread; False (with the reason shown) when it cannot."""
        if self.running:
            return False
        if self.loaded_info is None:
            self.error_label.setText("The models are not loaded yet.")
            return False
        try:
            request = self.build_request()
        except RequestError as exc:
            self.error_label.setText(str(exc))
            return False
        skipped = [p.name for p in self.people.people() if p.status is Status.ERROR]
        self.error_label.setText(f"Skipping {', '.join(skipped)} (no usable face)." if skipped else "")
        self.running = True
        self._cancel = threading.Event()
        self._run_started = time.perf_counter()
        self._run_colors = [
            QColor(p.color).getRgb()[:3] for p in self.people.people() if p.status is Status.READY
        ]
        self.progress_bar.setRange(0, request.steps)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("starting…")
        self.tabs.setCurrentWidget(self.preview_label)
        self._update_buttons()
        self.pipeline.generate(request, self._cancel)
        return True

    def cancel(self) -> None:
        if self.running and self._cancel is not None:
            self._cancel.set()
            self.progress_bar.setFormat("cancelling…")

    def _on_progress(self, step: int, total: int, seconds_left: float, preview: np.ndarray) -> None:
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(step)
        if not self._cancel or not self._cancel.is_set():
            self.progress_bar.setFormat(f"step {step}/{total} · {seconds_left:.1f} s left")
        self.preview_label.set_image(preview)

    def _finish_run(self, text: str) -> None:
        self.running = False
        self._cancel = None
        self.progress_bar.setFormat(text)
        self._update_buttons()

    def _on_finished(self, result: "Result") -> None:
        self._finish_run(f"done in {time.perf_counter() - self._run_started:.1f} s")
        for i, image in enumerate(result.images):
            entry = GalleryEntry(image, result.parameters(i), result, i, list(self._run_colors))
            self.results.append(entry)
            icon = QIcon(QPixmap.fromImage(array_to_qimage(np.asarray(image.convert("RGB")))))
            item = QListWidgetItem(icon, f"#{len(self.results)} seed {result.seeds[i]}")
            item.setToolTip(entry.parameters)
            self.gallery.addItem(item)
        self.last_seed_label.setText(f"last seed: {result.seeds[0]}")
        self.reuse_seed_button.setEnabled(True)
        self.gallery.setCurrentRow(len(self.results) - len(result.images))
        self.tabs.setCurrentWidget(self.result_label)
        self._update_buttons()
        self.runEnded.emit("done")

    def _on_failed(self, message: str) -> None:
        self._finish_run("failed")
        self.error_label.setText(f"Generation failed: {message}")
        self.runEnded.emit("failed")

    def _on_cancelled(self, message: str) -> None:
        self._finish_run("cancelled")
        self.statusBar().showMessage(message.capitalize(), 10000)
        self.runEnded.emit("cancelled")

    # -- results -------------------------------------------------------------------------------

    def current_entry(self) -> GalleryEntry | None:
        row = self.gallery.currentRow()
        if 0 <= row < len(self.results):
            return self.results[row]
        return self.results[-1] if self.results else None

    def _show_entry(self, row: int) -> None:
        if not 0 <= row < len(self.results):
            return
        entry = self.results[row]
        rgb = np.asarray(entry.image.convert("RGB"))
        self.result_label.set_image(rgb)
        self.params_view.setPlainText(entry.parameters)
        maps = getattr(entry.result, "activation_maps", None)
        if maps is None:
            self.maps_label.set_text(NO_MAPS)
            return
        self.maps_label.set_image(overlay_activation_maps(rgb, np.asarray(maps[entry.index]), entry.colors))

    def save_current(self, path: str | Path | None = None) -> Path | None:
        """Save the selected image as PNG with its parameters (default: a new file in the output folder)."""
        entry = self.current_entry()
        if entry is None:
            self.statusBar().showMessage("Nothing to save yet", 5000)
            return None
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            seed = entry.result.seeds[entry.index]
            path = self.settings.output_dir / f"dynamicid-{stamp}-{seed}.png"
            n = 1
            while path.exists():
                path = self.settings.output_dir / f"dynamicid-{stamp}-{seed}-{n}.png"
                n += 1
        try:
            saved = save_png(entry.image, path, entry.parameters)
        except OSError as exc:
            self.error_label.setText(f"Could not save {path}: {exc.strerror or exc}; choose another folder with “Save as…”")
            return None
        entry.saved = saved
        self.statusBar().showMessage(f"Saved {saved}", 10000)
        return saved

    def _save_as(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save image", str(self.settings.output_dir), "PNG (*.png)")
        if path:
            saved = self.save_current(path if path.lower().endswith(".png") else path + ".png")
            if saved is not None:
                self.settings.output_dir = saved.parent
                self.settings.save(self.store)

    def open_output_folder(self) -> None:
        self.settings.output_dir.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.settings.output_dir)))

    def restore_parameters(self, path: str | Path) -> bool:
        """Set the form from the parameters in a saved PNG; False (reason shown) when it has none."""
        try:
            text = read_parameters(path)
        except OSError as exc:
            self.error_label.setText(f"Could not read {path}: {exc}")
            return False
        if not text:
            self.error_label.setText(f"{Path(path).name} holds no generation parameters")
            return False
        self.apply_parameters(parse_parameters(text))
        self.statusBar().showMessage(f"Restored the settings of {Path(path).name}", 10000)
        return True

    def apply_parameters(self, params: dict) -> None:
        self.prompt_edit.setPlainText(params.get("prompt", ""))
        self.negative_edit.setPlainText(params.get("negative_prompt", ""))
        setters = {
            "steps": self.steps_spin.setValue,
            "guidance": self.guidance_spin.setValue,
            "width": self.width_spin.setValue,
            "height": self.height_spin.setValue,
            "id_scale": self.id_scale_spin.setValue,
            "boost": self.boost_spin.setValue,
            "boost_steps": self.boost_steps_spin.setValue,
        }
        for key, setter in setters.items():
            if key in params:
                setter(params[key])
        if params.get("sampler") in ["default", *SAMPLERS]:
            self.sampler_combo.setCurrentText(params["sampler"])
        if params.get("gating") in ("auto", "on", "off"):
            # The PNG records the gating that ran; "auto" would choose the same for the same people.
            self.gating_combo.setCurrentText(params["gating"])
        if "seed" in params:
            self.random_seed_check.setChecked(False)
            self.seed_edit.setText(str(params["seed"]))
        if "mix" in params:
            self.mix_slider.setValue(round(params["mix"] * 100))
        notes = []
        n = self.people.rowCount()
        boxes = params.get("boxes") or []
        if boxes and len(boxes) == 1 and n >= 2:
            self.people.set_mix(True)
            self.people.set_shared_box(boxes[0])
        elif boxes and len(boxes) == n:
            self.people.set_mix(False)
            for row, box in enumerate(boxes):
                self.people.setData(self.people.index(row), box, Role.BOX)
        elif boxes:
            notes.append(f"it had {len(params.get('people', boxes))} people; add their photos to restore the boxes")
        prompts = params.get("face_prompts") or []
        if prompts and len(prompts) == n:
            for row, face_prompt in enumerate(prompts):
                if (face_prompt or None) != self.people.index(row).data(Role.FACE_PROMPT):
                    self.people.setData(self.people.index(row), face_prompt, Role.FACE_PROMPT)
        self.error_label.setText("Restored the settings; " + "; ".join(notes) if notes else "")

    # -- drag and drop, closing ----------------------------------------------------------------

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self.handle_dropped([u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()])
        event.acceptProposedAction()

    def handle_dropped(self, paths: list[str]) -> None:
        """A saved PNG with parameters restores them; other photos become people."""
        photos = []
        for path in paths:
            if path.lower().endswith(".png") and _has_parameters(path):
                self.restore_parameters(path)
            else:
                photos.append(path)
        if photos:
            self.people_panel.add_photos(photos)

    def closeEvent(self, event) -> None:
        if self._cancel is not None:
            self._cancel.set()
        self.pipeline.shutdown()
        super().closeEvent(event)


def _has_parameters(path: str) -> bool:
    try:
        return read_parameters(path) is not None
    except OSError:
        return False
