"""Files on disk, safely: atomic writes (``atomic``), regular-file checks before any read
(``checks``), and the stamps that say a cached file is still the one that was verified (``stamps``).

Imports only the core modules (``errors``); every other wing may use it.
"""
