"""Other tools' oriented-box files, in pixels: DOTA txt, YOLO-OBB, COCO (rotated), CVAT XML.

Each reader returns and each writer takes a list of `ImageBoxes`: one image's boxes
`[cx, cy, length, width, angle_deg]` in its pixel frame (x = col, y = row, angles clockwise
from up), classes, headings (NaN for classes without a front), optional scores and negative
polygons. `convert.py` maps them to and from a scene's CRS. Coordinates are written with full
float precision, so a round trip keeps boxes to 1e-6 px.

Where the heading lives: DOTA and YOLO-OBB order the corners front-left, front-right,
back-right, back-left (DOTA's own "first point is the head" rule) and name the classes with a
front in a header line `heading_classes:` (DOTA; parsers skip lines with fewer than 9 fields)
or the YAML key `heading_classes` (YOLO); COCO and CVAT carry `heading_deg` per object.
Negatives live in CVAT (polygons labelled `negative`) and COCO (top-level `geodetect_negatives`);
DOTA and YOLO-OBB have no place for them.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
import yaml

from geodetect import geometry
from geodetect.boxes import corner_boxes
from geodetect.errors import LabelError

FORMATS = ("dota", "yolo", "coco", "cvat")


@dataclass
class ImageBoxes:
    """One image's objects in its pixel frame (see the module docstring)."""

    name: str  # file name of the image (DOTA: the txt's stem)
    width: int | None = None
    height: int | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    classes: list[str] = field(default_factory=list)
    headings: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scores: np.ndarray | None = None
    negatives: list = field(default_factory=list)  # shapely Polygons, pixel frame
    path: str | None = None  # where the image is, when the format says (YOLO's image list)

    def corners(self) -> np.ndarray:
        """(N, 4, 2) corners, front edge first (the heading's, else the angle's)."""
        return geometry.box_corners(self.boxes, y_down=True, headings=self.headings)


def format_of(path: str | Path) -> str | None:
    """The foreign format a path's extension (or content, for .json) names; None otherwise."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".txt" or (p.is_dir() and any(p.glob("*.txt"))):
        return "dota"
    if suffix in (".yaml", ".yml"):
        return "yolo"
    if suffix == ".xml":
        return "cvat"
    if suffix == ".json":
        if not p.is_file():
            return "coco"  # an output: .geojson is GeoJSON, .json is COCO
        with open(p, "rb") as f:
            head = f.read(4096)
        return None if b'"FeatureCollection"' in head or b'"Feature"' in head else "coco"
    return None


def _from_corners(corners: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return corner_boxes(corners, y_down=True)  # the label reader's rectangle tolerance
    except ValueError as err:
        raise LabelError(f"{where}: {err}") from None


def _with_fronts(img: ImageBoxes, implied: np.ndarray, fronts: set[str]) -> ImageBoxes:
    has = np.array([c in fronts for c in img.classes], bool)
    img.headings = np.where(has, implied, np.nan) if len(implied) else np.zeros(0)
    return img


def _fronts(images: list[ImageBoxes]) -> list[str]:
    names = {c for im in images for c, h in zip(im.classes, im.headings, strict=True) if h == h}
    return sorted(names)


def _num(v: float) -> str:
    return repr(float(v))


# ------------------------------------------------------------------------------ DOTA


def read_dota(path: str | Path) -> list[ImageBoxes]:
    """A DOTA txt (`x1 y1 … x4 y4 class difficult [score]`) or a folder of them."""
    p = Path(path)
    files = sorted(p.glob("*.txt")) if p.is_dir() else [p]
    out = []
    for f in files:
        fronts: set[str] = set()
        corners, classes, scores = [], [], []
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            parts = line.split()
            if line.startswith("heading_classes:"):
                fronts = {c for c in line.split(":", 1)[1].strip().split(",") if c}
            if len(parts) < 9:
                continue  # imagesource:, gsd:, heading_classes: headers
            try:
                corners.append([float(v) for v in parts[:8]])
            except ValueError:
                raise LabelError(f"{f}: line {n} is not `x1 y1 … x4 y4 class`") from None
            classes.append(parts[8])
            scores.append(float(parts[10]) if len(parts) > 10 else np.nan)
        boxes, implied = _from_corners(np.reshape(corners, (-1, 4, 2)), str(f))
        img = ImageBoxes(f.stem, boxes=boxes, classes=classes)
        sc = np.asarray(scores, float)
        img.scores = sc if len(sc) and np.isfinite(sc).all() else None
        out.append(_with_fronts(img, implied, fronts))
    return out


def write_dota(images: list[ImageBoxes], path: Path) -> list[Path]:
    """One txt per image: OUT itself for one image, else `<stem>.txt` beside it."""
    written = []
    for img in images:
        f = path if len(images) == 1 else path.with_name(Path(img.name).stem + ".txt")
        lines = ["imagesource:geodetect", "heading_classes:" + ",".join(_fronts([img]))]
        for i, c in enumerate(img.corners()):
            tail = f" {_num(img.scores[i])}" if img.scores is not None else ""
            lines.append(" ".join(map(_num, c.reshape(-1))) + f" {img.classes[i]} 0{tail}")
        f.write_text("\n".join(lines) + "\n")
        written.append(f)
    return written


# ------------------------------------------------------------------------------ YOLO-OBB


def read_yolo(path: str | Path) -> list[ImageBoxes]:
    """An Ultralytics YOLO-OBB data YAML: `names`, images (`train:`/`val:`/`test:`, each a
    list file, a folder of images or a list of those, under `path:`) and one label file per
    image, `class x1 y1 … x4 y4 [conf]` normalised to the image size. Labels are looked up
    in `labels/<stem>.txt` beside the YAML (what `write_yolo` writes) or, as Ultralytics
    does, at the image's path with its last `images` folder replaced by `labels`."""
    from geodetect.raster import open_raster
    from geodetect.remote import display_name

    p = Path(path)
    try:
        meta = yaml.safe_load(p.read_text()) or {}
        names = meta["names"]
        names = names if isinstance(names, dict) else dict(enumerate(names))
        root = p.parent / str(meta.get("path") or ".")
        images = _yolo_images(meta, root)
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError) as err:
        raise LabelError(f"{p}: not a YOLO-OBB data YAML ({err})") from None
    fronts = set(meta.get("heading_classes") or [])
    labels_dir = p.parent / str(meta.get("labels", "labels"))
    out = []
    for image in images:
        info = open_raster(image)
        w, h = info.grid.width, info.grid.height
        rows = []
        lab = _yolo_label(image, labels_dir)
        if lab.is_file():
            rows = [r.split() for r in lab.read_text().splitlines() if r.strip()]
        xy = np.array([[float(v) for v in r[1:9]] for r in rows]).reshape(-1, 4, 2) * [w, h]
        boxes, implied = _from_corners(xy, str(lab))
        img = ImageBoxes(display_name(image), w, h, boxes, [str(names[int(r[0])]) for r in rows])
        img.path = image
        if rows and all(len(r) > 9 for r in rows):
            img.scores = np.array([float(r[9]) for r in rows])
        out.append(_with_fronts(img, implied, fronts))
    return out


YOLO_IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".webp", ".jp2", ".vrt"}


def _yolo_images(meta: dict, root: Path) -> list[str]:
    """Image paths of the YAML's splits, in order, each once. URLs and GDAL `/vsi` paths in
    list files stay as written (a `Path` would fold `https://` into `https:/`)."""
    from geodetect.remote import is_remote

    splits = [meta[k] for k in ("train", "val", "test") if meta.get(k)] or ["images.txt"]
    found: list[str] = []
    for split in splits:
        for entry in split if isinstance(split, list) else [split]:
            where = root / str(entry)
            if where.is_dir():
                found += sorted(
                    str(f) for f in where.rglob("*") if f.suffix.lower() in YOLO_IMAGE_SUFFIXES
                )
                continue
            for line in where.read_text().splitlines():
                line = line.strip()
                if not line or is_remote(line) or Path(line).is_absolute():
                    found += [line] if line else []
                else:  # relative lines are under the data root, as Ultralytics reads them
                    found.append(str(root / line))
    return list(dict.fromkeys(found))


def _yolo_label(image: str, labels_dir: Path) -> Path:
    """`labels/<stem>.txt` beside the YAML, else the Ultralytics images→labels path."""
    from geodetect.remote import display_name

    stem = Path(display_name(image)).stem
    beside = labels_dir / f"{stem}.txt"
    parts = Path(image).parts
    if beside.is_file() or "images" not in parts:
        return beside
    k = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:k], "labels", *parts[k + 1 : -1], f"{stem}.txt")


def write_yolo(images: list[ImageBoxes], path: Path) -> list[Path]:
    """`path` (data YAML), `images.txt` (scene paths) and `labels/<stem>.txt` beside it."""
    classes = sorted({c for im in images for c in im.classes})
    index = {c: i for i, c in enumerate(classes)}
    labels_dir = path.parent / "labels"
    labels_dir.mkdir(exist_ok=True)
    written = []
    for img in images:
        norm = img.corners() / [img.width, img.height]
        lines = []
        for i, c in enumerate(norm):
            tail = f" {_num(img.scores[i])}" if img.scores is not None else ""
            lines.append(f"{index[img.classes[i]]} " + " ".join(map(_num, c.reshape(-1))) + tail)
        f = labels_dir / (Path(img.name).stem + ".txt")
        f.write_text("".join(s + "\n" for s in lines))
        written.append(f)
    listing = path.parent / "images.txt"
    listing.write_text("".join(f"{im.path or im.name}\n" for im in images))
    meta = {
        "path": ".",
        "train": listing.name,
        "val": listing.name,
        "names": dict(enumerate(classes)),
        "heading_classes": _fronts(images),
    }
    path.write_text(yaml.safe_dump(meta, sort_keys=False))
    return [path, listing, *written]


# ------------------------------------------------------------------------------ COCO


def read_coco(path: str | Path) -> list[ImageBoxes]:
    """COCO JSON: corners from `segmentation` (else `rbox` = [cx, cy, length, width, angle]);
    `heading_deg`, `score` and `geodetect_negatives` when present."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
        cats = {c["id"]: c["name"] for c in doc["categories"]}
        imgs = {im["id"]: im for im in doc["images"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LabelError(f"{p}: not a COCO JSON file ({err})") from None
    by_image: dict[int, list[dict]] = {i: [] for i in imgs}
    for a in doc.get("annotations", []):
        by_image.setdefault(a["image_id"], []).append(a)
    negs: dict[int, list] = {}
    for n in doc.get("geodetect_negatives", []):
        for seg in n["segmentation"]:
            negs.setdefault(n["image_id"], []).append(shapely.Polygon(np.reshape(seg, (-1, 2))))
    out = []
    for iid, im in imgs.items():
        anns = by_image[iid]
        corners = []
        for a in anns:
            seg = a.get("segmentation")
            if isinstance(seg, list) and seg and len(seg[0]) == 8:
                corners.append(np.reshape(seg[0], (4, 2)))
            elif "rbox" in a:
                corners.append(geometry.box_corners(np.asarray(a["rbox"], float))[0])
            elif len(a.get("bbox") or []) == 4:  # plain COCO: an upright box
                x, y, w, h = (float(v) for v in a["bbox"])
                corners.append(np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]))
            else:
                raise LabelError(f"{p}: annotation {a.get('id')} has no box")
        boxes, _ = _from_corners(np.reshape(corners, (-1, 4, 2)), str(p))
        heads = np.array(
            [np.nan if a.get("heading_deg") is None else a["heading_deg"] for a in anns]
        )
        img = ImageBoxes(im["file_name"], im.get("width"), im.get("height"), boxes)
        img.classes = [cats[a["category_id"]] for a in anns]
        img.headings = heads.astype(float).reshape(-1)
        if anns and all("score" in a for a in anns):
            img.scores = np.array([a["score"] for a in anns], float)
        img.negatives = negs.get(iid, [])
        out.append(img)
    return out


def write_coco(images: list[ImageBoxes], path: Path) -> list[Path]:
    """COCO JSON with axis-aligned `bbox`, the corners as `segmentation`, `rbox`, `angle_deg`,
    `heading_deg` (null without a front) and, for detections, `score`."""
    classes = sorted({c for im in images for c in im.classes})
    cat = {c: i + 1 for i, c in enumerate(classes)}
    doc: dict = {"images": [], "annotations": [], "geodetect_negatives": []}
    doc["categories"] = [{"id": cat[c], "name": c} for c in classes]
    for iid, img in enumerate(images, 1):
        doc["images"].append(
            {"id": iid, "file_name": img.name, "width": img.width, "height": img.height}
        )
        for i, c in enumerate(img.corners()):
            b = img.boxes[i]
            lo, hi = c.min(axis=0), c.max(axis=0)
            ann = {
                "id": len(doc["annotations"]) + 1,
                "image_id": iid,
                "category_id": cat[img.classes[i]],
                "bbox": [*map(float, lo), *map(float, hi - lo)],
                "area": float(b[2] * b[3]),
                "iscrowd": 0,
                "segmentation": [[float(v) for v in c.reshape(-1)]],
                "rbox": [float(v) for v in b],
                "angle_deg": float(b[4]),
                "heading_deg": None if np.isnan(img.headings[i]) else float(img.headings[i]),
            }
            if img.scores is not None:
                ann["score"] = float(img.scores[i])
            doc["annotations"].append(ann)
        for poly in img.negatives:
            seg = [[float(v) for v in np.asarray(poly.exterior.coords)[:-1].reshape(-1)]]
            doc["geodetect_negatives"].append({"image_id": iid, "segmentation": seg})
    path.write_text(json.dumps(doc, indent=1))
    return [path]


# ------------------------------------------------------------------------------ CVAT


def read_cvat(path: str | Path) -> list[ImageBoxes]:
    """CVAT for images 1.1 XML: rotated `box`es (`rotation` clockwise about the centre), the
    attributes `heading_deg` / `score`, and `polygon`s labelled `negative`."""
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except (OSError, ET.ParseError) as err:
        raise LabelError(f"{p}: not a CVAT XML file ({err})") from None
    out = []
    for im in root.iter("image"):
        rows, heads, scores, classes = [], [], [], []
        for b in im.iter("box"):
            x0, y0, x1, y1 = (float(b.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
            w, h, rot = x1 - x0, y1 - y0, float(b.get("rotation", 0.0))
            long_x = w >= h
            rows.append(
                [(x0 + x1) / 2, (y0 + y1) / 2, max(w, h), min(w, h), rot + (90 if long_x else 0)]
            )
            attrs = {a.get("name"): a.text for a in b.iter("attribute")}
            heads.append(float(attrs["heading_deg"]) if attrs.get("heading_deg") else np.nan)
            scores.append(float(attrs["score"]) if attrs.get("score") else np.nan)
            classes.append(b.get("label"))
        boxes = np.array(rows, float).reshape(-1, 5)
        boxes[:, 4] = geometry.wrap_angle(boxes[:, 4])
        img = ImageBoxes(im.get("name"), int(im.get("width")), int(im.get("height")), boxes)
        img.classes, img.headings = classes, np.array(heads, float)
        sc = np.array(scores, float)
        img.scores = sc if len(sc) and np.isfinite(sc).all() else None
        quads, quad_classes = [], []
        for poly in im.iter("polygon"):
            pts = [tuple(map(float, s.split(","))) for s in poly.get("points").split(";")]
            if poly.get("label") == "negative":
                img.negatives.append(shapely.Polygon(pts))
            elif len(pts) == 4:  # a rotated box drawn as a 4-point polygon
                quads.append(pts)
                quad_classes.append(poly.get("label"))
        if quads:
            extra, _ = _from_corners(np.array(quads), str(p))
            img.boxes = np.concatenate([img.boxes, extra])
            img.classes += quad_classes
            img.headings = np.concatenate([img.headings, np.full(len(quads), np.nan)])
            img.scores = None
        out.append(img)
    return out


def write_cvat(images: list[ImageBoxes], path: Path) -> list[Path]:
    """CVAT for images 1.1 XML (rotated boxes; negatives as polygons labelled `negative`)."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    labels = ET.SubElement(ET.SubElement(ET.SubElement(root, "meta"), "task"), "labels")
    names = sorted({c for im in images for c in im.classes})
    names += ["negative"] if any(im.negatives for im in images) else []
    for n in names:
        ET.SubElement(ET.SubElement(labels, "label"), "name").text = n
    for iid, img in enumerate(images):
        el = ET.SubElement(root, "image", id=str(iid), name=img.name)
        el.set("width", str(img.width))
        el.set("height", str(img.height))
        for i, (cx, cy, length, width, angle) in enumerate(img.boxes):
            b = ET.SubElement(el, "box", label=img.classes[i], occluded="0", source="manual")
            b.set("xtl", _num(cx - length / 2))
            b.set("ytl", _num(cy - width / 2))
            b.set("xbr", _num(cx + length / 2))
            b.set("ybr", _num(cy + width / 2))
            b.set("rotation", _num(geometry.wrap_heading(angle - 90.0)))
            b.set("z_order", "0")
            if not np.isnan(img.headings[i]):
                ET.SubElement(b, "attribute", name="heading_deg").text = _num(img.headings[i])
            if img.scores is not None:
                ET.SubElement(b, "attribute", name="score").text = _num(img.scores[i])
        for poly in img.negatives:
            pts = ";".join(f"{_num(x)},{_num(y)}" for x, y in np.asarray(poly.exterior.coords)[:-1])
            ET.SubElement(el, "polygon", label="negative", points=pts, occluded="0")
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return [path]


READERS = {"dota": read_dota, "yolo": read_yolo, "coco": read_coco, "cvat": read_cvat}
WRITERS = {"dota": write_dota, "yolo": write_yolo, "coco": write_coco, "cvat": write_cvat}
