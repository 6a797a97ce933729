"""Mosaic mode: many abutting scene files processed as one surface.

Detecting file by file cuts every object on a file edge in two (two half boxes, neither
merged away). `infer --mosaic` instead writes a GDAL VRT over the files when they share a
CRS, so tiles run across the seams and an object on one is found once, whole. The VRT is
written by hand (GDAL's Python bindings are not a dependency): one SimpleSource per file
and band, and a dataset mask built from each file's own mask, so the gaps between files
read as nodata. Files in different CRSs cannot share a grid: they run one by one and their
detections are merged across files (not per file) in the output CRS.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from geodetect.errors import InputError

VRT_PREFIX = ".mosaic-"  # a dot file in the output's part folder: removed with the parts


@dataclass(frozen=True)
class Mosaic:
    """What `plan` decided: the scenes to run and how to merge and name their detections."""

    images: list[str]  # the VRT alone, or the files themselves (different CRSs)
    group: str | None  # merge key shared by all tasks (None: per scene)
    sources: tuple | None  # (CRS WKT, ((file name, bounds), ...)) to name a VRT's detections


def plan(images: list[str], folder: Path) -> Mosaic:
    """A VRT over `images` in `folder` when they share a CRS, else a cross-file merge group.

    InputError for files that cannot form one surface (different band counts, rotated grids).
    """
    from geodetect.raster import open_raster
    from geodetect.remote import display_name

    infos = [open_raster(i) for i in images]
    if len(infos) == 1:
        return Mosaic(list(images), None, None)
    first = infos[0]
    crss = {None if i.grid.crs is None else i.grid.crs.to_wkt() for i in infos}
    if None in crss:
        raise InputError("--mosaic: every scene needs a CRS to be placed on one surface")
    if len(crss) > 1:
        return Mosaic(list(images), "mosaic:" + "\x00".join(images), None)
    for i in infos:
        if i.count != first.count:
            raise InputError(
                f"--mosaic: {i.path} has {i.count} band(s), {first.path} {first.count}; "
                "a mosaic needs the same bands in every file"
            )
        t = i.grid.transform
        if t.b != 0 or t.d != 0 or t.e >= 0:
            raise InputError(f"--mosaic: {i.path} is not a north-up grid; warp it first")
    text = vrt_xml(infos)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{VRT_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:16]}.vrt"
    if not path.is_file() or path.read_text() != text:  # unchanged: resume keys stay valid
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    named = tuple((display_name(i.path), tuple(i.grid.bounds)) for i in infos)
    return Mosaic([str(path)], None, (first.grid.crs.to_wkt(), named))


def vrt_xml(infos: list) -> str:
    """VRT XML of north-up files in one CRS, on the first file's pixel size."""
    from geodetect.manifest import scene_checksum
    from geodetect.remote import gdal_path, is_remote

    first = infos[0]
    rx, ry = first.grid.transform.a, first.grid.transform.e  # ry < 0
    lefts, bottoms, rights, tops = zip(*(i.grid.bounds for i in infos), strict=True)
    x0, y0 = min(lefts), max(tops)
    width = int(round((max(rights) - x0) / rx))
    height = int(round((min(bottoms) - y0) / ry))
    dtype = np.result_type(*[np.dtype(i.dtype) for i in infos]).name
    vrt_type = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
                "uint32": "UInt32", "int32": "Int32", "float32": "Float32",
                "float64": "Float64"}.get(dtype, "Float64")  # fmt: skip

    def path_of(info: object) -> str:
        p = info.path
        return gdal_path(p) if is_remote(p) else str(Path(p).resolve())

    def rects(info: object) -> str:
        g = info.grid
        left, _, _, top = g.bounds
        dx, dy = (left - x0) / rx, (top - y0) / ry
        dw, dh = g.width * g.transform.a / rx, g.height * g.transform.e / ry
        return (
            f'<SrcRect xOff="0" yOff="0" xSize="{g.width}" ySize="{g.height}"/>'
            f'<DstRect xOff="{dx!r}" yOff="{dy!r}" xSize="{dw!r}" ySize="{dh!r}"/>'
        )

    def source(info: object, band: str) -> str:
        name = escape(path_of(info))
        return (
            f'<SimpleSource resampling="bilinear"><SourceFilename relativeToVRT="0">{name}'
            f"</SourceFilename><SourceBand>{band}</SourceBand>{rects(info)}</SimpleSource>"
        )

    sums = " ".join(scene_checksum(i.path) for i in infos)  # a changed file changes the VRT
    lines = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"<!-- sources: {sums} -->",
        f"<SRS>{escape(first.grid.crs.to_wkt())}</SRS>",
        f"<GeoTransform>{x0!r}, {rx!r}, 0, {y0!r}, 0, {ry!r}</GeoTransform>",
    ]
    for b in range(1, first.count + 1):
        lines.append(f'<VRTRasterBand dataType="{vrt_type}" band="{b}">')
        lines += [source(i, str(b)) for i in infos]
        lines.append("</VRTRasterBand>")
    lines.append('<MaskBand><VRTRasterBand dataType="Byte">')
    lines += [source(i, "mask,1").replace(' resampling="bilinear"', "") for i in infos]
    lines.append("</VRTRasterBand></MaskBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


def name_by_source(frame: object, sources: tuple) -> None:
    """Set each detection's `image` to the file its centre falls in (the first holding it)."""
    import shapely

    if len(frame) == 0:
        return
    crs_wkt, named = sources
    centres = shapely.centroid(frame.geometry.to_numpy())
    if frame.crs is not None and frame.crs.to_wkt() != crs_wkt:
        import geopandas as gpd

        centres = gpd.GeoSeries(centres, crs=frame.crs).to_crs(crs_wkt).to_numpy()
    x, y = shapely.get_coordinates(centres).T
    names = frame["image"].to_numpy(object).copy()
    todo = np.ones(len(x), bool)
    for name, (left, bottom, right, top) in named:
        inside = todo & (x >= left) & (x <= right) & (y >= bottom) & (y <= top)
        names[inside] = name
        todo &= ~inside
    frame["image"] = names
