"""Error types. Every error a user can cause is a GeodetectError; the CLI prints it as one line."""

from __future__ import annotations


class GeodetectError(Exception):
    """Root of every user-facing error; `str(err)` is the one line shown after `error: `."""


class InputError(GeodetectError, ValueError):
    """Bad user input: arguments, configs, values that make no sense."""


class RasterError(GeodetectError, OSError):
    """A raster cannot be opened or read."""


class PointCloudError(GeodetectError, OSError):
    """A LAS/LAZ file cannot be opened or read."""


class LabelError(GeodetectError, ValueError):
    """A label or detection file is missing, unreadable or invalid."""


class CRSError(GeodetectError, ValueError):
    """A coordinate reference system is missing or incompatible."""


class ModelError(GeodetectError, ValueError):
    """A model file is not ours, is corrupt, or does not fit the input."""


class DeviceError(GeodetectError, RuntimeError):
    """The requested compute device is not available."""


def first_line(exc: BaseException) -> str:
    """An exception's first line: what a one-line error may quote of a library's message."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    """A (CUDA) out-of-memory error of torch or ONNX Runtime, told without importing either:
    torch's `OutOfMemoryError` by name, the others by their message."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return "out of memory" in text or "failed to allocate" in text
