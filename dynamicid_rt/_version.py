"""The package version. It imports nothing, so any module can read it without importing the
package's ``__init__`` (which re-exports it); pyproject.toml states the same number."""
__version__ = "0.1.0"
