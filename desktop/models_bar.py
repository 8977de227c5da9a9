"""The models bar: which model folder and backend are open (and on what device), the controls to
change them, the demo-bundle notice and a closable banner for folder problems."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from .models_download import DownloadOffer
from .settings import BACKENDS
from .views import Banner, ElidedLabel
from .worker import ModelSpec

FOLDER_HINT = "Choose the model folder (base/, image_encoder/, dynamicid/, insightface/)"


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
        self.model_label = ElidedLabel()  # long folder names and activity lines never widen the window
        self.backend_combo = QComboBox()
        self.backend_combo.addItems(list(BACKENDS))
        self.backend_combo.setCurrentText(spec.backend)
        self.backend_combo.setToolTip("auto: the fastest backend installed for this machine")
        self.choose_button = QPushButton("Choose model folder…")
        self.demo_button = QPushButton("Use demo bundle")
        self.load_bar = QProgressBar()
        self.load_bar.setRange(0, 0)  # busy: Pipeline.load reports no fractions
        self.load_bar.setMaximumWidth(160)
        self.notice_label = QLabel()
        self.notice_label.setWordWrap(True)
        self.notice_label.setStyleSheet("background: #fff3cd; color: #5c4400; padding: 4px;")
        self.banner = Banner()

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
        column.addWidget(self.notice_label)
        column.addWidget(self.banner)

        self.choose_button.clicked.connect(self.choose_folder)
        self.demo_button.clicked.connect(lambda: self.chosen.emit(ModelSpec(None, self.backend_combo.currentText())))
        self.backend_combo.activated.connect(lambda _: self.chosen.emit(ModelSpec(self.spec.folder, self.backend_combo.currentText())))
        self.set_loading(spec)

    def choose_folder(self) -> None:
        start = str(self.spec.folder.parent) if self.spec.folder else ""  # beside the folder in use
        folder = QFileDialog.getExistingDirectory(self, FOLDER_HINT, start)
        if folder:
            self.chosen.emit(ModelSpec(Path(folder), self.backend_combo.currentText()))

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
        self.backend_combo.setCurrentText(spec.backend)
        self._in_use = f"{self._where(spec)} · {runs_on_text(info)}"
        self.model_label.setText(self._in_use)
        self.banner.dismiss()
        tiny = spec.folder is None or bool(info.get("is_tiny"))
        self.notice_label.setVisible(tiny)
        first = ("No model folder is configured: this is the tiny demo bundle" if spec.folder is None
                 else "This folder is a tiny test bundle")
        self.notice_label.setText(f"{first} (random weights, the images are noise). "
                                  "Use “Choose model folder…” to open the real DynamicID weights.")

    def set_rejected(self, spec: ModelSpec, problems: str, still_loaded: bool) -> None:
        """A chosen folder cannot be used: say why; the models in use (if any) stay."""
        self.load_bar.setVisible(False)
        self.backend_combo.setCurrentText(self.spec.backend)
        kept = f" Still using {self._where(self.spec)}." if still_loaded else ""
        self.banner.show_message(f"{self._where(spec)} cannot be used: {problems}.{kept}".replace("..", "."))
        self.model_label.setText(self._in_use if still_loaded else "not loaded")

    def set_failed(self, message: str) -> None:
        self.load_bar.setVisible(False)
        self.model_label.setText("not loaded")
        self.banner.show_message(f"Could not load the models: {message}")
