"""The DynamicID desktop app (PySide6): ``dynamicid-rt desktop`` or ``python -m dynamicid_rt.desktop``."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the app; returns the exit status. ``--models``/``--backend`` override the saved choice
    for this session only."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="dynamicid-rt desktop", description="DynamicID desktop app")
    parser.add_argument("--models", type=Path, help="model folder (default: the saved choice, else the tiny demo bundle)")
    parser.add_argument("--backend", help="backend: auto or a registered one (default: the saved choice)")
    args, qt_args = parser.parse_known_args(args_in)
    try:
        from PySide6.QtWidgets import QApplication
    except ImportError:
        log.error("the desktop app needs PySide6: pip install 'dynamicid-rt[desktop]'")
        return 2
    from .app import MainWindow
    from .settings import BACKENDS, AppSettings
    from .worker import ModelSpec

    if args.backend is not None and args.backend not in BACKENDS:
        parser.error(f"--backend {args.backend}: choose one of {', '.join(BACKENDS)}")
    app = QApplication.instance()
    if app is None:
        from .platform_check import qt_platform_problem

        problem = qt_platform_problem(qt_args)  # Qt itself would abort the process (exit 134)
        if problem is not None:
            log.error("%s", problem)
            return 1
        app = QApplication(["dynamicid-rt", *qt_args])
    app.setOrganizationName("dynamicid-rt")
    app.setApplicationName("desktop")
    override = None
    if args.models is not None or args.backend is not None:
        from PySide6.QtCore import QSettings

        saved = AppSettings.load(QSettings("dynamicid-rt", "desktop"))
        override = ModelSpec(args.models or saved.model_dir, args.backend or saved.backend)
    window = MainWindow(spec_override=override)
    window.show()
    return int(app.exec())


__all__ = ["main"]
