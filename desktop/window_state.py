"""What the main window remembers between sessions and how it closes: the generation settings
(size, sampler, steps, guidance and LoRAs, saved and restored together so that they fit each
other), the window's geometry (fitted to the screen it opens on), and Quit, which asks before
results that are in no file are lost."""
from __future__ import annotations

from PySide6.QtWidgets import QMessageBox

DEFAULT_SIZE = (1280, 800)  # the window's first size, on a screen that has room for it


class WindowState:
    """Part of :class:`~.app.MainWindow` (which provides the attributes used here)."""

    def restore_settings(self) -> None:
        """The last session's generation settings into the form and the LoRA list, and its geometry."""
        s = self.settings
        # apply() sets the sampler before the steps, so its step limit is in place for them.
        self.form.apply({"width": s.size[0], "height": s.size[1], "sampler": s.sampler, "steps": s.steps,
                         "guidance": s.guidance})
        present = [(path, strength) for path, strength in s.loras if path.is_file()]
        self.lora_panel.set_loras(present)
        self.lora_panel.folder = s.lora_dir
        gone = [path.name for path, _ in s.loras if not path.is_file()]
        if gone:
            self.messages.show_problem(f"LoRA files of the last session are gone, so they are not in the list: {', '.join(gone)}")
        if s.geometry is None or not self.restoreGeometry(s.geometry):
            self.resize(*DEFAULT_SIZE)

    def remember_generation(self) -> None:
        """The form's generation settings and the LoRA list, saved together."""
        s = self.settings
        s.size = (self.form.width_spin.value(), self.form.height_spin.value())
        s.steps = self.form.steps_spin.value()
        s.sampler = str(self.form.sampler_combo.currentData())
        s.guidance = self.form.guidance_spin.value()
        s.loras = self.lora_panel.loras()
        s.save(self.store)

    def fit_to_screen(self) -> None:
        """Keep the whole window, frame included, on the screen's free area (no status bar off the
        bottom edge), however large it was asked or remembered."""
        screen = self.screen()
        if screen is None:
            return
        room = screen.availableGeometry()
        frame = self.frameGeometry()
        extra_w, extra_h = frame.width() - self.width(), frame.height() - self.height()
        width = max(self.minimumWidth(), min(self.width(), room.width() - extra_w))
        height = max(self.minimumHeight(), min(self.height(), room.height() - extra_h))
        if (width, height) != (self.width(), self.height()):
            self.resize(width, height)
        frame = self.frameGeometry()
        x = min(max(frame.x(), room.x()), room.right() + 1 - frame.width())
        y = min(max(frame.y(), room.y()), room.bottom() + 1 - frame.height())
        if (x, y) != (frame.x(), frame.y()):
            self.move(max(x, room.x()), max(y, room.y()))

    def confirm_close(self) -> bool:
        """True when the window may close: every result is in a file, or the user says so."""
        unsaved = self.gallery_model.unsaved()
        if not unsaved:
            return True
        n = len(unsaved)
        box = QMessageBox(QMessageBox.Icon.Question, "Quit DynamicID",
                          f"{n} result{'s' if n > 1 else ''} of this session {'are' if n > 1 else 'is'} not saved.",
                          QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                          | QMessageBox.StandardButton.Cancel, self)
        box.setInformativeText(f"Save {'them' if n > 1 else 'it'} in {self.gallery.output_dir} before quitting?")
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        box.setEscapeButton(QMessageBox.StandardButton.Cancel)
        self.close_question = box  # for tests and screenshots: the question being asked
        answer = box.exec()
        self.close_question = None
        if answer == QMessageBox.StandardButton.Save:
            return self.gallery.save_all_unsaved()  # a failure says why and keeps the window open
        return answer == QMessageBox.StandardButton.Discard

    def closeEvent(self, event) -> None:
        if not self.confirm_close():
            event.ignore()
            return
        self.remember_generation()
        self.settings.geometry = self.saveGeometry()
        self.settings.save(self.store)
        self.runner.shutdown()
        super().closeEvent(event)
