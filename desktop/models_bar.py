"""The models bar: which model folder and backend are open (and on what device), the controls to
change them, the demo-bundle notice and a closable banner for folder problems."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox, QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton, QStackedWidget, QVBoxLayout, QWidget,
)

from dynamicid_rt import AUTO, BACKENDS as REGISTRY

from .models_download import DownloadOffer
from .settings import BACKENDS
from .views import Banner, ElidedLabel
from .worker import ModelSpec

FOLDER_HINT = "Choose the model folder (base/, image_encoder/, dynamicid/, insightface/)"


def backend_missing(name: str) -> str:
    """Why backend ``name`` cannot run here for lack of packages, with the install line ("": installed)."""
    if name == AUTO or name not in REGISTRY:
        return ""
    info = REGISTRY[name]
    missing = info.missing_packages()
    return f"{name} is not installed (missing {', '.join(missing)}): {info.install_advice()}" if missing else ""


def runs_on_text(info: dict) -> str:
    """“torch on cpu (fp32)” from the loaded pipeline's description."""
    runs_on = info.get("runs_on") or {}
    backend = runs_on.get("backend") or info.get("backend", "")
    device = runs_on.get("gpu") or runs_on.get("device") or ""
    precision = runs_on.get("precision")
    return f"{backend}{' on ' + device if device else ''}{f' ({precision})' if precision else ''}"


class ModelsBar(QWidget):
    chosen = Signal(object)  # ModelSpec the user asked for

    def __init__(self, spec: ModelSpec, parent=None) -> None:
        super().__init__(parent)
        self.spec = spec
        self._in_use = ""  # what the model label said about the models in use, before a load began
        self._loading_text = ""
        self._tiny = False
        self.model_label = ElidedLabel()  # long folder names and activity lines never widen the window
        self.backend_combo = QComboBox()
        for name in BACKENDS:  # the item's data is the backend; its text says whether it is installed
            missing = backend_missing(name)
            self.backend_combo.addItem(f"{name} (not installed)" if missing else name, name)
            self.backend_combo.setItemData(self.backend_combo.count() - 1, missing or None, Qt.ItemDataRole.ToolTipRole)
        self._show_backend(spec.backend)
        self.backend_combo.setToolTip("auto: the fastest backend installed for this machine")
        self.choose_button = QPushButton("Choose model folder…")
        self.demo_button = QPushButton("Use demo bundle")
        self.load_bar = QProgressBar()
        self.load_bar.setRange(0, 0)  # busy: Pipeline.load reports no fractions
        self.load_bar.setMaximumWidth(160)
        policy = self.load_bar.sizePolicy()
        policy.setRetainSizeWhenHidden(True)  # the buttons beside it never move when a load starts or ends
        self.load_bar.setSizePolicy(policy)
        self.notice_label = QLabel()
        self.notice_label.setWordWrap(True)
        self.notice_label.setStyleSheet("background: #fff3cd; color: #5c4400; padding: 4px;")
        self.banner = Banner()
        # The demo notice and the problem banner share one slot of fixed height (the banner first),
        # so that neither moves the window's content when it comes or goes.
        self.message_slot = QStackedWidget()
        self.message_slot.addWidget(QWidget())
        self.message_slot.addWidget(self.notice_label)
        self.message_slot.addWidget(self.banner)
        self.message_slot.setFixedHeight(2 * self.fontMetrics().lineSpacing() + 14)
        self.banner.closed.connect(self._show_message)

        row = QHBoxLayout()
        row.addWidget(QLabel("<b>Models:</b>"))
        row.addWidget(self.model_label, 1)
        row.addWidget(self.load_bar)
        row.addWidget(QLabel("Backend:"))
        row.addWidget(self.backend_combo)
        row.addWidget(self.choose_button)
        row.addWidget(self.demo_button)
        self.download_offer = DownloadOffer()  # first launch without models: offered beside the folder choice
        self.download_offer.setVisible(spec.folder is None)
        self.download_offer.ready.connect(lambda folder: self.chosen.emit(ModelSpec(folder, self.backend_combo.currentText())))
        self.download_offer.message.connect(self.banner.show_message)
        row.addWidget(self.download_offer)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(row)
        column.addWidget(self.message_slot)

        self.choose_button.clicked.connect(self.choose_folder)
        self.demo_button.clicked.connect(lambda: self.chosen.emit(ModelSpec(None, self.backend())))
        self.backend_combo.activated.connect(lambda _: self.chosen.emit(ModelSpec(self.spec.folder, self.backend())))
        self.notice_label.setVisible(False)
        self.set_loading(spec)

    def backend(self) -> str:
        """The backend chosen in the combo box."""
        return str(self.backend_combo.currentData())

    def _show_backend(self, name: str) -> None:
        self.backend_combo.setCurrentIndex(max(0, self.backend_combo.findData(name)))

    def _show_message(self) -> None:
        """The slot shows the banner (a problem), else the demo notice, else nothing."""
        if self.banner.label.text():
            self.message_slot.setCurrentWidget(self.banner)
        elif self.notice_label.text() and self._tiny:
            self.message_slot.setCurrentWidget(self.notice_label)
        else:
            self.message_slot.setCurrentIndex(0)

    def choose_folder(self) -> None:
        start = str(self.spec.folder.parent) if self.spec.folder else ""  # beside the folder in use
        folder = QFileDialog.getExistingDirectory(self, FOLDER_HINT, start)
        if folder:
            self.chosen.emit(ModelSpec(Path(folder), self.backend()))

    @staticmethod
    def _where(spec: ModelSpec) -> str:
        return str(spec.folder) if spec.folder else "tiny demo bundle"

    def set_loading(self, spec: ModelSpec) -> None:
        self.load_bar.setVisible(True)
        self._loading_text = f"Loading {self._where(spec)} on {spec.backend}"
        self.model_label.setText(self._loading_text + "…")

    def set_activity(self, text: str) -> None:
        """What the load is doing now (building the demo bundle, loading an engine…)."""
        self.model_label.setText(f"{self._loading_text}: {text}…")

    def set_loaded(self, spec: ModelSpec, info: dict) -> None:
        """The models in use now; stale problems go."""
        self.spec = spec
        self.load_bar.setVisible(False)
        self._show_backend(spec.backend)
        self._in_use = f"{self._where(spec)} · {runs_on_text(info)}"
        self.model_label.setText(self._in_use)
        self.banner.dismiss()
        self._tiny = spec.folder is None or bool(info.get("is_tiny"))
        self.notice_label.setVisible(self._tiny)
        first = ("No model folder is configured: this is the tiny demo bundle" if spec.folder is None
                 else "This folder is a tiny test bundle")
        self.notice_label.setText(f"{first} (random weights, the images are noise). "
                                  "Use “Choose model folder…” to open the real DynamicID weights.")
        self._show_message()

    def set_rejected(self, spec: ModelSpec, problems: str, still_loaded: bool) -> None:
        """A chosen folder cannot be used: say why; the models in use (if any) stay."""
        self.load_bar.setVisible(False)
        self._show_backend(self.spec.backend)
        kept = f" Still using {self._where(self.spec)}." if still_loaded else ""
        what = f"{spec.backend}" if spec.folder == self.spec.folder and spec.backend != self.spec.backend else self._where(spec)
        self.banner.show_message(f"{what} cannot be used: {problems}.{kept}".replace("..", "."))
        self._show_message()
        self.model_label.setText(self._in_use if still_loaded else "not loaded")

    def set_failed(self, message: str) -> None:
        self.load_bar.setVisible(False)
        self.model_label.setText("not loaded")
        self.banner.show_message(f"Could not load the models: {message}")
        self._show_message()
