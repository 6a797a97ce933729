"""STAC items as scenes: `infer --stac ITEM.json|URL [--asset KEY]`.

An item (a local file or a URL, read with pystac) names its imagery as assets; we take one
asset's href as the scene path (remote ones go through GDAL, see remote.py) and its CRS from
the projection extension (`proj:code`, `proj:epsg`, `proj:wkt2`, `proj:projjson`, on the asset
or the item). A declared CRS that disagrees with the file's is an error; a file without one
gets it (and `proj:transform`) through GDAL's `vrt://` connection string. Resolution happens
before inference, so inference.py only ever sees scene paths.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from geodetect.errors import CRSError, InputError

DEFAULT_ASSETS = ("visual", "image", "data")  # tried in order when --asset is not given
_IMAGE_TYPES = ("image/tiff", "image/vnd.stac.geotiff", "image/jp2", "application/x-hdf")


def is_item_path(path: str) -> bool:
    """Does a scene argument name a STAC item (a `.json` file or URL)?"""
    return PurePosixPath(urlsplit(str(path)).path).suffix.lower() == ".json"


def _read_item(href: str):  # noqa: ANN202 - pystac.Item, imported lazily
    try:
        import pystac
    except ImportError:
        raise InputError("--stac needs pystac: pip install 'geodetect[stac]'") from None
    try:
        return pystac.Item.from_file(href)
    except FileNotFoundError:
        raise InputError(f"{href}: no such STAC item") from None
    except Exception as exc:  # noqa: BLE001 - urllib, JSON and STAC errors: one line for the user
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{href}: not a readable STAC item ({msg})") from None


def _pick_asset(item, key: str | None, href: str):  # noqa: ANN001, ANN202 - pystac types
    if key is not None:
        if key not in item.assets:
            raise InputError(
                f"{href}: no asset {key!r}; it has {', '.join(sorted(item.assets)) or 'none'}"
            )
        return item.assets[key]
    for k in DEFAULT_ASSETS:
        if k in item.assets:
            return item.assets[k]
    images = [a for a in item.assets.values() if (a.media_type or "").startswith(_IMAGE_TYPES)]
    if len(images) == 1:
        return images[0]
    raise InputError(
        f"{href}: which asset? give --asset, one of {', '.join(sorted(item.assets)) or 'none'}"
    )


def _declared(fields: list[dict]) -> tuple[str | None, list[float] | None]:
    """(CRS as user input for pyproj, proj:transform) from the asset's then the item's fields."""
    crs = transform = None
    for d in fields:
        if crs is None:
            if d.get("proj:code"):
                crs = str(d["proj:code"])
            elif d.get("proj:epsg"):
                crs = f"EPSG:{int(d['proj:epsg'])}"
            elif d.get("proj:wkt2"):
                crs = str(d["proj:wkt2"])
            elif d.get("proj:projjson"):
                crs = json.dumps(d["proj:projjson"])
        if transform is None and d.get("proj:transform"):
            transform = [float(v) for v in d["proj:transform"]][:6]
    return crs, transform


def resolve_item(href: str, asset: str | None = None) -> str:
    """The scene path of one STAC item's asset, its CRS checked (or supplied) from the item."""
    from pyproj import CRS

    from geodetect.raster import open_raster

    item = _read_item(str(href))
    chosen = _pick_asset(item, asset, str(href))
    path = chosen.get_absolute_href() or chosen.href
    declared, transform = _declared([chosen.extra_fields, item.properties])
    if declared is None:
        return path
    try:
        want = CRS.from_user_input(declared)
    except Exception:  # noqa: BLE001 - pyproj's CRSError: the item is at fault
        raise CRSError(f"{href}: its projection {declared[:60]!r} is not a CRS") from None
    info = open_raster(path)
    if info.grid.crs is None:
        # GDAL's connection string assigns a CRS (and geotransform) without a sidecar file
        opts = f"a_srs={want.to_string()}"
        if transform is not None:
            a, b, c, d, e, f = transform
            opts += f"&a_gt={c!r},{a!r},{b!r},{f!r},{d!r},{e!r}"
        return f"vrt://{path}?{opts}"
    if not CRS.from_wkt(info.grid.crs.to_wkt()).equals(want):
        raise CRSError(
            f"{href}: the item says {want.to_string()} but {Path(path).name} is in "
            f"{info.grid.crs.to_string()}; fix the item's proj: fields"
        )
    return path


def resolve_scenes(paths: list[str], asset: str | None = None, stac: bool = False) -> list[str]:
    """Scene paths with every STAC item (all of them when `stac`, else `.json` ones) resolved
    to its asset; order kept, duplicates once."""
    out = [resolve_item(p, asset) if stac or is_item_path(p) else p for p in paths]
    return list(dict.fromkeys(out))
