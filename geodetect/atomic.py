"""Atomic file writes and the overwrite guard.

A writer killed half-way leaves the previous file intact and nothing under the final name;
no command writes over one of its own inputs (`check_not_input`, called before any work).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from geodetect.errors import InputError

_REMOTE = ("/vsi", "http://", "https://", "s3://", "gs://", "az://", "ftp://")


def check_out_dir(path: str | Path) -> Path:
    """The output path, after checking that its folder exists and that it is not a folder."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{p}: folder {parent} does not exist")
    if p.is_dir():
        raise InputError(f"{p}: is a folder; give a file name")
    return p


def _local(path: str | Path | None) -> Path | None:
    """A local path for comparison, or None for URLs / GDAL virtual paths (never written)."""
    if path is None or str(path) == "" or str(path).startswith(_REMOTE):
        return None
    return Path(path).expanduser().resolve()  # resolve() follows symbolic links


def _same(a: Path, b: Path) -> bool:
    """Same file: same resolved path, or the same inode through a hard link."""
    if a == b:
        return True
    with contextlib.suppress(OSError):
        return a.exists() and b.exists() and os.path.samefile(a, b)
    return False


def check_not_input(
    outputs: str | Path | Iterable[str | Path],
    inputs: Iterable[str | Path | None],
    what: str = "--out",
    folders: Iterable[str | Path] = (),
) -> None:
    """Refuse to write over an input: InputError naming both, before any work.

    An output clashes with an input when it is the same path, the same file through a
    (symbolic or hard) link, or lies inside an input folder. `folders` are output folders
    the command fills or cleans (samples, part files): an input inside one clashes too.
    """
    outs = [outputs] if isinstance(outputs, str | Path) else list(outputs)
    ins = [(str(i), p) for i in inputs if (p := _local(i)) is not None]
    for out in outs:
        o = _local(out)
        if o is None:
            continue
        for name, i in ins:
            if _same(o, i) or (i.is_dir() and i in o.parents):
                raise InputError(
                    f"{what} {out}: would overwrite the input {name}; choose another path"
                )
    for folder in folders:
        f = _local(folder)
        if f is None:
            continue
        for name, i in ins:
            if _same(f, i) or f in i.parents or (i.is_dir() and i in f.parents):
                raise InputError(
                    f"{what} {folder}: the input {name} is inside this output folder, which "
                    "is rewritten; keep inputs elsewhere"
                )


def fsync_file(path: str | Path) -> None:
    """Flush a finished temp file to disk before it is renamed over the old one."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make a rename durable (the folder entry); some file systems refuse: ignored."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success fsync it and rename over `final`.

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
        if tmp.is_file():
            fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent if str(final.parent) else ".")
    finally:
        _remove_quietly(tmp)
        # sidecars some drivers write next to the temp file (e.g. shapefile parts, .aux.xml)
        for side in tmp.parent.glob(tmp.stem + ".*"):
            _remove_quietly(side)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        path.unlink()
