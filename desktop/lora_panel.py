"""The LoRA list: user LoRA files with a strength each, and the "Fast (LCM, 4 steps)" preset.

The preset appears once a LoRA whose file name says LCM is in the list: LCM-distilled weights make
4 steps without guidance look like 50 with it (the preset sets the lcm sampler, 4 steps, guidance 1,
and the tiny autoencoder for the final decode where the model folder has one).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from PySide6.QtCore import Signal

from dynamicid_rt import lora_short_hash, prompt_loras
from PySide6.QtWidgets import (
    QDoubleSpinBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QPushButton, QTableWidget, QVBoxLayout, QWidget,
)

FAST_PRESET = {"sampler": "lcm", "steps": 4, "guidance": 1.0, "decoder": "taesd"}  # TAESD where the models have it
MAX_STRENGTH = 4.0


class LoraPanel(QWidget):
    """``loras()`` is what ``Request.loras`` takes; ``fastPreset`` asks the form for :data:`FAST_PRESET`."""

    fastPreset = Signal()
    changed = Signal()  # a LoRA added or removed, or a strength changed
    folderChanged = Signal(str)  # where LoRAs were last chosen from (remembered by the window)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.folder = ""  # where the file dialog opens ("": the listed LoRAs' folder, else home)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["LoRA", "Strength"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(90)
        self.add_button = QPushButton("Add LoRA…")
        self.remove_button = QPushButton("Remove")
        self.fast_button = QPushButton("Fast (LCM, 4 steps)")
        self.fast_button.setToolTip("lcm sampler, 4 steps, guidance 1: for LCM-distilled LoRAs")
        self.fast_button.setVisible(False)
        self.add_button.clicked.connect(self._ask_files)
        self.remove_button.clicked.connect(self._remove_selected)
        self.fast_button.clicked.connect(self.fastPreset)
        buttons = QHBoxLayout()
        for button in (self.add_button, self.remove_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("LoRAs"))
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        layout.addWidget(self.fast_button)
        self._paths: list[Path] = []

    def add(self, path: str | Path, strength: float = 1.0) -> None:
        """List ``path`` (once; adding it again sets its strength)."""
        path = Path(path)
        if path in self._paths:
            self._spin(self._paths.index(path)).setValue(strength)
            return
        row = self.table.rowCount()
        self.table.insertRow(row)
        self.table.setCellWidget(row, 0, QLabel(path.stem))
        self.table.cellWidget(row, 0).setToolTip(str(path))
        spin = QDoubleSpinBox()
        spin.setRange(0.0, MAX_STRENGTH)
        spin.setSingleStep(0.05)
        spin.setValue(strength)
        spin.valueChanged.connect(lambda _: self.changed.emit())
        self.table.setCellWidget(row, 1, spin)
        self._paths.append(path)
        self._update_fast()
        self.changed.emit()

    def loras(self) -> list[tuple[Path, float]]:
        return [(path, self._spin(row).value()) for row, path in enumerate(self._paths)]

    def set_loras(self, loras) -> None:
        """Replace the list (restoring a request's LoRAs)."""
        self.table.setRowCount(0)
        self._paths.clear()
        for path, strength in loras:
            self.add(path, strength)
        self._update_fast()
        self.changed.emit()

    def names(self) -> dict[str, float]:
        """The listed LoRAs by the name a prompt tag gives them (the file name without .safetensors)."""
        return {path.stem: strength for path, strength in self.loras()}

    def tag_problems(self, prompt: str) -> list[str]:
        """What the prompt's ``<lora:name:scale>`` tags say that the list does not run: a tag
        without a listed LoRA (the run would go without it), or another strength than the list's."""
        listed = self.names()
        problems = []
        for name, scale in prompt_loras(prompt):
            if name not in listed:
                problems.append(f"<lora:{name}> is not in the LoRA list: add {name}.safetensors or remove the tag")
            elif abs(listed[name] - scale) > 1e-6:
                problems.append(f"<lora:{name}:{scale:g}>: the list's strength {listed[name]:g} is used")
        return problems

    def unlisted(self, prompt: str) -> list[str]:
        """Names the prompt tags that no listed LoRA has."""
        listed = self.names()
        return [name for name, _ in prompt_loras(prompt) if name not in listed]

    def restore(self, params: Mapping[str, Any]) -> list[str]:
        """The LoRAs a restored image's prompt tags (``<lora:name:scale>``), looked up by name among
        the listed files and the other ``.safetensors`` in their folders; one with a ``Lora hashes``
        entry must match it. A prompt without tags leaves the list as it is. Returns notes on the
        files that differ from the image's (a tag without a file shows under the prompt instead,
        for as long as it has none)."""
        tags = prompt_loras(str(params.get("prompt", "")))
        if not tags:
            return []
        hashes = params.get("lora_hashes") or {}
        known = {p.stem: p for folder in {p.parent for p in self._paths} for p in sorted(folder.glob("*.safetensors"))}
        known.update({p.stem: p for p in self._paths})
        found, notes = [], []
        for name, scale in tags:
            path = known.get(name)
            if path is None:
                continue  # the prompt note under the prompt says so while the tag has no LoRA
            elif name in hashes and lora_short_hash(path) != hashes[name]:
                notes.append(f"LoRA {name}: {path.name} has another hash than the image's, not restored")
            else:
                found.append((path, scale))
        self.set_loras(found)
        return notes

    def _spin(self, row: int) -> QDoubleSpinBox:
        return self.table.cellWidget(row, 1)

    def _ask_files(self) -> None:
        start = self.folder or (str(self._paths[-1].parent) if self._paths else str(Path.home()))
        files, _ = QFileDialog.getOpenFileNames(self, "Add LoRAs", start, "LoRA (*.safetensors)")
        if files:
            self.folder = str(Path(files[0]).parent)
            self.folderChanged.emit(self.folder)
        for name in files:
            self.add(name)

    def _remove_selected(self) -> None:
        for row in sorted({index.row() for index in self.table.selectedIndexes()}, reverse=True):
            self.table.removeRow(row)
            del self._paths[row]
        self._update_fast()
        self.changed.emit()

    def _update_fast(self) -> None:
        self.fast_button.setVisible(any("lcm" in path.stem.lower() for path in self._paths))
