"""The main window: wires the models bar, the people panel and box canvas, the settings form, the
run controller and the gallery together. Each of those is its own module; this one only connects
their signals, builds the request and restores saved settings."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PySide6.QtCore import QSettings, Qt, QUrl, Signal
from PySide6.QtGui import QAction, QColor, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from dynamicid_rt import Request, RequestError, parse_parameters, read_parameters

from .gallery import GalleryModel, GalleryPanel, entries_of
from .image_tabs import ImageTabs
from .layout_tab import LayoutTab
from .models_bar import ModelsBar, runs_on_text
from .people import PeopleModel, Status
from .people_panel import PeoplePanel
from .restore import restore_people
from .run_controller import RunController
from .settings import AppSettings
from .settings_form import DEFAULTS, SettingsForm
from .worker import ModelSpec, default_pipeline_factory

if TYPE_CHECKING:
    from dynamicid_rt import Result


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
        self.spec = spec_override or self.settings.model_spec()  # the models in use (or being opened first)
        self.loaded_info: dict | None = None
        self.loading = True
        self._run_people: list[tuple[str, tuple[int, int, int]]] = []  # names and colours of the running request
        self.ask: Callable[[str], bool] = self._ask_user  # questions to the user (tests answer them)

        self.people = PeopleModel(self)
        self.runner = RunController(pipeline_factory, self)
        self.models_bar = ModelsBar(self.spec)
        self.people_panel = PeoplePanel(self.people)
        self.layout_tab = LayoutTab(self.people, self.people_panel.list.selectionModel(), DEFAULTS.mix)
        self.canvas = self.layout_tab.canvas
        self.form = SettingsForm()
        self.gallery_model = GalleryModel(self)
        self.gallery = GalleryPanel(self.gallery_model, self.settings.output_dir)
        self._build_ui()
        self._build_menus()
        self._connect()
        self.runner.load(self.spec)

    # -- layout ------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        self.tabs = ImageTabs(self.layout_tab)
        # The views tests and the screenshot script look at.
        self.preview_view, self.result_view, self.badges = self.tabs.preview_view, self.tabs.result_view, self.tabs.badges
        self.maps_view, self.maps_legend = self.tabs.maps_view, self.tabs.maps_legend

        middle = QSplitter(Qt.Orientation.Vertical)
        middle.addWidget(self.tabs)
        middle.addWidget(self.gallery)
        middle.setStretchFactor(0, 3)
        middle.setSizes([520, 230])
        form_scroll = QScrollArea()
        form_scroll.setWidget(self.form)
        form_scroll.setWidgetResizable(True)
        form_scroll.setMinimumWidth(330)
        splitter = QSplitter()
        splitter.addWidget(self.people_panel)
        splitter.addWidget(middle)
        splitter.addWidget(form_scroll)
        splitter.setStretchFactor(1, 1)

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
        root.addWidget(self.models_bar)
        root.addWidget(splitter, 1)
        root.addLayout(gen_row)
        root.addWidget(self.error_label)
        self.setCentralWidget(central)
        self.runs_on_label = QLabel()
        self.statusBar().addPermanentWidget(self.runs_on_label)
        self.resize(1280, 820)
        self._update_buttons()

    def _build_menus(self) -> None:
        """Every command with its shortcut, where users look for them."""
        def action(menu, text: str, slot, *keys) -> QAction:
            act = QAction(text, self)
            act.setShortcuts([QKeySequence(k) for k in keys])
            act.triggered.connect(lambda _checked=False: slot())
            menu.addAction(act)
            return act

        file_menu = self.menuBar().addMenu("&File")
        action(file_menu, "Add photos…", self.people_panel.choose_photos, "Ctrl+O")
        action(file_menu, "Choose model folder…", self.models_bar.choose_folder, "Ctrl+Shift+O")
        file_menu.addSeparator()
        self.save_action = action(file_menu, "Save image", self.gallery.save_current, QKeySequence.StandardKey.Save)
        self.save_as_action = action(file_menu, "Save image as…", self.save_as, "Ctrl+Shift+S")
        action(file_menu, "Open output folder", self.open_output_folder)
        file_menu.addSeparator()
        action(file_menu, "Quit", self.close, QKeySequence.StandardKey.Quit)
        run_menu = self.menuBar().addMenu("&Generate")
        self.generate_action = action(run_menu, "Generate", self.generate, "Ctrl+Return", "Ctrl+Enter")
        self.cancel_action = action(run_menu, "Cancel", self.cancel, Qt.Key.Key_Escape)

    def _connect(self) -> None:
        w = self.runner.worker
        w.loaded.connect(self._on_loaded)
        w.loadFailed.connect(self._on_load_failed)
        w.loadRejected.connect(self._on_load_rejected)
        w.encoded.connect(self.people.set_encoded)
        w.encodeFailed.connect(self.people.set_encode_failed)
        self.runner.progressed.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.runningChanged.connect(lambda _: self._update_buttons())
        self.people.encodeRequested.connect(self.runner.encode)
        self.models_bar.chosen.connect(self.set_models)
        for spin in (self.form.width_spin, self.form.height_spin):
            spin.valueChanged.connect(lambda _: self.layout_tab.set_output_size(self.form.width_spin.value(), self.form.height_spin.value()))
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.gallery.selected.connect(self.tabs.show_entry)
        self.gallery.reuseSeed.connect(lambda seed: self.form.apply({"seed": seed}))
        self.gallery.message.connect(lambda text: self.statusBar().showMessage(text, 10000))
        self.gallery.problem.connect(self.error_label.setText)
        self.gallery.save_button.clicked.connect(lambda: self.gallery.save_current())
        self.gallery.save_as_button.clicked.connect(self.save_as)
        self.gallery.open_folder_button.clicked.connect(self.open_output_folder)

    # -- models --------------------------------------------------------------------------------

    def set_models(self, spec: ModelSpec) -> None:
        """Open other models in the background. The folder is checked first: an unusable one
        leaves the models in use loaded (and says why in the models bar's banner)."""
        self.loading = True
        self.models_bar.set_loading(spec)
        self._update_buttons()
        self.runner.load(spec)

    def _on_loaded(self, info: dict) -> None:
        spec = ModelSpec(info["folder"], info["backend"])
        changed = self.loaded_info is not None and spec != self.spec
        self.spec, self.loaded_info, self.loading = spec, info, False
        self.settings.model_dir, self.settings.backend = spec.folder, spec.backend
        self.settings.save(self.store)
        self.models_bar.set_loaded(spec, info)
        self.people_panel.set_expressions_enabled(info["has_imr"])
        self.form.set_default_sampler(info.get("default_sampler", ""))
        runs_on = runs_on_text(info)
        self.setWindowTitle(f"DynamicID — {runs_on}")
        self.runs_on_label.setText(f"Running on {runs_on}")
        self.statusBar().showMessage(f"Models loaded in {info['seconds']:.1f} s", 10000)
        if changed or any(p.status is Status.ERROR and "not loaded" in p.error for p in self.people.people()):
            for row in range(self.people.rowCount()):
                self.people.retry(row)  # identities belong to the models that encoded them
        self._update_buttons()

    def _on_load_rejected(self, spec: ModelSpec, problems: str) -> None:
        self.loading = False
        self.models_bar.set_rejected(spec, problems, still_loaded=self.loaded_info is not None)
        self._update_buttons()

    def _on_load_failed(self, message: str) -> None:
        self.loaded_info, self.loading = None, False
        self.models_bar.set_failed(message)
        self.setWindowTitle("DynamicID")
        self.runs_on_label.setText("")
        self._update_buttons()

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
        request = Request(
            identities=[p.identity for p in usable],
            boxes=self.people.request_boxes(usable) if usable else None,
            id_scale=[p.id_scale for p in usable] if usable else DEFAULTS.id_scale,
            mix=self.layout_tab.mix(),
            activation_maps=bool(usable),  # shown in the activation view where the backend provides them
            check_identities=bool(usable),  # the badges
            **self.form.values(),
        )
        request.validate()
        return request

    # -- generation ----------------------------------------------------------------------------

    def _ask_user(self, question: str) -> bool:
        answer = QMessageBox.question(self, "DynamicID", question)
        return answer == QMessageBox.StandardButton.Yes

    def generate(self) -> bool:
        """Start a generation in the pipeline thread; False (with the reason shown) when it cannot."""
        if self.runner.running:
            return False
        if self.loaded_info is None or self.loading:
            self.error_label.setText("The models are not loaded yet.")
            return False
        try:
            request = self.build_request()
        except RequestError as exc:
            self.error_label.setText(str(exc))
            return False
        left_out = [p.name for p in self.people.people() if p.status is Status.ERROR]
        if left_out and not self.ask(
            f"{', '.join(left_out)}: no usable face, so {'they are' if len(left_out) > 1 else 'this person is'} "
            "not in the image. Generate without them?"
        ):
            return False
        self.error_label.clear()
        ready = [p for p in self.people.people() if p.status is Status.READY]
        self._run_people = [(p.name, QColor(p.color).getRgb()[:3]) for p in ready]
        self.progress_bar.setRange(0, request.steps * request.best_of)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("starting…")
        self.tabs.show_preview()
        return self.runner.start(request)

    def cancel(self) -> None:
        if self.runner.running:
            self.runner.cancel()
            self.progress_bar.setFormat("cancelling…")

    def _on_progress(self, step: int, total: int, seconds_left: float, preview: np.ndarray) -> None:
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(step)
        if not self.runner.cancelling:
            self.progress_bar.setFormat(f"step {step}/{total} · {seconds_left:.1f} s left")
        self.tabs.show_preview(preview)

    def _on_finished(self, result: "Result", seconds: float) -> None:
        self.progress_bar.setFormat(f"done in {seconds:.1f} s")
        first = self.gallery_model.add(entries_of(result, [color for _, color in self._run_people]))
        self.gallery.select(first)  # the best of a best-of run comes first
        self.tabs.setCurrentWidget(self.tabs.result_tab)
        self.runEnded.emit("done")

    def _on_failed(self, message: str) -> None:
        self.progress_bar.setFormat("failed")
        self.error_label.setText(f"Generation failed: {message}")
        self.runEnded.emit("failed")

    def _on_cancelled(self, message: str) -> None:
        self.progress_bar.setFormat("cancelled")
        self.statusBar().showMessage(message.capitalize(), 10000)
        self.runEnded.emit("cancelled")

    # -- results -------------------------------------------------------------------------------

    def save_as(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save image", str(self.settings.output_dir), "PNG (*.png)")
        if path:
            saved = self.gallery.save_current(path if path.lower().endswith(".png") else path + ".png")
            if saved is not None:
                self.settings.output_dir = self.gallery.output_dir = saved.parent
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
        """Parsed PNG parameters back into the form (its one binding) and onto the people present."""
        notes = [f"{name} could not be restored" for name in self.form.apply(params)]
        if "mix" in params:
            self.layout_tab.set_mix(params["mix"])
        notes += restore_people(self.people, params)
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
        self.runner.shutdown()
        super().closeEvent(event)


def _has_parameters(path: str) -> bool:
    try:
        return read_parameters(path) is not None
    except OSError:
        return False
