"""Atomic file writes: write to a temp file beside the target, then rename.

A writer killed half-way leaves the previous file intact and nothing under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from geodetect.errors import InputError


def check_out_dir(path: str | Path) -> Path:
    """The output path, after checking that its folder exists (a clean error, not a traceback)."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{p}: folder {parent} does not exist")
    return p


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success rename it over `final`.

    The temp name keeps the final extension (GDAL/OGR pick drivers by extension).
    """
    final = check_out_dir(final)
    suffix = suffix if suffix is not None else "".join(final.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=suffix, dir=final.parent or "."
    )
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # let the writer create it (some drivers refuse an existing empty file)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        _remove_quietly(tmp)
        # sidecars some drivers write next to the temp file (e.g. shapefile parts, .aux.xml)
        for side in tmp.parent.glob(tmp.stem + ".*"):
            _remove_quietly(side)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        path.unlink()
