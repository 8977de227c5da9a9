"""Can Qt open a window here? Asked before the QApplication exists, because Qt answers "no" (no
display, a stale DISPLAY, an unknown QT_QPA_PLATFORM, missing xcb libraries) by aborting the
process. A throwaway process meets that abort instead, and its reason becomes one line."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Mapping, Sequence

_PROBE = "import sys; from PySide6.QtGui import QGuiApplication; QGuiApplication(sys.argv)"
_ADVICE = "start the desktop app in a graphical session (or over ssh -X), or use `dynamicid-rt generate` on this machine"


def qt_platform_problem(qt_args: Sequence[str] = (), env: Mapping[str, str] | None = None, timeout: float = 30.0) -> str | None:
    """None when Qt can start its platform with these arguments and environment; else why not."""
    env = dict(os.environ if env is None else env)
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, *qt_args], env=env, capture_output=True, text=True,
                               timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"Qt did not start its display connection within {timeout:.0f} s; {_ADVICE}"
    if probe.returncode == 0:
        return None
    return describe_failure(probe.stderr, env)


def describe_failure(stderr: str, env: Mapping[str, str]) -> str:
    """Qt's own first complaint, with what to do about it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    qpa = [re.sub(r"^qt\.qpa\.[\w.]+:\s*", "", line) for line in lines if line.startswith("qt.qpa")]
    reason = qpa[0] if qpa else (lines[0] if lines else "Qt stopped without saying why")
    available = next((line.split(":", 1)[1].strip().rstrip(".") for line in lines if line.startswith("Available platform plugins")), "")
    platform = env.get("QT_QPA_PLATFORM")
    if platform and "Could not find the Qt platform plugin" in reason:
        return f"QT_QPA_PLATFORM={platform}: Qt has no such platform; unset it or use one of: {available}"
    if "could not connect to display" in reason:
        where = f"DISPLAY={env['DISPLAY']}" if env.get("DISPLAY") else "no DISPLAY"
        return f"cannot open a window: {reason} ({where}: no X server answers there); {_ADVICE}"
    return f"cannot open a window: {reason}; {_ADVICE}"
