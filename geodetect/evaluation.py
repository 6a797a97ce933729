"""`geodetect evaluate`: detection and truth files -> per-class metrics, error layers.

Reads both files, takes them to one planar CRS (headings turned by the meridian convergence
where needed), groups by class and image, and leaves the matching and the numbers to
matching.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geodetect import north
from geodetect.errors import CRSError, InputError, LabelError
from geodetect.matching import (
    IOU_THRESHOLDS,
    candidate_ious,
    coco_metrics,
    confusion,
    match_many,
    matched_metrics,
    restrict,
)

Source = str | Path | gpd.GeoDataFrame  # a vector file or a table already in memory


def _boxes_of(gdf: Any, path: str) -> np.ndarray:
    """Boxes (N, 5) in a y-down frame (`boxes.table_boxes`, one tolerance with the label
    reader: a hand-drawn truth rectangle that trains must also evaluate). LabelError else."""
    from geodetect.boxes import NotRectangle, table_boxes

    try:
        return table_boxes(gdf)
    except NotRectangle as err:
        raise LabelError(f"{path}: feature {err.index} is not a 4-corner rectangle") from None


def _headings(gdf: Any) -> np.ndarray:
    if "heading_deg" not in gdf.columns:
        return np.full(len(gdf), np.nan)
    return np.asarray(gdf["heading_deg"].to_numpy(dtype=float, na_value=np.nan), np.float64)


def _read(src: Source, role: str) -> tuple[gpd.GeoDataFrame, str]:
    """A file (or a GeoDataFrame, for notebooks) and the name used in messages."""
    from geodetect.labels import read_vector

    if isinstance(src, gpd.GeoDataFrame):
        return src.copy(), role
    return read_vector(src), str(src)


def _positives(gdf: Any, name: str) -> Any:
    """The rows to score: all of a detections file, the validated positives of a label file."""
    from geodetect.labels import validate_labels

    if "class" not in gdf.columns:
        raise LabelError(f"{name}: no 'class' field; expected a detections or label file")
    if "label" in gdf.columns:
        # validation also turns QGIS's one-part MultiPolygons into Polygons
        gdf = validate_labels(gdf, name)
        gdf = gdf[gdf["label"] == "positive"]
    return gdf.reset_index(drop=True)


def _read_pair(pred: Source, truth: Source) -> tuple[Any, Any, str, str]:
    """Predictions and truth positives, each in its own CRS, and their names for messages."""
    (p, pn), (t, tn) = _read(pred, "predictions"), _read(truth, "truth")
    p, t = _positives(p, pn), _positives(t, tn)
    if (p.crs is None) != (t.crs is None):
        missing = pn if p.crs is None else tn
        raise CRSError(f"{missing}: has no CRS but the other file has one; set one with ogr2ogr")
    return p, t, pn, tn


def comparison_crs(p: Any, t: Any) -> Any:
    """The planar CRS predictions and truth are compared in (None for pixel-frame files).

    IoU and angles need a frame with square units: degrees are not (a rectangle in lon/lat is
    a parallelogram). The predictions' CRS if projected, else the truth's, else the local UTM
    zone of the data.
    """
    if p.crs is None:
        return None
    for crs in (p.crs, t.crs):
        if crs.is_projected:
            return crs
    if p.crs == t.crs and not p.crs.is_geographic:
        return p.crs  # one local (engineering) frame: already planar and common
    parts = [g.geometry.to_crs("EPSG:4326") for g in (p, t) if len(g)]
    if not parts:
        return p.crs
    try:
        return gpd.GeoSeries(pd.concat(parts), crs="EPSG:4326").estimate_utm_crs()
    except Exception as exc:  # noqa: BLE001 - pyproj raises several types; one line for the user
        raise CRSError(f"no UTM zone for these files' extent ({exc}); reproject them") from None


def _boxes_in(gdf: Any, crs: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and headings of `gdf`'s features in `crs` (the comparison frame)."""
    heads = _headings(gdf)
    if gdf.crs is None or gdf.crs == crs:
        return _boxes_of(gdf, name), heads
    moved = gdf.to_crs(crs)
    boxes = _boxes_of(moved, name)  # headings snap to the sides of the reprojected rectangles
    return boxes, north.turn_headings(heads, gdf, moved, angles=boxes[:, 4])


@dataclass
class _Pair:
    """Predictions and truth positives as boxes in one planar frame, ready to match."""

    p: Any  # predictions as read (their CRS)
    t: Any  # truth positives as read (their CRS)
    pb: np.ndarray
    tb: np.ndarray
    ph: np.ndarray
    th: np.ndarray
    pc: np.ndarray
    tc: np.ndarray
    scores: np.ndarray
    pg: np.ndarray | None  # image names, when both files name every feature's image
    tg: np.ndarray | None


def _image_names(gdf: Any) -> np.ndarray | None:
    """File names in the `image` field (paths from any OS, as labels reads them); None unless
    every row names one, so matching then stays within each scene."""
    if "image" not in gdf.columns:
        return None
    text = gdf["image"].map(lambda v: v.strip() if isinstance(v, str) else "")
    names = text.map(lambda v: PurePath(v.replace("\\", "/")).name if v else None)
    return None if names.isna().any() else names.to_numpy(dtype=str)


def _inside(gdf: Any, region: Any, name: str) -> Any:
    """The rows whose centre lies in the region (any CRS; its boundary counts as inside)."""
    if (gdf.crs is None) != (region.crs is None):
        raise CRSError(f"{name} and the --region file must both have a CRS or both lack one")
    centres = gpd.GeoSeries(gdf.geometry.centroid, crs=gdf.crs)
    if gdf.crs is not None and not gdf.crs.equals(region.crs):
        centres = centres.to_crs(region.crs)
    area = shapely.union_all(region.geometry.to_numpy())
    return gdf[shapely.intersects(area, centres.to_numpy())].reset_index(drop=True)


def _region(region: Source) -> Any:
    """The scoring area: every polygon of a vector file (a label file's positives and
    negatives are the labelled area of sparse truth)."""
    gdf, name = _read(region, "region")
    kinds = shapely.get_type_id(gdf.geometry.to_numpy())
    if not len(gdf) or not np.isin(kinds, [3, 6]).all():
        raise LabelError(f"{name}: --region needs polygons (the areas where truth is complete)")
    return gdf


def _pair(pred: Source, truth: Source, region: Source | None = None) -> _Pair:
    p, t, pn, tn = _read_pair(pred, truth)
    if region is not None:
        area = _region(region)
        p, t = _inside(p, area, pn), _inside(t, area, tn)
    crs = comparison_crs(p, t)
    pb, ph = _boxes_in(p, crs, pn)
    tb, th = _boxes_in(t, crs, tn)
    pg, tg = _image_names(p), _image_names(t)
    use_groups = pg is not None and tg is not None
    return _Pair(
        p=p,
        t=t,
        pb=pb,
        tb=tb,
        ph=ph,
        th=th,
        pc=p["class"].astype(str).to_numpy(),
        tc=t["class"].astype(str).to_numpy(),
        scores=p["score"].to_numpy(float) if "score" in p.columns else np.ones(len(p)),
        pg=pg if use_groups else None,
        tg=tg if use_groups else None,
    )


def _per_class(
    pair: _Pair, iou: float, cands: list
) -> Iterator[tuple[str, np.ndarray, np.ndarray, tuple, dict]]:
    """Per class: name, prediction rows, truth rows, the matching (order, matched, sorted
    scores) and class_metrics' dict: the one place evaluate and the PR curves match.
    `cands`: candidate_ious of all predictions against all truths, whatever their class."""
    for name in sorted(set(pair.pc) | set(pair.tc)):
        pi, ti = np.nonzero(pair.pc == name)[0], np.nonzero(pair.tc == name)[0]
        sub = restrict(cands, pi, ti, len(pair.tb))
        ious = [iou, *IOU_THRESHOLDS]
        matching, *coco = match_many(pair.pb[pi], pair.scores[pi], pair.tb[ti], ious, cands=sub)
        res = matched_metrics(pair.pb[pi], pair.tb[ti], *matching, pair.ph[pi], pair.th[ti])
        res.update(coco_metrics(pair.pb[pi], pair.tb[ti], coco))
        yield name, pi, ti, matching, res


def _check_iou(iou: float) -> None:
    if not 0 < iou <= 1:
        raise InputError(f"--iou {iou}: must be in (0, 1]")


def evaluate(
    pred: Source,
    truth: Source,
    iou: float = 0.5,
    errors: str | Path | None = None,
    curves: bool = False,
    region: Source | None = None,
) -> dict:
    """`geodetect evaluate`: per-class metrics of a detections file against a truth file.

    `pred` and `truth` are vector files or GeoDataFrames; a table with a `label` field (a
    label file) is validated and only its positives are scored.

    Files in different CRSs are compared in a planar one (see `comparison_crs`), so IoU is
    taken in metres and angles and headings against that frame's grid north. With `errors`,
    the false positives and false negatives at each class's best-F1 threshold are written, in
    the predictions' CRS, as layers "false_positives" and "false_negatives" of a GeoPackage,
    atomically.

    Besides AP at `iou`: "ap_50_95" (the mean AP over IoU 0.50:0.05:0.95, COCO's AP) per class
    and "map_50_95" over classes; "ap_50_95_by_size" for truths small / medium / large by area
    (matching.SIZE_BINS, m²); "confusion" {truth class: {predicted class: n}} of the
    predictions kept at their class's threshold, matched whatever their class ("background"
    row: on no truth, "missed" column: no prediction). With `region` (polygons, any CRS) only
    objects whose centre lies inside are scored: sparse truth, complete within those areas.
    """
    _check_iou(iou)
    if errors is not None and Path(errors).suffix.lower() != ".gpkg":
        raise InputError(f"{errors}: the errors file holds two layers; give it a .gpkg extension")
    if errors is not None:
        from geodetect.atomic import check_not_input, check_out_dir

        check_out_dir(errors)
        sources = [s for s in (pred, truth, region) if isinstance(s, (str, Path))]
        check_not_input(errors, sources, "--errors")
    pair = _pair(pred, truth, region)
    per_class: dict[str, dict] = {}
    fp_rows: list[np.ndarray] = []
    fn_rows: list[np.ndarray] = []
    cands = candidate_ious(pair.pb, pair.tb, pair.pg, pair.tg)
    for name, pi, ti, (order, matched, sorted_scores), res in _per_class(pair, iou, cands):
        if not curves:
            res.pop("precisions")
            res.pop("recalls")
        per_class[name] = res
        cut = int(np.sum(sorted_scores >= res["threshold"])) if res["threshold"] is not None else 0
        fp_rows.append(pi[order[:cut][matched[:cut] < 0]])
        fn_rows.append(np.setdiff1d(ti, ti[matched[:cut][matched[:cut] >= 0]]))
    result = {
        "iou": float(iou),
        "mean_ap": _mean(c["ap"] for c in per_class.values()),
        "map_50_95": _mean(c["ap_50_95"] for c in per_class.values()),
        "map_50_95_by_size": {
            size: _mean(c["ap_50_95_by_size"][size] for c in per_class.values())
            for size in next(iter(per_class.values()), {}).get("ap_50_95_by_size", {})
        },
        "n_pred": len(pair.p),
        "n_truth": len(pair.t),
        "classes": per_class,
        "confusion": _confusion(pair, per_class, iou, cands),
    }
    if region is not None:
        result["region"] = str(region) if not isinstance(region, gpd.GeoDataFrame) else "region"
    if errors is not None:
        t = pair.t
        if t.crs is not None and t.crs != pair.p.crs:
            t = t.to_crs(pair.p.crs)
        _write_errors(errors, pair.p, t, fp_rows, fn_rows)
        result["errors"] = str(errors)
    return result


def _mean(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _confusion(pair: _Pair, per_class: dict, iou: float, cands: list) -> dict:
    """The confusion table of the predictions kept at their class's best-F1 threshold."""
    cut = np.array([per_class[c]["threshold"] for c in pair.pc], dtype=float)
    kept = np.nonzero(np.nan_to_num(cut, nan=np.inf) <= pair.scores)[0]
    return confusion(
        pair.pb[kept],
        pair.pc[kept],
        pair.scores[kept],
        pair.tb,
        pair.tc,
        iou,
        cands=[cands[i] for i in kept],
    )


def precision_recall_curves(pred: Source, truth: Source, iou: float = 0.5) -> dict[str, dict]:
    """Per class, the precision/recall curve by descending score, for plotting.

    Returns {class: {"recall": [...], "precision": [...], "scores": [...], "ap": float}}, one
    point per prediction (the k-th after keeping the k best-scoring ones), matched exactly as
    `evaluate` matches. `pred` and `truth` are files or GeoDataFrames. For a class with no
    truth, recall is 0 throughout and "ap" is None.
    """
    _check_iou(iou)
    out: dict[str, dict] = {}
    pair = _pair(pred, truth)
    cands = candidate_ious(pair.pb, pair.tb, pair.pg, pair.tg)
    for name, _, _, (_, _, sorted_scores), res in _per_class(pair, iou, cands):
        out[name] = {
            "recall": res["recalls"],
            "precision": res["precisions"],
            "scores": [float(s) for s in sorted_scores],
            "ap": res["ap"],
        }
    return out


def _write_errors(path: str | Path, p: Any, t: Any, fp_rows: list, fn_rows: list) -> None:
    """Both error layers into one GeoPackage, written to a temp file and renamed."""
    from geodetect.atomic import atomic_path

    fp = p.iloc[np.sort(np.concatenate(fp_rows))] if fp_rows else p.iloc[:0]
    fn = t.iloc[np.sort(np.concatenate(fn_rows))] if fn_rows else t.iloc[:0]
    with atomic_path(path) as tmp:
        fp.to_file(tmp, layer="false_positives", driver="GPKG")
        fn.to_file(tmp, layer="false_negatives", driver="GPKG", mode="a")
