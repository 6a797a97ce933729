"""Resume manifest: which tasks of a run are finished, keyed by everything that shapes them.

A task's key is the sha256 of a canonical JSON document holding the model file's sha256, the
scene's checksum and the inference parameters (plus the task's own extent), so changing the
model, a scene or a parameter invalidates exactly the affected tasks. The manifest itself is an
append-only JSON-lines file, one record per finished task, flushed and fsync'ed after each
record: a `kill -9` can at worst cut the last line, which is ignored on reading. A record only
counts when its part file exists too (parts are written atomically *before* the record).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geodetect.errors import InputError

MANIFEST_VERSION = 1
EDGE_BYTES = 1 << 20  # scene checksum: first and last MiB (plus size and mtime)
_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


# ------------------------------------------------------------------------------ hashing


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Full sha256 of a file (models are small; read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def scene_checksum(path: str | Path) -> str:
    """Fast fingerprint of a scene: size, mtime (ns) and sha256 of its first and last MiB.

    Reading whole multi-GB scenes only to fingerprint them would cost as much as the
    inference; size + mtime catch in-place edits (GDAL updates rewrite blocks in the middle),
    the edge bytes catch a different file copied in with the same size and time (`cp -p`).
    Paths that are not local files (GDAL `/vsi…` URLs) are keyed by the path alone.
    """
    p = Path(path)
    if not p.is_file():
        return "path:" + hashlib.sha256(str(path).encode()).hexdigest()
    st = p.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(p, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if st.st_size > 2 * EDGE_BYTES:
            f.seek(st.st_size - EDGE_BYTES)
            h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    """Stable JSON: sorted keys, tuples as lists, floats by repr (so 0.3 stays 0.3)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def task_key(**parts: Any) -> str:
    """Key of one task: sha256 of the canonical JSON of its parts (model hash, scene
    checksum, parameters, extent…)."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


# ------------------------------------------------------------------------------ shards


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """`"i/N"` (1-based: 1/4 … 4/4) → (i, N); None stays None; anything else is an InputError."""
    if spec is None:
        return None
    if isinstance(spec, tuple):
        i, n = spec
    else:
        m = _SHARD_RE.match(str(spec))
        if not m:
            raise InputError(f"--shard {spec}: expected i/N, e.g. 1/4 (shards are numbered from 1)")
        i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise InputError(f"--shard {i}/{n}: i must be between 1 and N (shards are 1/{n} … {n}/{n})")
    return i, n


def shard_select(keys: Sequence[str], shard: tuple[int, int] | None) -> list[int]:
    """Indices of the tasks in a shard: round-robin over the tasks in a canonical order.

    `keys` are the tasks' stable sort keys (e.g. absolute scene path and block number), so
    the same files give the same shards whatever order they were listed in; the N shards
    are disjoint and together cover every task.
    """
    order = sorted(range(len(keys)), key=lambda j: keys[j])
    if shard is None:
        return order
    i, n = shard
    return sorted(order[p] for p in range(i - 1, len(order), n))


# ------------------------------------------------------------------------------ manifest


@dataclass(frozen=True)
class Record:
    """One finished task."""

    key: str
    part: str  # part file name inside the parts folder
    label: str = ""
    rows: int = 0
    attrs: dict | None = None  # small JSON-able facts about the result (e.g. valid tiles)


class Manifest:
    """Append-only JSON-lines record of finished tasks for one output (or one shard of it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Record]:
        """Records by key; a cut last line (killed mid-write) or a foreign line is skipped."""
        records: dict[str, Record] = {}
        if not self.path.is_file():
            return records
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
                rec = Record(
                    str(obj["key"]),
                    str(obj["part"]),
                    str(obj.get("label", "")),
                    int(obj.get("rows", 0)),
                    obj.get("attrs"),
                )
            except (ValueError, KeyError, TypeError):
                continue
            records[rec.key] = rec
        return records

    def reset(self) -> None:
        """Start an empty manifest (a fresh, non-resumed run)."""
        self.path.unlink(missing_ok=True)

    def append(self, record: Record) -> None:
        """Add one record durably: a single write of one line, then fsync."""
        line = canonical_json(
            {
                "key": record.key,
                "part": record.part,
                "label": record.label,
                "rows": record.rows,
                "attrs": record.attrs,
                "v": MANIFEST_VERSION,
            }
        )
        prefix = b""
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:  # a line cut by kill -9 must not swallow ours
                f.seek(-1, os.SEEK_END)
                prefix = b"" if f.read(1) == b"\n" else b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, prefix + line.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)


def manifest_paths(out: str | Path) -> list[Path]:
    """The whole-run manifest and every shard manifest beside an output."""
    out = Path(out)
    found = [out.with_name(out.name + ".manifest.json")]
    found += sorted(out.parent.glob(glob_escape(out.name) + ".shard-*-of-*.manifest.json"))
    return found


def manifest_path(out: str | Path, shard: tuple[int, int] | None = None) -> Path:
    """`<out>.manifest.json`, or `<out>.shard-i-of-N.manifest.json` for a shard."""
    out = Path(out)
    tag = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return out.with_name(f"{out.name}{tag}.manifest.json")


def glob_escape(name: str) -> str:
    """Escape glob metacharacters in a file name."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def finished(out: str | Path, parts_dir: Path, keys: Iterable[str]) -> dict[str, Record]:
    """Records of the wanted keys found in any manifest beside `out` whose part file exists."""
    wanted = set(keys)
    done: dict[str, Record] = {}
    for path in manifest_paths(out):
        for key, rec in Manifest(path).read().items():
            if key in wanted and (parts_dir / rec.part).is_file():
                done[key] = rec
    return done
