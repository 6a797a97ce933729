"""Scene arguments -> scene paths: the command line's IMAGE globs and `--from-list` files.

Before anything opens a scene (STAC items are resolved next, by `stac.resolve_scenes`), so
`infer` only ever sees a list of paths. Small and import-light: the CLI calls it first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from geodetect.errors import InputError
from geodetect.remote import is_remote


def expand_images(args: Sequence[str], from_list: str | Path | None = None) -> list[str]:
    """IMAGE arguments and `--from-list FILE` lines as scene paths, in order, duplicates once.

    An argument that is not an existing file is a glob pattern (quoted on the command line,
    or too many files for the shell); a pattern matching nothing is an error. List lines are
    paths as given (relative to the working folder); blank lines and `#` comments are skipped.
    """
    import glob

    found: list[str] = []
    for arg in args:
        if Path(arg).exists() or is_remote(arg) or not glob.has_magic(arg):
            found.append(arg)  # missing plain paths fail later with the raster's own error
            continue
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            raise InputError(f"{arg}: no file matches this pattern")
        found += matches
    if from_list is not None:
        lst = Path(from_list)
        if not lst.is_file():
            raise InputError(f"--from-list {lst}: no such file")
        lines = lst.read_text(errors="replace").splitlines()
        found += [s for line in lines if (s := line.strip()) and not s.startswith("#")]
    if not found:
        raise InputError("no scenes: give IMAGE arguments (paths or globs) or --from-list FILE")
    return list(dict.fromkeys(found))
