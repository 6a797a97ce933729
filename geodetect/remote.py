"""Scenes and point clouds that are not local files: GDAL virtual paths and URLs.

Users keep imagery in object stores. GDAL reads those itself (`/vsicurl/`, `/vsis3/`,
`/vsigs/`, `/vsiaz/`), with credentials from its own environment variables
(`AWS_ACCESS_KEY_ID`, `AWS_NO_SIGN_REQUEST`, `GS_SECRET_ACCESS_KEY`,
`AZURE_STORAGE_CONNECTION_STRING`, …): geodetect never handles a secret. The user's string
travels through the pipeline unchanged (it names the scene in detections and task keys);
`gdal_path` translates it at the rasterio boundary only.

laspy has no object-store reader for plain LAS/LAZ, and rasterising reads every point anyway,
so a point cloud over HTTP(S) is fetched once per process into a temporary file.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from geodetect.errors import InputError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
# URL scheme -> GDAL virtual file system prefix (https keeps its scheme: /vsicurl/https://…)
_VSI = {"s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/", "azure": "/vsiaz/"}
_CURL = ("http", "https", "ftp")
_fetched: dict[str, Path] = {}
_cache_dir: Path | None = None


def is_remote(path: str | Path) -> bool:
    """True for a GDAL virtual path (`/vsi…`) or a URL (`https://…`, `s3://…`)."""
    s = str(path)
    return s.startswith("/vsi") or _URL.match(s) is not None


def gdal_path(path: str | Path) -> str:
    """The path GDAL opens: `https://h/a.tif` -> `/vsicurl/https://h/a.tif`, `s3://b/k` ->
    `/vsis3/b/k`, `gs://` -> `/vsigs/`, `az://` -> `/vsiaz/`, `file://` -> a local path;
    anything else unchanged. An unknown scheme is an InputError."""
    s = str(path)
    m = _URL.match(s)
    if m is None:
        return s
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme in _CURL:
        return "/vsicurl/" + s
    if scheme in _VSI:
        return _VSI[scheme] + rest
    if scheme == "file":
        return unquote(urlsplit(s).path)
    if scheme == "vrt":  # GDAL's own connection string (stac.py assigns a CRS with it)
        return s
    raise InputError(
        f"{s}: unknown URL scheme {scheme}://; use https://, s3://, gs://, az:// or a GDAL "
        "/vsi… path"
    )


def display_name(path: str | Path) -> str:
    """The file name a scene is known by (detections' `image`): a URL's query is dropped."""
    s = str(path)
    if _URL.search(s) or s.startswith("/vsicurl/"):
        return PurePosixPath(urlsplit(s.split("/vsicurl/", 1)[-1]).path).name
    return PurePosixPath(s).name


def http_url(path: str | Path) -> str | None:
    """The http(s) URL behind `https://…` or `/vsicurl/https://…`; None for other paths."""
    s = str(path)
    if s.startswith("/vsicurl/"):
        s = s[len("/vsicurl/") :]
    m = _URL.match(s)
    return s if m is not None and m.group(1).lower() in ("http", "https") else None


def fetch(path: str | Path, what: str = "point cloud") -> Path:
    """Download an HTTP(S) file once per process into a temporary folder (removed at exit).

    Raises InputError for paths that are not HTTP(S) and for a missing or unreachable object.
    """
    gdal_path(path)  # an unknown scheme says so
    url = http_url(path)
    if url is None:
        raise InputError(
            f"{path}: a {what} is read from http(s):// URLs or local files only; "
            "use a presigned https:// URL or copy it locally"
        )
    if url in _fetched and _fetched[url].is_file():
        return _fetched[url]
    folder = _cache()
    dst = folder / f"{len(_fetched)}_{display_name(url) or 'download'}"
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(dst, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except urllib.error.HTTPError as exc:
        dst.unlink(missing_ok=True)
        if exc.code in (403, 404, 410):
            raise InputError(f"{path}: no such remote object (HTTP {exc.code})") from None
        raise InputError(f"{path}: cannot download (HTTP {exc.code})") from None
    except (urllib.error.URLError, OSError) as exc:
        dst.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise InputError(f"{path}: cannot download ({reason})") from None
    _fetched[url] = dst
    return dst


def _cache() -> Path:
    global _cache_dir
    if _cache_dir is None or not _cache_dir.is_dir():
        _cache_dir = Path(tempfile.mkdtemp(prefix="geodetect-remote-"))
        atexit.register(shutil.rmtree, _cache_dir, True)
    return _cache_dir
