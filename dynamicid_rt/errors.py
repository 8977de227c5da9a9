"""Exceptions the runtime raises for bad input; each message says what was wrong and how to fix it."""


class DynamicIDError(Exception):
    """Base class of every error the runtime raises on purpose."""


class ModelFolderError(DynamicIDError):
    """A model folder or one of its files is missing or malformed."""


class CheckpointError(DynamicIDError):
    """A checkpoint lacks keys, has unexpected keys or wrong shapes."""


class ImageError(DynamicIDError):
    """A photo could not be read or is unusable (too small, too large, not an image)."""


class NoFaceError(ImageError):
    """No face was found in a reference photo."""


class RequestError(DynamicIDError, ValueError):
    """A generation request is inconsistent (sizes, boxes, identities...)."""


class BackendError(DynamicIDError):
    """A backend is unknown, not installed, or cannot run the asked device or precision here."""


class OutputError(RequestError):
    """An output path cannot be written safely (a folder, an input file, unwritable, wrong extension)."""


class NumericalError(DynamicIDError):
    """A stage produced NaN or infinite values."""


class Cancelled(DynamicIDError):
    """Generation was cancelled between two steps. ``partial_result``, when sampling had begun,
    makes the Result of the current latent, decoded (A1111's image of an interrupted job); it is
    only computed when called."""

    partial_result = None


class DownloadError(DynamicIDError):
    """Getting the models from the Hugging Face Hub failed: a gated or missing repo, no disk space,
    offline with files missing (the message names what and what to do)."""
