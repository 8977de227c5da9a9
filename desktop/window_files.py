"""Files in and out of the main window: saving the selected image, restoring a saved PNG's
settings (from a drop or a path), and photos dropped on the window."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QFileDialog

from dynamicid_rt import DynamicIDError, parse_parameters, read_parameters

from .restore import restore_people


class WindowFiles:
    """Part of :class:`~.app.MainWindow` (which provides the attributes used here)."""

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
            params = parse_parameters(text) if text else None
        except (OSError, DynamicIDError) as exc:  # not an image, or parameters no writer makes
            self.messages.show_problem(f"Could not read {path}: {exc}")
            return False
        if params is None:
            self.messages.show_problem(f"{Path(path).name} holds no generation parameters")
            return False
        self.apply_parameters(params)
        self.statusBar().showMessage(f"Restored the settings of {Path(path).name}", 10000)
        return True

    def apply_parameters(self, params: dict) -> None:
        """Parsed PNG parameters back into the form (its one binding) and onto the people present;
        the restored boxes are one undo step."""
        skipped = self.form.apply(params) + self.layout_tab.start_bar.apply(params)  # the start photo's strength and blur
        notes = [f"{name} could not be restored" for name in skipped]
        if "mix" in params:
            self.layout_tab.set_mix(params["mix"])
        before = self.people.history.snapshot()
        notes += restore_people(self.people, params)
        notes += self.lora_panel.restore(params)
        self.people.history.record(before, "restore boxes")
        text = "Restored the settings; " + "; ".join(notes) if notes else ""
        people = [p.key for p in self.people.people()]
        # The notes are about these people and files: they go once the people change.
        self.messages.show_problem(text, recheck=lambda: text if [p.key for p in self.people.people()] == people else None)

    # -- drag and drop -------------------------------------------------------------------------

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self.handle_dropped([u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()])
        event.acceptProposedAction()

    def handle_dropped(self, paths: list[str]) -> None:
        """A saved PNG with parameters restores them; a ``.safetensors`` file joins the LoRA list;
        other files are offered as photos of people (which says what is not a photo)."""
        photos = []
        for path in paths:
            if path.lower().endswith(".safetensors"):
                self.lora_panel.add(path)
                self.statusBar().showMessage(f"Added the LoRA {Path(path).stem} to the LoRA list", 10000)
            elif path.lower().endswith(".png") and _has_parameters(path):
                self.restore_parameters(path)
            else:
                photos.append(path)
        if photos:
            self.people_panel.add_photos(photos)


def _has_parameters(path: str) -> bool:
    try:
        return read_parameters(path) is not None
    except (OSError, DynamicIDError):
        return False
