"""Readers of overhead object-detection labels (DOTA, xView, RarePlanes) into one form.

Each reader returns a ``LabelSet``: the class list and, per scene (one image), the image's header and
its objects as axis-aligned boxes (x1, y1, x2, y2: float pixels of the scene image, x right, y down,
x2/y2 exclusive), class indices into the class list and a difficult flag (an ignored region when
training). Objects a reader drops are counted by reason in ``LabelSet.dropped`` and logged. Bad input
is one ``InputError`` line naming the file (and the line of a text label, the feature or annotation of
a JSON one). Images are PNG, JPEG or GeoTIFF, read with rasterio; one without georeference gets an
identity transform and an empty CRS.

Layouts (``images``: a folder of images; ``labels``):

- ``dota`` (v1.0 / v1.5): ``labels`` is the ``labelTxt`` folder (default: ``labelTxt`` beside
  ``images``), one ``<image stem>.txt`` per image, lines ``x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]``
  (difficult 0, 1 or 2; 1 and 2 are difficult) after optional ``imagesource:`` and ``gsd:`` lines. A
  box is its polygon's bounds; one lying more than a pixel outside its image is an error, one within a
  pixel of it is clipped. Every image needs a label file and every label file an image.
- ``xview``: ``labels`` is the GeoJSON of features with properties ``bounds_imcoords`` ("x1,y1,x2,y2"
  pixels), ``type_id`` and ``image_id`` (an image file name in ``images``). The 60 type ids map to
  contiguous class indices in id order (XVIEW_CLASSES); ids 75 and 82 (not objects), empty or
  degenerate boxes and features of images not in ``images`` (the train GeoJSON names 1395.tif, which
  the download lacks) are dropped and counted; boxes running off their image are clipped.
- ``rareplanes``: ``labels`` is a folder of per-tile GeoJSON (``<tile stem>.geojson``; geometry in the
  file's CRS, EPSG:4326 unless it says otherwise, put on the tile's pixel grid with the tile's CRS and
  transform; or pixel coordinates with ``geometry: pixel``), or a COCO JSON file (``images``,
  ``annotations`` with attributes, ``categories``). The class is the feature's or annotation's
  ``class_attribute`` (default ``role``: the 7 RAREPLANES_ROLES); ``class_attribute: null`` takes a
  COCO file's category names. Boxes off the tile are clipped, degenerate ones dropped and counted.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from apps.foundation.errors import InputError
from data_prep.geotiff import reading

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
EDGE_TOLERANCE_PX = 1.0
"""How far a DOTA box may reach beyond its image (clipped) before it is an error."""

DOTA_V1_0 = ("plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle", "ship",
             "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout", "harbor",
             "swimming-pool", "helicopter")
DOTA_CLASSES = {"1.0": DOTA_V1_0, "1.5": (*DOTA_V1_0, "container-crane")}
"""DOTA's classes per version, in DOTA_devkit's order."""

XVIEW_CLASSES = {
    11: "Fixed-wing Aircraft", 12: "Small Aircraft", 13: "Cargo Plane", 15: "Helicopter", 17: "Passenger Vehicle",
    18: "Small Car", 19: "Bus", 20: "Pickup Truck", 21: "Utility Truck", 23: "Truck", 24: "Cargo Truck",
    25: "Truck w/Box", 26: "Truck Tractor", 27: "Trailer", 28: "Truck w/Flatbed", 29: "Truck w/Liquid",
    32: "Crane Truck", 33: "Railway Vehicle", 34: "Passenger Car", 35: "Cargo Car", 36: "Flat Car", 37: "Tank car",
    38: "Locomotive", 40: "Maritime Vessel", 41: "Motorboat", 42: "Sailboat", 44: "Tugboat", 45: "Barge",
    47: "Fishing Vessel", 49: "Ferry", 50: "Yacht", 51: "Container Ship", 52: "Oil Tanker", 53: "Engineering Vehicle",
    54: "Tower crane", 55: "Container Crane", 56: "Reach Stacker", 57: "Straddle Carrier", 59: "Mobile Crane",
    60: "Dump Truck", 61: "Haul Truck", 62: "Scraper/Tractor", 63: "Front loader/Bulldozer", 64: "Excavator",
    65: "Cement Mixer", 66: "Ground Grader", 71: "Hut/Tent", 72: "Shed", 73: "Building", 74: "Aircraft Hangar",
    76: "Damaged Building", 77: "Facility", 79: "Construction Site", 83: "Vehicle Lot", 84: "Helipad",
    86: "Storage Tank", 89: "Shipping container lot", 91: "Shipping Container", 93: "Pylon", 94: "Tower",
}
"""xView's 60 type ids and names (xview_class_labels.txt); class index = position in this order."""
XVIEW_INVALID_IDS = (75, 82)
"""Type ids in xView's train GeoJSON that are no object class: dropped."""

RAREPLANES_ROLES = ("Small Civil Transport/Utility", "Medium Civil Transport/Utility", "Large Civil Transport/Utility",
                    "Military Transport/Utility/AWAC", "Military Fighter/Interceptor/Attack", "Military Bomber",
                    "Military Trainer")
"""RarePlanes' ``role`` values: the default classes."""
RAREPLANES_GEOMETRY = ("geographic", "pixel")

CLIPPED = "boxes clipped to their image"
OUTSIDE_CLIPPED = "boxes reaching beyond their image, clipped (dota.outside_boxes=clip)"
MISSING_IMAGE = "label files without an image, skipped (dota.missing_images=skip)"
DEGENERATE = "empty or degenerate boxes"


@dataclass(frozen=True)
class ImageInfo:
    """An image's header: size (px), band count and type, CRS (WKT, "" if none), affine transform (a..f)."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: str
    transform: tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class SceneLabels:
    """One scene: its image and objects; boxes (M, 4) float64 xyxy px, labels (M,) int64 class indices,
    difficult (M,) bool; ``gsd``: metres per pixel when the labels state it."""

    name: str
    image: ImageInfo
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    gsd: float | None = None


@dataclass(frozen=True)
class LabelSet:
    """What a reader found: class names (index order), scenes by name order, dropped objects by reason."""

    classes: tuple[str, ...]
    scenes: list[SceneLabels]
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DotaSettings:
    """``version``: 1.0 (15 classes) or 1.5 (16: adds container-crane), the classes when none are configured.
    ``missing_images``: ``stop`` at label files without an image, or ``skip`` them; ``outside_boxes``: ``stop``
    at boxes reaching more than EDGE_TOLERANCE_PX beyond their image, or ``clip`` them. Either way the
    count is told: in the error, or in the dataset's ``dropped_labels``."""

    version: str = "1.0"
    missing_images: str = "stop"
    outside_boxes: str = "stop"

    def __post_init__(self):
        object.__setattr__(self, "version", str(self.version))
        if self.version not in DOTA_CLASSES:
            raise InputError(f"dota.version: unknown version {self.version!r} (expected one of "
                             f"{', '.join(DOTA_CLASSES)})")
        for name, choices in (("missing_images", ("stop", "skip")), ("outside_boxes", ("stop", "clip"))):
            if getattr(self, name) not in choices:
                raise InputError(f"dota.{name}: expected {' or '.join(choices)}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class RarePlanesSettings:
    """``class_attribute``: the feature / annotation attribute naming the class (None: a COCO file's
    categories); ``geometry``: per-tile GeoJSON in geographic (a CRS) or pixel coordinates."""

    class_attribute: str | None = "role"
    geometry: str = "geographic"

    def __post_init__(self):
        if self.geometry not in RAREPLANES_GEOMETRY:
            raise InputError(f"rareplanes.geometry: unknown {self.geometry!r} (expected one of "
                             f"{', '.join(RAREPLANES_GEOMETRY)})")


@contextmanager
def open_image(path: Path) -> Iterator[rasterio.DatasetReader]:
    """Open an image (georeferenced or not); errors while opening or reading inside the block become
    one-line InputErrors naming ``path``."""
    with reading(Path(path), "image"), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            yield src


def image_info(path: Path) -> ImageInfo:
    """The header of the image at ``path``; InputError naming it when it cannot be read or holds no
    integer or float bands."""
    with open_image(path) as src:
        dtype = np.dtype(src.dtypes[0])
        if dtype.kind not in "uif":
            raise InputError(f"image {path}: data type {dtype} unsupported (expected integers or floats)")
        return ImageInfo(Path(path), src.width, src.height, src.count, dtype.name,
                         src.crs.to_wkt() if src.crs else "", tuple(src.transform)[:6])


def list_images(folder: Path | None) -> dict[str, Path]:
    """Image stem -> path of the images (IMAGE_SUFFIXES) directly in ``folder``, sorted by stem.
    InputError when the folder is unset or missing, holds none, or two images share a stem."""
    if folder is None:
        raise InputError("images: not set (images=<folder of scene images>)")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"images {folder}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.name.startswith("."):
            if path.stem in found:
                raise InputError(f"images {folder}: {found[path.stem].name} and {path.name} name the same scene")
            found[path.stem] = path
    if not found:
        raise InputError(f"images {folder}: holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return dict(sorted(found.items()))


def class_index(classes: Sequence[str]) -> dict[str, int]:
    """Name -> index; InputError when a name repeats."""
    index: dict[str, int] = {}
    for i, name in enumerate(classes):
        if name in index:
            raise InputError(f"classes: {name!r} listed twice")
        index[name] = i
    return index


def _box_arrays(rows: list[tuple[float, float, float, float, int, bool]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return table[:, :4].copy(), table[:, 4].astype(np.int64), table[:, 5] > 0


def fit_to_image(boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray, info: ImageInfo,
                 dropped: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (M, 4) clipped to the image, those left empty or degenerate (no area) dropped; counts both
    in ``dropped``. Returns the kept (boxes, labels, difficult)."""
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(boxes[:, 0::2], 0, info.width)
    clipped[:, 1::2] = np.clip(boxes[:, 1::2], 0, info.height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = int(np.count_nonzero(np.any(clipped != boxes, axis=1) & keep))
    for reason, count in ((CLIPPED, changed), (DEGENERATE, int(np.count_nonzero(~keep)))):
        if count:
            dropped[reason] = dropped.get(reason, 0) + count
    return clipped[keep], labels[keep], difficult[keep]


def _log_dropped(what: str, dropped: Mapping[str, int]) -> None:
    for reason, count in dropped.items():
        log.warning("%s: %d %s", what, count,
                    reason if reason in (CLIPPED, OUTSIDE_CLIPPED, MISSING_IMAGE) else f"dropped ({reason})")


# --- DOTA ---------------------------------------------------------------------------------------------------------

def _dota_file(path: Path, info: ImageInfo, index: Mapping[str, int], dropped: dict[str, int],
               outside: list[str]) -> SceneLabels:
    """Parse one labelTxt file of the image ``info``; each box reaching beyond the edge tolerance is described
    in ``outside`` (and kept, to be clipped)."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise InputError(f"labels {path}: unreadable ({exc.strerror or exc})") from None
    rows, gsd = [], None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        key, colon, value = line.partition(":")
        if not line or (colon and key.strip().lower() == "imagesource"):
            continue
        if colon and key.strip().lower() == "gsd":
            try:
                gsd = float(value)
            except ValueError:
                gsd = None  # "gsd:null" in some files
            continue
        fields = line.split()
        where = f"labels {path}:{number}"
        if len(fields) not in (9, 10):
            raise InputError(f"{where}: {len(fields)} fields, expected 10 (x1 y1 x2 y2 x3 y3 x4 y4 class difficult) "
                             f"or 9 (without difficult)")
        try:
            coords = [float(v) for v in fields[:8]]
        except ValueError:
            raise InputError(f"{where}: polygon coordinates must be numbers, got {' '.join(fields[:8])!r}") from None
        name, flag = fields[8], fields[9] if len(fields) == 10 else "0"
        if name not in index:
            raise InputError(f"{where}: unknown class {name!r} (classes: {', '.join(index)})")
        if flag not in ("0", "1", "2"):
            raise InputError(f"{where}: difficult must be 0, 1 or 2, got {flag!r}")
        x1, x2, y1, y2 = min(coords[0::2]), max(coords[0::2]), min(coords[1::2]), max(coords[1::2])
        if (x1 < -EDGE_TOLERANCE_PX or y1 < -EDGE_TOLERANCE_PX or x2 > info.width + EDGE_TOLERANCE_PX
                or y2 > info.height + EDGE_TOLERANCE_PX):
            outside.append(f"{where}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside image {info.path.name} "
                           f"({info.width}x{info.height} px)")
        rows.append((x1, y1, x2, y2, index[name], flag != "0"))
    fitted: dict[str, int] = {}
    boxes, labels, difficult = fit_to_image(*_box_arrays(rows), info, fitted)
    if fitted.get(DEGENERATE):  # clipping within the edge tolerance is not worth a warning
        dropped[DEGENERATE] = dropped.get(DEGENERATE, 0) + fitted[DEGENERATE]
    return SceneLabels(path.stem, info, boxes, labels, difficult, gsd)


def read_dota(images: Path, labels: Path | None, classes: Sequence[str] | None,
              settings: DotaSettings = DotaSettings()) -> LabelSet:
    """DOTA v1.0/1.5 (module docstring): ``classes`` None takes ``settings.version``'s list."""
    classes = tuple(classes) if classes is not None else DOTA_CLASSES[settings.version]
    index = class_index(classes)
    image_paths = list_images(images)
    labels = Path(labels) if labels is not None else Path(images).parent / "labelTxt"
    if not labels.is_dir():
        raise InputError(f"labels {labels}: not a folder (expected DOTA's labelTxt folder)")
    label_paths = {p.stem: p for p in sorted(labels.glob("*.txt"))}
    orphans = sorted(set(label_paths) - set(image_paths))
    dropped: dict[str, int] = {}
    if orphans and settings.missing_images == "stop":
        raise InputError(f"labels {label_paths[orphans[0]]}: no image {orphans[0]}.* in {images} "
                         f"({len(orphans)} label file(s) without an image; dota.missing_images=skip skips them)")
    if orphans:
        dropped[MISSING_IMAGE] = len(orphans)
    scenes, outside = [], []
    for name, path in image_paths.items():
        if name not in label_paths:
            raise InputError(f"image {path}: no label file {labels / (name + '.txt')}")
        scenes.append(_dota_file(label_paths[name], image_info(path), index, dropped, outside))
    if outside and settings.outside_boxes == "stop":
        raise InputError(f"{outside[0]} ({len(outside)} box(es) beyond their image; dota.outside_boxes=clip "
                         "clips them)")
    if outside:
        dropped[OUTSIDE_CLIPPED] = len(outside)
    _log_dropped(f"DOTA labels {labels}", dropped)
    return LabelSet(classes, scenes, dropped)


# --- xView ----------------------------------------------------------------------------------------------------------

def _missing(value: Any) -> bool:
    """Whether a property value is absent: None, NaN (a missing number) or blank text."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def read_vector_fields(path: Path, what: str, geometry: bool = False) -> tuple[dict, dict[str, np.ndarray], Any]:
    """(metadata, field name -> (N,) values, WKB geometries or None) of a GeoJSON file; InputError naming it
    when it cannot be read."""
    from pyogrio import raw
    from pyogrio.errors import DataSourceError, DataLayerError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: not found")
    try:
        meta, _, geometries, values = raw.read(path, read_geometry=geometry)
    except (DataSourceError, DataLayerError, RuntimeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{what} {path}: unreadable ({message})") from None
    return meta, dict(zip(meta["fields"], values)), geometries


def _xview_bounds(value: str, where: str) -> tuple[float, float, float, float]:
    parts = str(value).split(",")
    try:
        x1, y1, x2, y2 = (float(v) for v in parts)
    except ValueError:
        raise InputError(f"{where}: bounds_imcoords {value!r} is not x1,y1,x2,y2") from None
    return x1, y1, x2, y2


def read_xview(images: Path, labels: Path | None, classes: Sequence[str] | None) -> LabelSet:
    """xView (module docstring): ``classes`` None takes XVIEW_CLASSES' names; configured classes must
    name every class that occurs."""
    if labels is None:
        raise InputError("labels: not set (labels=<xView GeoJSON, e.g. xView_train.geojson>)")
    classes = tuple(classes) if classes is not None else tuple(XVIEW_CLASSES.values())
    index = class_index(classes)
    image_paths = list_images(images)
    by_file = {p.name: stem for stem, p in image_paths.items()}
    _, fields, _ = read_vector_fields(labels, "xView labels")
    count = len(next(iter(fields.values()))) if fields else 0
    columns = {}
    for key in ("bounds_imcoords", "type_id", "image_id"):
        columns[key] = fields.get(key, np.full(count, None, dtype=object))
    dropped: dict[str, int] = {}
    rows: dict[str, list] = {stem: [] for stem in image_paths}
    for i in range(count):
        where = f"xView labels {labels}: feature {i}"
        bounds, type_id, image_id = (columns[key][i] for key in ("bounds_imcoords", "type_id", "image_id"))
        for key, value in (("bounds_imcoords", bounds), ("type_id", type_id), ("image_id", image_id)):
            if _missing(value):
                raise InputError(f"{where} has no {key}")
        try:
            type_id = int(float(type_id))
        except ValueError:
            raise InputError(f"{where}: type_id {type_id!r} is not a number") from None
        if type_id in XVIEW_INVALID_IDS:
            dropped["invalid type ids (75, 82)"] = dropped.get("invalid type ids (75, 82)", 0) + 1
            continue
        if type_id not in XVIEW_CLASSES:
            raise InputError(f"{where}: unknown type_id {type_id} (xView's ids: {', '.join(map(str, XVIEW_CLASSES))})")
        name = XVIEW_CLASSES[type_id]
        if name not in index:
            raise InputError(f"{where}: class {name!r} (type_id {type_id}) not in classes ({', '.join(classes)})")
        stem = by_file.get(str(image_id))
        if stem is None:
            dropped["objects of images not in images/"] = dropped.get("objects of images not in images/", 0) + 1
            continue
        rows[stem].append((*_xview_bounds(bounds, where), index[name], False))
    scenes = [SceneLabels(stem, info, *fit_to_image(*_box_arrays(rows[stem]), info, dropped))
              for stem, info in ((stem, image_info(path)) for stem, path in image_paths.items())]
    _log_dropped(f"xView labels {labels}", dropped)
    return LabelSet(classes, scenes, dropped)


# --- RarePlanes ----------------------------------------------------------------------------------------------------

def class_value(value: Any) -> str:
    """An attribute value as a class name: integral numbers without a decimal point, text stripped."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value).strip()


def _derived_classes(values: Sequence[str]) -> tuple[str, ...]:
    """The distinct values, numerically sorted when all are integers, else alphabetically."""
    distinct = set(values)
    if all(v.lstrip("-").isdigit() for v in distinct):
        return tuple(sorted(distinct, key=int))
    return tuple(sorted(distinct))


@dataclass
class _Pending:
    """Objects read before the class list is known: per scene, rows (x1, y1, x2, y2, difficult) and names."""

    info: ImageInfo
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    difficult: list[bool] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)


def _resolve_classes(pending: Mapping[str, _Pending], classes: Sequence[str] | None, default: Sequence[str] | None,
                     dropped: dict[str, int]) -> LabelSet:
    """Map the pending objects' class names to indices (``classes``, else ``default``, else the names found)."""
    if classes is None:
        classes = default if default is not None else _derived_classes([n for p in pending.values() for n in p.names])
    index = class_index(tuple(classes))
    scenes = []
    for name, item in pending.items():
        for value, where in zip(item.names, item.wheres):
            if value not in index:
                raise InputError(f"{where}: unknown class {value!r} (classes: {', '.join(index)})")
        boxes = np.asarray(item.boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray([index[v] for v in item.names], dtype=np.int64)
        scenes.append(SceneLabels(name, item.info, *fit_to_image(boxes, labels, np.asarray(item.difficult, bool),
                                                                 item.info, dropped)))
    return LabelSet(tuple(classes), scenes, dropped)


def _pixel_bounds(geometries: Sequence, info: ImageInfo, source_crs: str | None, settings: RarePlanesSettings,
                  where: Callable[[int], str]) -> np.ndarray:
    """(N, 4) pixel bounds of WKB ``geometries`` on the tile ``info``."""
    import shapely
    from pyproj import Transformer
    from rasterio import Affine

    shapes = shapely.from_wkb(np.asarray(geometries, dtype=object))
    for i, shape in enumerate(shapes):
        if shape is None or shape.is_empty:
            raise InputError(f"{where(i)} has no geometry")
    coords, owner = shapely.get_coordinates(shapes, return_index=True)
    x, y = coords[:, 0], coords[:, 1]
    if settings.geometry == "geographic":
        if not info.crs:
            raise InputError(f"image {info.path}: not georeferenced, cannot place the geographic geometry of its "
                             f"labels (set rareplanes.geometry=pixel for pixel coordinates)")
        x, y = Transformer.from_crs(source_crs or "EPSG:4326", info.crs, always_xy=True).transform(x, y)
        x, y = ~Affine(*info.transform) @ (np.asarray(x), np.asarray(y))
    bounds = np.empty((len(shapes), 4))
    for column, values, reduce in ((0, x, np.minimum), (1, y, np.minimum), (2, x, np.maximum), (3, y, np.maximum)):
        bounds[:, column] = np.inf if reduce is np.minimum else -np.inf
        reduce.at(bounds[:, column], owner, values)
    return bounds


def _read_tile_geojsons(images: Path, labels: Path, settings: RarePlanesSettings) -> dict[str, _Pending]:
    if settings.class_attribute is None:
        raise InputError("rareplanes.class_attribute: must name a feature attribute for per-tile GeoJSON labels")
    image_paths = list_images(images)
    label_paths = {p.stem: p for p in sorted([*labels.glob("*.geojson"), *labels.glob("*.json")])}
    orphans = sorted(set(label_paths) - set(image_paths))
    if orphans:
        raise InputError(f"labels {label_paths[orphans[0]]}: no tile {orphans[0]}.* in {images} "
                         f"({len(orphans)} label file(s) without a tile)")
    pending = {}
    for stem, image in image_paths.items():
        if stem not in label_paths:
            raise InputError(f"image {image}: no label file {labels / (stem + '.geojson')}")
        path = label_paths[stem]
        meta, fields, geometries = read_vector_fields(path, "RarePlanes labels", geometry=True)
        item = pending[stem] = _Pending(image_info(image))
        count = 0 if geometries is None else len(geometries)
        if count == 0:
            continue
        def where(i: int, path=path) -> str:
            return f"RarePlanes labels {path}: feature {i}"
        values = fields.get(settings.class_attribute, np.full(count, None, dtype=object))
        for i, value in enumerate(values):
            if _missing(value):
                raise InputError(f"{where(i)} has no {settings.class_attribute}")
        item.boxes.extend(map(tuple, _pixel_bounds(geometries, item.info, meta.get("crs"), settings, where)))
        item.names.extend(class_value(v) for v in values)
        item.difficult.extend([False] * count)
        item.wheres.extend(where(i) for i in range(count))
    return pending


def _read_coco(images: Path, labels: Path, settings: RarePlanesSettings) -> tuple[dict[str, _Pending], list[str] | None,
                                                                                  dict[str, int]]:
    """Pending objects per scene, the category names (id order) and drop counts of a COCO file."""
    try:
        data = json.loads(labels.read_text())
        listed = {entry["id"]: entry for entry in data["images"]}
        annotations, categories = data["annotations"], data.get("categories", [])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"COCO labels {labels}: unreadable ({exc})") from None
    except (KeyError, TypeError) as exc:
        raise InputError(f"COCO labels {labels}: not a COCO file (missing {exc})") from None
    category_names = {c["id"]: str(c["name"]) for c in categories}
    image_paths = list_images(images)
    annotated = {a.get("image_id") for a in annotations}
    dropped: dict[str, int] = {}
    pending: dict[str, _Pending] = {}
    scene_of: dict[Any, str] = {}
    for image_id, entry in listed.items():
        name = str(entry.get("file_name", ""))
        path = Path(images) / name
        stem = Path(name).stem
        if not path.is_file():
            path = image_paths.get(stem)
        if path is None:
            if image_id in annotated:
                raise InputError(f"COCO labels {labels}: image id {image_id} ({name}) not found in {images}")
            dropped["listed images without annotations not in images/"] = dropped.get(
                "listed images without annotations not in images/", 0) + 1
            continue
        if stem in pending:
            raise InputError(f"COCO labels {labels}: image id {image_id} ({name}) names scene {stem} a second time")
        pending[stem] = _Pending(image_info(path))
        scene_of[image_id] = stem
    for number, ann in enumerate(annotations):
        where = f"COCO labels {labels}: annotation {ann.get('id', f'#{number}')}"
        image_id = ann.get("image_id")
        if image_id not in listed:
            raise InputError(f"{where} points to image id {image_id}, which is not among its images")
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: bbox must be [x, y, width, height]") from None
        if settings.class_attribute is None:
            value = category_names.get(ann.get("category_id"))
            if value is None:
                raise InputError(f"{where}: category_id {ann.get('category_id')!r} not among its categories")
        else:
            attributes = ann.get("attributes") or {}
            value = ann.get(settings.class_attribute, attributes.get(settings.class_attribute))
            if _missing(value):
                raise InputError(f"{where} has no {settings.class_attribute}")
        item = pending[scene_of[image_id]]
        item.boxes.append((x, y, x + w, y + h))
        item.names.append(class_value(value))
        item.difficult.append(bool(ann.get("iscrowd", 0)))
        item.wheres.append(where)
    names = [category_names[k] for k in sorted(category_names)] if settings.class_attribute is None else None
    return dict(sorted(pending.items())), names, dropped


def read_rareplanes(images: Path, labels: Path | None, classes: Sequence[str] | None,
                    settings: RarePlanesSettings = RarePlanesSettings()) -> LabelSet:
    """RarePlanes real data (module docstring): ``labels`` a folder of per-tile GeoJSON or a COCO JSON file.
    ``classes`` None: RAREPLANES_ROLES for ``role``, a COCO file's categories for no attribute, else the
    values found (sorted)."""
    if labels is None:
        raise InputError("labels: not set (labels=<folder of per-tile GeoJSON, or a COCO JSON file>)")
    labels = Path(labels)
    dropped: dict[str, int] = {}
    default: Sequence[str] | None = RAREPLANES_ROLES if settings.class_attribute == "role" else None
    if labels.is_dir():
        pending = _read_tile_geojsons(images, labels, settings)
    elif labels.is_file() and labels.suffix.lower() == ".xml":
        raise InputError(f"labels {labels}: RarePlanes synthetic XML annotations are not read (format=rareplanes "
                         "takes the real data's per-tile GeoJSON folder or a COCO JSON file)")
    elif labels.is_file():
        pending, category_names, dropped = _read_coco(images, labels, settings)
        default = category_names if settings.class_attribute is None else default
    else:
        raise InputError(f"labels {labels}: not found (expected a folder of per-tile GeoJSON or a COCO JSON file)")
    result = _resolve_classes(pending, classes, default, dropped)
    _log_dropped(f"RarePlanes labels {labels}", dropped)
    return result


FORMATS = ("dota", "xview", "rareplanes")


def read_labels(format: str, images: Path | None, labels: Path | None, classes: Sequence[str] | None,
                dota: DotaSettings = DotaSettings(), rareplanes: RarePlanesSettings = RarePlanesSettings()) -> LabelSet:
    """Read a dataset of ``format`` (one of FORMATS); see the module for each layout."""
    if format == "dota":
        return read_dota(images, labels, classes, dota)
    if format == "xview":
        return read_xview(images, labels, classes)
    if format == "rareplanes":
        return read_rareplanes(images, labels, classes, rareplanes)
    raise InputError(f"format: unknown format {format!r} (expected one of {', '.join(FORMATS)})")
