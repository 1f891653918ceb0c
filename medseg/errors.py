"""Exceptions raised by medseg.

Every error that a user can cause (a bad file, a bad dataset, a bad option) is a
:class:`MedsegError` with a message that names the file and the problem, so that CLIs and the
napari plugin can show it as-is instead of a traceback.
"""

from __future__ import annotations


class MedsegError(Exception):
    """Base class of every error medseg raises on purpose."""


class ImageReadError(MedsegError):
    """An input image (file or folder) cannot be read as an image with trustworthy geometry."""


class GeometryError(MedsegError):
    """Geometry is inconsistent: missing slices, non-uniform spacing, gantry tilt, grid mismatch."""


class ImageWriteError(MedsegError):
    """An output cannot be written (bad target, geometry the format cannot hold)."""


class DatasetError(MedsegError):
    """A training/evaluation dataset is malformed (missing pairs, shape mismatch, bad labels)."""


class ModelError(MedsegError):
    """A model or checkpoint cannot be found, loaded or applied to the given input."""


class DomainError(MedsegError):
    """The image does not fit the model's training domain (a strict run refuses it)."""


class ConfigError(MedsegError):
    """A configuration file or option is invalid."""


class CancelledError(MedsegError):
    """Long-running work was cancelled by the caller (e.g. the napari cancel button)."""


def describe_exception(exc: BaseException) -> str:
    """The last line of ``str(exc)``, or the exception's type name when that is empty (so no
    one-line reason ends in an empty string)."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
