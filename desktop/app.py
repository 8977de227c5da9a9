"""The main window: wires the models bar, the people panel and box canvas, the settings form, the
run controller and the gallery together. Each of those is its own module; this one only connects
their signals (the request and its run: :mod:`.window_run`; files in and out: :mod:`.window_files`;
what it remembers and how it closes: :mod:`.window_state`)."""
from __future__ import annotations

from typing import Any, Callable

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from dynamicid_rt import BACKENDS, cpu_fastest_path

from .gallery import GalleryModel, GalleryPanel
from .image_tabs import ImageTabs
from .layout_tab import LayoutTab
from .messages import MessageStrip
from .models_bar import ModelsBar, runs_on_text
from .people import PeopleModel, Status
from .people_panel import PANEL_WIDTH, PeoplePanel
from .run_controller import RunController
from .settings import AppSettings, is_hidden, pictures_dir
from .lora_panel import FAST_PRESET, LoraPanel
from .settings_form import DEFAULTS, FORM_WIDTH, SettingsForm
from .views import ElidedLabel, QuestionBar
from .window_files import WindowFiles
from .window_run import WindowRun
from .window_state import WindowState
from .worker import ModelSpec, default_pipeline_factory


def _side_column(widget: QWidget, width: int) -> QScrollArea:
    """A column that scrolls vertically when the window is short, never sideways."""
    scroll = QScrollArea()
    scroll.setWidget(widget)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    # As wide as its widest row needs, plus room for the scroll bar from the start: one appearing
    # never covers or squeezes the column.
    if widget.minimumWidth() != widget.maximumWidth():  # not of a fixed width
        width = max(width, widget.minimumSizeHint().width())
    scroll.setFixedWidth(width + scroll.verticalScrollBar().sizeHint().width() + 2)
    return scroll


class MainWindow(WindowRun, WindowState, WindowFiles, QMainWindow):
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
        self._asking = ""  # what the question bar asks: "left out" (faceless photos) or "lora tags"

        self.people = PeopleModel(self)
        self.runner = RunController(pipeline_factory, self)
        self.models_bar = ModelsBar(self.spec)
        self.people_panel = PeoplePanel(self.people)
        self.layout_tab = LayoutTab(self.people, self.people_panel.list.selectionModel(), DEFAULTS.mix)
        self.canvas = self.layout_tab.canvas
        self.start_photo = self.layout_tab.start_photo
        self.form = SettingsForm()
        self.lora_panel = LoraPanel()
        self.people_panel.photo_folder = self.settings.photo_dir
        self.layout_tab.start_bar.photo_folder = str(pictures_dir())
        self.gallery_model = GalleryModel(self)
        self.gallery = GalleryPanel(self.gallery_model, self.settings.output_dir, self.settings.save_each)
        self.close_question = None  # the Quit question while it is asked
        self._fitted = False
        self._build_ui()
        self._build_menus()
        self._connect()
        self.restore_settings()  # after _connect: the canvas follows the restored size like any other
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
        form_column = QWidget()  # the settings, then the LoRA list
        form_layout = QVBoxLayout(form_column)
        form_layout.setContentsMargins(4, 4, 4, 4)
        form_layout.addWidget(self.form)
        form_layout.addWidget(self.lora_panel)
        form_layout.addStretch(1)
        self.form_scroll = _side_column(form_column, FORM_WIDTH)
        self.people_scroll = _side_column(self.people_panel, PANEL_WIDTH)
        columns = QHBoxLayout()  # the side columns have fixed widths: the middle takes the rest
        columns.addWidget(self.people_scroll)
        columns.addWidget(middle, 1)
        columns.addWidget(self.form_scroll)

        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip("Ctrl+Enter")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Esc")
        self.progress_bar = QProgressBar()
        self.progress_bar.setFormat("idle")
        self.progress_bar.setValue(0)
        self.question_bar = QuestionBar()
        self.messages = MessageStrip(self.question_bar)  # problems and questions, in one place of fixed height
        self.error_label = self.messages.label
        gen_row = QHBoxLayout()
        gen_row.addWidget(self.generate_button)
        gen_row.addWidget(self.cancel_button)
        gen_row.addWidget(self.progress_bar, 1)

        central = QWidget()
        root = QVBoxLayout(central)
        root.setContentsMargins(6, 4, 6, 2)
        root.setSpacing(4)
        root.addWidget(self.models_bar)
        root.addLayout(columns, 1)
        root.addLayout(gen_row)
        root.addWidget(self.messages)
        self.setCentralWidget(central)
        # The status bar's own labels stay short, so that its messages ("Saved …") keep the room.
        self.runs_on_label = ElidedLabel()
        self.runs_on_label.setMaximumWidth(240)
        self.statusBar().addPermanentWidget(self.runs_on_label)
        # The CPU's fastest path: a user's CPU speed depends on a feature they have never heard of.
        self.cpu_label = ElidedLabel(cpu_fastest_path())
        self.cpu_label.setToolTip(f"What this CPU can do: {self.cpu_label.text()}")
        self.cpu_label.setMaximumWidth(200)
        self.statusBar().addPermanentWidget(self.cpu_label)
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
        self.save_each_action = QAction("Save each result", self, checkable=True)
        self.save_each_action.setChecked(self.gallery.save_each_check.isChecked())
        self.save_each_action.toggled.connect(self.gallery.save_each_check.setChecked)
        self.gallery.saveEachChanged.connect(self.save_each_action.setChecked)
        file_menu.addAction(self.save_each_action)
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
        run_menu.addSeparator()
        self.start_from_result_action = action(run_menu, "Start from the selected result", self.start_from_result, "Ctrl+I")
        self.gallery.view.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)  # also on a right-click
        self.gallery.view.addAction(self.start_from_result_action)

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
        self.people_panel.filesDropped.connect(self.handle_dropped)
        self.question_bar.accepted.connect(self._answer_yes)
        self.people.rowsRemoved.connect(lambda *_: self.question_bar.dismiss())  # the question may no longer apply
        self.models_bar.chosen.connect(self.set_models)
        start_bar = self.layout_tab.start_bar
        start_bar.photoChosen.connect(self.start_from_photo)
        start_bar.problem.connect(self.messages.show_problem)
        self.people.set_region_boxes(self.mask_regions)
        # An untouched layout follows the mask (and its blur) as it is painted.
        for signal in (self.start_photo.maskChanged, start_bar.blur_spin.valueChanged):
            signal.connect(lambda *_: self.people.set_region_boxes(self.mask_regions))
        for spin in (self.form.width_spin, self.form.height_spin):
            spin.valueChanged.connect(lambda _: self._follow_size())
        self._follow_size()
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.gallery.selected.connect(self.tabs.show_entry)
        self.gallery.reuseSeed.connect(lambda seed: self.form.apply({"seed": seed}))
        self.lora_panel.fastPreset.connect(lambda: self.form.apply(FAST_PRESET))
        self.lora_panel.folderChanged.connect(self._remember_lora_folder)
        self.gallery.saveEachChanged.connect(self._remember_save_each)
        self.gallery.message.connect(lambda text: self.statusBar().showMessage(text, 10000))
        self.gallery.problem.connect(self.messages.show_problem)
        # After every edit: the prompt's LoRA note follows the prompt and the list, and a problem
        # shown earlier goes once it no longer applies (or says what applies now).
        for signal in (self.form.changed, self.lora_panel.changed, self.people.dataChanged, self.people.rowsInserted,
                       self.people.rowsRemoved, self.people.mixChanged, start_bar.changed, self.start_photo.maskChanged,
                       self.start_photo.photoChanged):
            signal.connect(lambda *_: self._on_edit())
        self._on_edit()
        self.gallery.save_button.clicked.connect(lambda: self.gallery.save_current())
        self.gallery.save_as_button.clicked.connect(self.save_as)
        self.gallery.open_folder_button.clicked.connect(self.open_output_folder)

    # -- models --------------------------------------------------------------------------------

    def _follow_size(self) -> None:
        """The canvas has the size fields' aspect at every moment (restored, typed, or from a PNG)."""
        self.layout_tab.set_output_size(self.form.width_spin.value(), self.form.height_spin.value())

    def _on_edit(self) -> None:
        self.form.prompt_note.setText("\n".join(self.lora_panel.tag_problems(self.form.prompt_edit.toPlainText())))
        self.messages.recheck()

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
            samples = info.get("samples") or ""
            self.people_panel.photo_folder = samples if samples and not is_hidden(samples) else str(pictures_dir())
        self.people_panel.set_expressions_enabled(info["has_imr"])
        self.form.set_default_sampler(info.get("default_sampler", ""))
        if info.get("max_steps"):
            self.form.set_step_limits(info["max_steps"])
        backend = (info.get("runs_on") or {}).get("backend") or info["backend"]
        self.tabs.set_maps_available(backend in BACKENDS and "activation_maps" in BACKENDS[backend].capabilities)
        self.form.set_decoders(info.get("decoders", ["vae"]))
        runs_on = runs_on_text(info)
        self.setWindowTitle(f"DynamicID — {runs_on}")
        self.runs_on_label.setText(f"Running on {runs_on}")
        self.statusBar().showMessage(f"Models loaded in {info['seconds']:.1f} s", 10000)
        self.messages.recheck()
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

    def _remember_lora_folder(self, folder: str) -> None:
        self.settings.lora_dir = folder
        self.settings.save(self.store)

    def _remember_save_each(self, on: bool) -> None:
        self.settings.save_each = on
        self.settings.save(self.store)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._fitted:  # once: later the size is the user's
            self._fitted = True
            self.fit_to_screen()
            QTimer.singleShot(0, self.fit_to_screen)  # again once the window manager has added its frame
