"""The main window: wires the models bar, the people panel and box canvas, the settings form, the
run controller and the gallery together. Each of those is its own module; this one only connects
their signals, builds the request and runs it (files in and out: :mod:`.window_files`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QAction, QColor, QKeySequence
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from dynamicid_rt import Request, RequestError, cpu_fastest_path

from .gallery import GalleryModel, GalleryPanel, entries_of
from .image_tabs import ImageTabs
from .layout_tab import LayoutTab
from .models_bar import ModelsBar, runs_on_text
from .people import PeopleModel, Status
from .people_panel import PANEL_WIDTH, PeoplePanel
from .run_controller import RunController, progress_text
from .settings import AppSettings, default_output_dir
from .lora_panel import FAST_PRESET, LoraPanel
from .settings_form import DEFAULTS, SettingsForm
from .views import ElidedLabel, QuestionBar
from .window_files import WindowFiles
from .worker import ModelSpec, default_pipeline_factory

if TYPE_CHECKING:
    from dynamicid_rt import Result


class MainWindow(WindowFiles, QMainWindow):
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
        self._run_shape = (1, 1)  # steps per image and images of the running request
        self._left_out_ok: frozenset[tuple[int, int]] = frozenset()  # failed photos the user chose to leave out

        self.people = PeopleModel(self)
        self.runner = RunController(pipeline_factory, self)
        self.models_bar = ModelsBar(self.spec)
        self.people_panel = PeoplePanel(self.people)
        self.layout_tab = LayoutTab(self.people, self.people_panel.list.selectionModel(), DEFAULTS.mix)
        self.canvas = self.layout_tab.canvas
        self.form = SettingsForm()
        self.lora_panel = LoraPanel()
        self.form.apply({"width": self.settings.size[0], "height": self.settings.size[1], "steps": self.settings.steps})
        self.people_panel.photo_folder = self.settings.photo_dir
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
        self.tabs.result_tab.layout().addWidget(self.gallery.params_view)  # the selected image's parameters

        middle = QSplitter(Qt.Orientation.Vertical)
        middle.addWidget(self.tabs)
        middle.addWidget(self.gallery)
        middle.setStretchFactor(0, 1)
        middle.setCollapsible(1, False)
        middle.setSizes([500, 240])
        form_scroll = QScrollArea()
        form_column = QWidget()  # the settings, then the LoRA list
        form_layout = QVBoxLayout(form_column)
        form_layout.addWidget(self.form)
        form_layout.addWidget(self.lora_panel)
        form_scroll.setWidget(form_column)
        form_scroll.setWidgetResizable(True)
        form_scroll.setMinimumWidth(300)
        splitter = QSplitter()
        splitter.addWidget(self.people_panel)
        splitter.addWidget(middle)
        splitter.addWidget(form_scroll)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([PANEL_WIDTH, 640, 310])  # the middle column holds three results per gallery row

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
        self.question_bar = QuestionBar()
        gen_row = QHBoxLayout()
        gen_row.addWidget(self.generate_button)
        gen_row.addWidget(self.cancel_button)
        gen_row.addWidget(self.progress_bar, 1)

        central = QWidget()
        root = QVBoxLayout(central)
        root.addWidget(self.models_bar)
        root.addWidget(splitter, 1)
        root.addWidget(self.question_bar)
        root.addLayout(gen_row)
        root.addWidget(self.error_label)
        self.setCentralWidget(central)
        self.runs_on_label = QLabel()
        self.statusBar().addPermanentWidget(self.runs_on_label)
        # The CPU's fastest path: a user's CPU speed depends on a feature they have never heard of.
        self.cpu_label = ElidedLabel(cpu_fastest_path())
        self.cpu_label.setToolTip(f"What this CPU can do: {self.cpu_label.text()}")
        self.statusBar().addPermanentWidget(self.cpu_label)
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
        edit_menu = self.menuBar().addMenu("&Edit")
        history = self.people.history
        self.undo_action = history.createUndoAction(self, "Undo")
        self.undo_action.setShortcuts([QKeySequence("Ctrl+Z")])
        self.redo_action = history.createRedoAction(self, "Redo")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        edit_menu.addActions([self.undo_action, self.redo_action])
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
        w.activity.connect(self._on_activity)
        self.runner.progressed.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.runningChanged.connect(lambda _: self._update_buttons())
        self.people.encodeRequested.connect(self.runner.encode)
        for signal in (self.people.rowsInserted, self.people.rowsRemoved, self.people.dataChanged):
            signal.connect(lambda *_: self.form.set_can_rank(any(p.status is not Status.ERROR for p in self.people.people())))
        self.people_panel.photoFolderChanged.connect(self._remember_photo_folder)
        self.question_bar.accepted.connect(self._generate_without_left_out)
        self.people.rowsRemoved.connect(lambda *_: self.question_bar.dismiss())  # the question may no longer apply
        self.models_bar.chosen.connect(self.set_models)
        for spin in (self.form.width_spin, self.form.height_spin):
            spin.valueChanged.connect(lambda _: self.layout_tab.set_output_size(self.form.width_spin.value(), self.form.height_spin.value()))
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.gallery.selected.connect(self.tabs.show_entry)
        self.gallery.reuseSeed.connect(lambda seed: self.form.apply({"seed": seed}))
        self.lora_panel.fastPreset.connect(lambda: self.form.apply(FAST_PRESET))
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

    def _on_activity(self, text: str) -> None:
        """What the pipeline thread is busy with, where the user is waiting for it."""
        if self.loading:
            self.models_bar.set_activity(text)
        elif self.runner.running and self.progress_bar.value() == 0:
            self.progress_bar.setFormat(f"preparing: {text}…")
        else:  # e.g. the face analysis or the image encoder loading for a first photo
            self.statusBar().showMessage(f"{text}…", 5000)

    def _on_loaded(self, info: dict) -> None:
        spec = ModelSpec(info["folder"], info["backend"])
        changed = self.loaded_info is not None and spec != self.spec
        self.spec, self.loaded_info, self.loading = spec, info, False
        self.settings.model_dir, self.settings.backend = spec.folder, spec.backend
        self.settings.save(self.store)
        self.models_bar.set_loaded(spec, info)
        if not self.people_panel.photo_folder:  # a first photo dialog opens on the samples, else on Pictures
            self.people_panel.photo_folder = info.get("samples") or str(default_output_dir().parent)
        self.people_panel.set_expressions_enabled(info["has_imr"])
        self.form.set_default_sampler(info.get("default_sampler", ""))
        self.form.set_decoders(info.get("decoders", ["vae"]))
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

    def _remember_photo_folder(self, folder: str) -> None:
        self.settings.photo_dir = folder
        self.settings.save(self.store)

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
            loras=self.lora_panel.loras(),
            **self.form.values(),
        )
        request.validate()
        return request

    # -- generation ----------------------------------------------------------------------------

    def generate(self) -> bool:
        """Start a generation in the pipeline thread; False (with the reason shown) when it cannot."""
        if self.runner.running:
            return False
        problem = self._why_not_generate()
        request = None
        if problem is None:
            try:
                request = self.build_request()
            except RequestError as exc:
                problem = str(exc)
        if request is None:
            self.error_label.setText(problem)
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("not started")  # not the previous run's "done"
            return False
        left_out = [p for p in self.people.people() if p.status is Status.ERROR]
        if left_out and frozenset((p.key, p.encode_version) for p in left_out) != self._left_out_ok:
            names = ", ".join(p.name for p in left_out)
            self.question_bar.ask(
                f"{names}: no usable face, so {'they are' if len(left_out) > 1 else 'this person is'} not in the image.",
                "Generate without them",
            )
            return False
        self.question_bar.dismiss()
        self.error_label.clear()
        ready = [p for p in self.people.people() if p.status is Status.READY]
        self._run_people = [(p.name, QColor(p.color).getRgb()[:3]) for p in ready]
        self._run_shape = (request.steps, request.best_of)
        self.settings.size, self.settings.steps = (request.width, request.height), request.steps
        self.settings.save(self.store)
        self.progress_bar.setRange(0, request.steps * request.best_of)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat(f"computing step 1/{request.steps * request.best_of}…")  # the log may say more
        self.tabs.show_preview()  # once, at the start: during the run the tabs are the user's
        return self.runner.start(request)

    def _why_not_generate(self) -> str | None:
        if self.loaded_info is None or self.loading:
            return "The models are not loaded yet."
        if not self.form.prompt_edit.toPlainText().strip():
            self.form.prompt_edit.setFocus()
            return "Write a prompt first: describe the picture you want (the grey text is only an example)."
        return None

    def _generate_without_left_out(self) -> None:
        left_out = [p for p in self.people.people() if p.status is Status.ERROR]
        self._left_out_ok = frozenset((p.key, p.encode_version) for p in left_out)
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
        first = self.gallery_model.add(entries_of(result, [color for _, color in self._run_people]))
        self.gallery.select(first)  # the best of a best-of run comes first
        if self.tabs.currentWidget() is self.preview_view:  # the user did not pick another tab meanwhile
            self.tabs.setCurrentWidget(self.tabs.result_tab)
        self.runEnded.emit("done")

    def _on_failed(self, message: str) -> None:
        self.progress_bar.setFormat("failed")
        self.error_label.setText(f"Generation failed: {message}")
        self.runEnded.emit("failed")

    def _on_cancelled(self, _message: str) -> None:
        done, total = self.progress_bar.value(), self.progress_bar.maximum()
        self.progress_bar.setFormat("cancelled")
        # In the user's steps (the sampler's own count can hold one model call more).
        self.statusBar().showMessage(f"Cancelled after step {done} of {total}" if done else "Cancelled before the first step",
                                     10000)
        self.runEnded.emit("cancelled")

    def closeEvent(self, event) -> None:
        self.settings.size = (self.form.width_spin.value(), self.form.height_spin.value())
        self.settings.steps = self.form.steps_spin.value()
        self.settings.save(self.store)
        self.runner.shutdown()
        super().closeEvent(event)
