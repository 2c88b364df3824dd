"""Object-detection data prep: DOTA, xView or RarePlanes scenes and labels -> a chip dataset with boxes.

    python -m data_prep.detection format=dota images=DOTA/train/images labels=DOTA/train/labelTxt out_dir=chips/dota
    python -m data_prep.detection stage=labels format=xview images=train_images labels=xView_train.geojson out_dir=...
    python -m data_prep.detection -m stage=chip scene=P0001,P0002 format=dota images=... out_dir=...
    python -m data_prep.detection stage=split format=dota images=... out_dir=...

Stages: ``labels`` reads and checks every label of the dataset once (``data_prep.detection_formats``)
and stores the objects of all scenes in ``work/labels.npz``; ``chip`` cuts one scene (one image) into
chips, one job per scene; ``split`` assigns whole scenes to train/val/test (``data_prep.split``'s scene
rule, optionally by groups of scenes) and writes the COCO files, the manifest and, last,
``dataset.json``. ``stage=all`` runs them in turn. Layout of ``out_dir``::

    dataset.json, manifest.csv     the chip dataset (apps.foundation.chips), written last by split
    coco/<split>.json              the chips and boxes of each split as COCO JSON, written by split
    scenes/<scene>/image.npy       uint8 (N, 3, S, S) RGB chips of the scene
    scenes/<scene>/boxes.npy       float32 (M, 7) boxes of those chips (apps.foundation.chips.BOX_COLUMNS)
    scenes/<scene>/chips.json      kept chips and how they were made; marks the scene chipped
    work/labels.npz                the objects of every scene, written by labels
    logs/                          Hydra logs of each run

Chip rule (``DetectionChipSettings``): windows of ``size`` px step by ``size * (1 - overlap)``, the last
one flush with the scene's edge; a scene smaller than a window along a side gets one window there,
padded with zeros beyond the image (``nodata_fraction`` in the manifest; the small-scene policy of
``data_prep.chipping``). An object cut by a window's
border is kept, clipped, when at least ``min_visible`` of its area lies in the window (DOTA_devkit's
0.7), else dropped (or kept as an ignored region with ``ignore_cut``); a difficult object is an ignored
region wherever any of it lies in the window. Every window with an object that is not ignored is kept,
plus a seeded share ``keep_empty`` of the others. Images become uint8 RGB: three bands as they are, one
band (or gray + alpha) repeated, the first three of more (``bands`` picks others), a palette expanded;
other types than uint8 are stretched per band between percentiles of the scene (``stretch``, as
``data_prep.normalize``), nodata (the file's, NaN) to 0.

Outputs carry stamps as in ``data_prep.burned_area``: a re-run skips what is up to date (a scene whose
chips match its image, objects and settings), and any stage that rewrites something first removes
``dataset.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rasterio.transform import Affine
from rasterio.windows import Window

from apps.foundation.chips import (
    BOX_COLUMNS, COCO_DIR, SPLITS, ChipPreparation, ChipRecord, chip_boxes, invalidate_dataset, save_scene_boxes, scene_array_paths,
    scene_array_writer, write_dataset_index,
)
from apps.foundation.errors import InputError
from apps.foundation.files import atomic_path, atomic_write_text
from data_prep.chipping import ChipSettings, SceneChips, read_scene_chips, window_offsets, write_scene_chips
from data_prep.detection_formats import (
    FORMATS, DotaSettings, ImageInfo, LabelSet, RarePlanesSettings, list_images, open_image, read_labels,
)
from data_prep.geotiff import check_made_with, in_gdal_env, input_identity, progress, stage_stamp
from data_prep.normalize import (
    NODATA, NormalizeSettings, histogram_index, histogram_percentiles, stretch, uses_histogram, valid_pixels,
    values_percentiles,
)
from data_prep.split import SplitSettings, assign_scene_splits, no_chips_error

log = logging.getLogger(__name__)

STAGES = ("labels", "chip", "split", "all")
IMAGE_ARRAY, BOXES_ARRAY = "image", "boxes"
ARRAYS = {IMAGE_ARRAY: {"kind": "image", "channels": 3, "bands": ["R", "G", "B"]},
          BOXES_ARRAY: {"kind": "boxes", "columns": list(BOX_COLUMNS)}}
"""The dataset's ``arrays`` entry."""
LABELS_FILE = "labels.npz"
OBJECT_COLUMNS = ("x1", "y1", "x2", "y2", "class", "difficult")
"""Columns of the objects table in ``work/labels.npz`` (float64, scene pixels)."""
STRIP_ROWS = 1024
"""Rows read per step when finding an image's percentiles."""
VISIBLE_EPS = 1e-9
"""Slack of the ``min_visible`` comparison, so a box cut at exactly the threshold is kept."""


@dataclass(frozen=True)
class DetectionChipSettings(ChipSettings):
    """The windows of ChipSettings and the detection keep rule (see the module)."""

    size: int = 512
    overlap: float = 0.2
    min_visible: float = 0.7
    ignore_cut: bool = False
    keep_empty: float = 0.1
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.min_visible <= 1:
            raise InputError(f"chip.min_visible: must be in (0, 1], got {self.min_visible}")
        if not 0 <= self.keep_empty <= 1:
            raise InputError(f"chip.keep_empty: must be in [0, 1], got {self.keep_empty}")


@dataclass(frozen=True)
class SceneSplitSettings(SplitSettings):
    """SplitSettings' ``scenes`` rule over groups of scenes: ``group_pattern`` (a regular expression; its
    first group, or whole match, names a scene's group, e.g. ``(.*)_tile_\\d+`` for RarePlanes tiles of one
    image) keeps scenes of a group in one split; None: every scene is its own group. ``fixed`` pins groups."""

    group_pattern: str | None = None
    methods: ClassVar[tuple[str, ...]] = ("scenes",)

    def __post_init__(self):
        super().__post_init__()
        if self.group_pattern is not None:
            try:
                re.compile(self.group_pattern)
            except re.error as exc:
                raise InputError(f"split.group_pattern: not a regular expression ({exc})") from None

    def group(self, scene: str) -> str:
        """The group of ``scene``: the pattern's first group or match, else the scene itself."""
        match = re.match(self.group_pattern, scene) if self.group_pattern else None
        if match is None:
            return scene
        return match.group(1) if match.re.groups else match.group(0)


@dataclass(frozen=True)
class DetectionPreparation(ChipPreparation):
    """The detection prep's record (``dataset.json`` attrs): ChipPreparation's geometry and 1-based
    ``bands`` (None: the image's own RGB), the label format and its settings, the classes, the chip
    rule, the stretch of bands other than uint8, the split, object counts and the COCO files; the
    inputs as absolute paths."""

    format: str | None = None
    classes: tuple[str, ...] | None = None
    dota: DotaSettings | None = None
    rareplanes: RarePlanesSettings | None = None
    images: str | None = None
    labels: str | None = None
    stride: int | None = None
    min_visible: float | None = None
    ignore_cut: bool | None = None
    keep_empty: float | None = None
    seed: int | None = None
    stretch: NormalizeSettings | None = None
    split: dict | None = None
    objects_in_chips: dict | None = None
    dropped_labels: dict | None = None
    coco: dict | None = None


@dataclass(frozen=True)
class PrepConfig:
    """Everything the prep needs, checked; built from the Hydra config by ``from_cfg``."""

    out_dir: Path | str
    format: str = "dota"
    images: Path | str | None = None
    labels: Path | str | None = None
    classes: tuple[str, ...] | None = None
    dota: DotaSettings = DotaSettings()
    rareplanes: RarePlanesSettings = RarePlanesSettings()
    bands: tuple[int, ...] | None = None
    stretch: NormalizeSettings = NormalizeSettings()
    chip: DetectionChipSettings = DetectionChipSettings()
    split: SceneSplitSettings = SceneSplitSettings()
    force: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("out_dir", "images", "labels"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.format not in FORMATS:
            raise InputError(f"format: unknown format {self.format!r} (expected one of {', '.join(FORMATS)})")
        if isinstance(self.classes, str):
            raise InputError(f"classes: a list of class names, e.g. classes=[{self.classes}], got {self.classes!r}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
            if not self.classes:
                raise InputError("classes: empty (list class names, or null for the format's own)")
        if self.bands is not None:
            object.__setattr__(self, "bands", tuple(int(b) for b in self.bands))
            if len(self.bands) not in (1, 3) or min(self.bands) < 1:
                raise InputError(f"bands: one or three 1-based band numbers (R, G, B), got {list(self.bands)}")

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> "PrepConfig":
        split = OmegaConf.to_container(cfg.split)
        return cls(
            out_dir=cfg.out_dir, format=str(cfg.format), images=cfg.images, labels=cfg.labels,
            classes=cfg.classes if cfg.classes is None or isinstance(cfg.classes, str) else tuple(cfg.classes),
            dota=DotaSettings(**cfg.dota), rareplanes=RarePlanesSettings(**cfg.rareplanes),
            bands=None if cfg.bands is None else tuple(cfg.bands), stretch=NormalizeSettings(**cfg.stretch),
            chip=DetectionChipSettings(**cfg.chip),
            split=SceneSplitSettings(**{**split, "fixed": dict(split.get("fixed") or {})}),
            force=bool(cfg.force), progress=bool(cfg.progress),
        )

    @property
    def labels_path(self) -> Path:
        return self.out_dir / "work" / LABELS_FILE

    def label_settings(self) -> dict:
        """What the labels stage depends on besides its input files."""
        settings = {"format": self.format, "classes": None if self.classes is None else list(self.classes)}
        if self.format == "dota":
            settings["dota"] = asdict(self.dota)
        if self.format == "rareplanes":
            settings["rareplanes"] = asdict(self.rareplanes)
        return settings

    def image_settings(self) -> dict:
        """How chip pixels are made from a scene's image."""
        return {"bands": None if self.bands is None else list(self.bands), "stretch": asdict(self.stretch)}


# --- labels stage ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelIndex:
    """The labels stage's output: classes, scenes (name -> image header and gsd, with the rows [start, stop)
    of its objects), the objects (M, 6) OBJECT_COLUMNS float64, drop counts and the stamp."""

    classes: tuple[str, ...]
    scenes: dict[str, dict]
    objects: np.ndarray
    dropped: dict[str, int]
    stamp: dict

    def scene_objects(self, name: str) -> np.ndarray:
        """(m, 6) objects of scene ``name``."""
        entry = self.scenes[name]
        return self.objects[entry["start"]:entry["stop"]]

    def image(self, name: str) -> ImageInfo:
        entry = self.scenes[name]
        return ImageInfo(Path(entry["image"]), entry["width"], entry["height"], entry["count"], entry["dtype"],
                         entry["crs"], tuple(entry["transform"]))

    def objects_digest(self, name: str) -> str:
        """A digest of the scene's objects and the class list: changes when either does."""
        digest = hashlib.sha256(np.ascontiguousarray(self.scene_objects(name)).tobytes())
        digest.update(json.dumps(list(self.classes)).encode())
        return digest.hexdigest()


def _input_files(config: PrepConfig) -> list[Path]:
    """The files the labels stage reads: the images and the label file(s)."""
    files = list(list_images(config.images).values())
    labels = config.labels if config.labels is not None else (
        Path(config.images).parent / "labelTxt" if config.format == "dota" else None)
    if labels is not None and labels.is_dir():
        files += sorted(p for p in labels.iterdir() if p.is_file() and not p.name.startswith("."))
    elif labels is not None and labels.is_file():
        files.append(labels)
    return files


def labels_stamp(config: PrepConfig) -> dict:
    """The stamp of the labels stage: its settings and a digest of its input files' identities."""
    digest = hashlib.sha256()
    for path in _input_files(config):
        digest.update(input_identity(path).encode() + b"\n")
    return {**stage_stamp("labels", config.label_settings(), {}), "inputs": digest.hexdigest()}


def read_label_index(path: Path) -> LabelIndex | None:
    """The labels stored at ``path``, or None when absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta, objects = json.loads(data["index"].tobytes().decode()), data["objects"]
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    return LabelIndex(tuple(meta["classes"]), meta["scenes"], objects, meta["dropped"], meta["stamp"])


def write_label_index(path: Path, labels: LabelSet, stamp: dict) -> LabelIndex:
    """Store ``labels`` at ``path`` (one .npz, atomically) and return them as a LabelIndex."""
    scenes, tables, start = {}, [], 0
    for scene in labels.scenes:
        table = np.column_stack([scene.boxes, scene.labels, scene.difficult]).astype(np.float64).reshape(-1, 6)
        tables.append(table)
        info = scene.image
        scenes[scene.name] = {
            "image": str(info.path.resolve()), "width": info.width, "height": info.height, "count": info.count,
            "dtype": info.dtype, "crs": info.crs, "transform": list(info.transform), "gsd": scene.gsd,
            "start": start, "stop": start + len(table),
        }
        start += len(table)
    objects = np.concatenate(tables) if tables else np.zeros((0, 6))
    meta = {"classes": list(labels.classes), "scenes": scenes, "dropped": labels.dropped, "stamp": stamp,
            "columns": list(OBJECT_COLUMNS)}
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, objects=objects, index=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    return LabelIndex(tuple(labels.classes), scenes, objects, dict(labels.dropped), stamp)


def run_labels(config: PrepConfig) -> LabelIndex:
    """Read and check every label unless ``work/labels.npz`` is up to date; returns the labels."""
    stamp = labels_stamp(config)
    stored = read_label_index(config.labels_path)
    if not config.force and stored is not None and stored.stamp == stamp:
        log.info("labels: up to date, skipped (%d scenes, %d objects)", len(stored.scenes), len(stored.objects))
        return stored
    invalidate_dataset(config.out_dir)
    labels = read_labels(config.format, config.images, config.labels, config.classes, config.dota, config.rareplanes)
    index = write_label_index(config.labels_path, labels, stamp)
    log.info("labels: %d scenes, %d objects of %d classes", len(index.scenes), len(index.objects), len(index.classes))
    return index


def load_labels(config: PrepConfig) -> LabelIndex:
    """The stored labels, checked to be read with this config's settings; InputError otherwise."""
    index = read_label_index(config.labels_path)
    if index is None:
        raise InputError(f"{config.labels_path}: missing (run stage=labels first)")
    check_made_with(f"labels {config.labels_path}", "labels", index.stamp, config.label_settings())
    return index


# --- chip stage -----------------------------------------------------------------------------------------------------

def visible_shares(objects: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The share of each object's width inside each window column, (M, n_cols), and of its height inside each
    window row, (M, n_rows); their product is the share of its area in a window."""
    x1, y1, x2, y2 = (objects[:, i:i + 1] for i in range(4))
    return (np.clip(np.minimum(x2, cols + size) - np.maximum(x1, cols), 0, None) / (x2 - x1),
            np.clip(np.minimum(y2, rows + size) - np.maximum(y1, rows), 0, None) / (y2 - y1))


def cut_boxes(objects: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int,
              settings: DetectionChipSettings) -> np.ndarray:
    """The objects of every window (rows x cols offsets, row-major window index ``r * len(cols) + c``):
    (K, 7) float64 BOX_COLUMNS with the window index in column 0 and boxes in window pixels.

    ``objects``: (M, 6) OBJECT_COLUMNS of non-empty boxes in scene pixels. The keep rule is the module's.
    """
    difficult = objects[:, 5] > 0
    visible_x, visible_y = visible_shares(objects, rows, cols, size)
    parts = []
    for r, row_off in enumerate(rows):
        candidates = np.flatnonzero(visible_y[:, r] > 0)
        visible = visible_y[candidates, r:r + 1] * visible_x[candidates]  # (m, n_cols) visible share of each box
        enough = visible >= settings.min_visible - VISIBLE_EPS
        ignored = difficult[candidates, None] | ~enough
        keep = visible > 0
        if not settings.ignore_cut:
            keep &= enough | difficult[candidates, None]
        box, c = np.nonzero(keep)
        obj = candidates[box]
        col_off = cols[c]
        parts.append(np.column_stack([
            r * len(cols) + c,
            np.maximum(objects[obj, 0], col_off) - col_off, np.maximum(objects[obj, 1], row_off) - row_off,
            np.minimum(objects[obj, 2], col_off + size) - col_off,
            np.minimum(objects[obj, 3], row_off + size) - row_off,
            objects[obj, 4], ignored[box, c],
        ]))
    return np.concatenate(parts) if parts else np.zeros((0, len(BOX_COLUMNS)))


TOO_LARGE = "no chip holds min_visible of it"
"""The reason an object is in no chip: cut by every window's border (larger than a chip, or than the overlap)."""


def uncovered_objects(objects: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int,
                      settings: DetectionChipSettings) -> np.ndarray:
    """(M,) bool: the objects (OBJECT_COLUMNS) that are not difficult and of which no window (``cut_boxes``'
    windows) holds ``min_visible``: in no chip as an object to detect."""
    visible_x, visible_y = visible_shares(objects, rows, cols, size)
    best = visible_x.max(axis=1) * visible_y.max(axis=1)  # the share in a window is a product: its best, of bests
    return (best < settings.min_visible - VISIBLE_EPS) & (objects[:, 5] == 0)


def select_windows(table: np.ndarray, n_windows: int, settings: DetectionChipSettings, scene: str) -> np.ndarray:
    """(n_windows,) bool: windows holding an object that is not ignored, plus ``keep_empty`` of the others
    drawn with a generator seeded by ``settings.seed`` and the scene's name."""
    positive = np.bincount(table[table[:, 6] == 0, 0].astype(np.int64), minlength=n_windows) > 0
    empty = np.flatnonzero(~positive)
    rng = np.random.default_rng([settings.seed, zlib.crc32(scene.encode())])
    chosen = rng.choice(empty, size=int(round(settings.keep_empty * len(empty))), replace=False)
    keep = positive.copy()
    keep[chosen] = True
    return keep


@dataclass(frozen=True)
class BandMap:
    """How a band other than uint8 becomes uint8: ``lut`` indexed by ``histogram_index`` of the raw value
    (integer bands of at most 16 bits), else a stretch from ``low``..``high`` with nodata -> 0."""

    lut: np.ndarray | None
    low: float = 0.0
    high: float = 255.0
    nodata: float | None = None

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """(H, W) raw values -> (H, W) uint8."""
        if self.lut is not None:
            return np.take(self.lut, histogram_index(raw))
        out = stretch(raw, self.low, self.high)
        out[~valid_pixels(raw, np.nan if self.nodata is None else self.nodata)] = NODATA
        return out


def band_map(src, band: int, settings: NormalizeSettings, show_progress: bool) -> BandMap | None:
    """The uint8 mapping of ``band`` of the open image ``src``: None (as is) for uint8, else a stretch between
    the band's percentiles over its valid pixels (not the file's nodata, finite), found as data_prep.normalize does."""
    dtype, nodata = np.dtype(src.dtypes[band - 1]), src.nodatavals[band - 1]
    if dtype == np.uint8:
        return None
    percentiles = [settings.low_percentile, settings.high_percentile]
    hist = np.zeros(2 ** (8 * dtype.itemsize), dtype=np.int64) if uses_histogram(dtype) else None
    values = []
    for row in progress(range(0, src.height, STRIP_ROWS), f"percentiles {Path(src.name).name} band {band}",
                        show_progress):
        raw = src.read(band, window=Window(0, row, src.width, min(STRIP_ROWS, src.height - row)))
        raw = raw[valid_pixels(raw, np.nan if nodata is None else nodata)]
        if hist is not None:
            hist += np.bincount(histogram_index(raw), minlength=hist.size)
        else:
            values.append(raw)
    if (hist is not None and not hist.any()) or (hist is None and not sum(v.size for v in values)):
        raise InputError(f"image {src.name}: band {band} has no valid pixels")
    if hist is not None:
        offset = int(np.iinfo(dtype).min)
        low, high = histogram_percentiles(hist, percentiles) + offset
        lut = stretch(np.arange(hist.size) + offset, low, high)
        if nodata is not None and float(nodata).is_integer() and np.iinfo(dtype).min <= nodata <= np.iinfo(dtype).max:
            lut[histogram_index(np.array([nodata], dtype))] = NODATA
        result = BandMap(lut, float(low), float(high))
    else:
        low, high = values_percentiles(np.concatenate(values), percentiles)
        result = BandMap(None, float(low), float(high), nodata)
    log.info("image %s band %d: p%g..p%g = %g..%g -> 1..255", Path(src.name).name, band, *percentiles, low, high)
    return result


class SceneImage:
    """An open scene image read as uint8 RGB windows (bands, palettes and stretching: see the module)."""

    def __init__(self, src, bands: tuple[int, ...] | None, settings: NormalizeSettings, show_progress: bool):
        from rasterio.enums import ColorInterp

        self.src, self.palette = src, None
        if bands is None:
            bands = (1, 2, 3) if src.count >= 3 else (1,)
            if src.count <= 2 and src.colorinterp[0] == ColorInterp.palette:
                colormap = src.colormap(1)
                self.palette = np.array([colormap.get(i, (0, 0, 0, 0))[:3] for i in range(256)], np.uint8)
        if max(bands) > src.count:
            raise InputError(f"bands: image {src.name} has {src.count} band(s), asked for {list(bands)}")
        self.channels = bands if len(bands) == 3 else bands * 3
        self.maps = {b: band_map(src, b, settings, show_progress) for b in sorted(set(bands))}

    def read(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        """(3, height, width) uint8 of a window, zeros beyond the image."""
        h, w = min(height, self.src.height - row_off), min(width, self.src.width - col_off)
        window = Window(col_off, row_off, w, h)
        if self.palette is None and not any(self.maps.values()):  # uint8 bands as they are: read in place
            out = np.empty((3, height, width), dtype=np.uint8)
            if (h, w) != (height, width):
                out[:] = 0
            self.src.read(list(self.channels), window=window, out=out[:, :h, :w])
            return out
        out = np.zeros((3, height, width), dtype=np.uint8)
        bands = sorted(self.maps)
        raw = self.src.read(bands, window=window)
        mapped = {b: raw[i] if self.maps[b] is None else self.maps[b].apply(raw[i]) for i, b in enumerate(bands)}
        if self.palette is not None:
            out[:, :h, :w] = np.moveaxis(self.palette[mapped[1]], -1, 0)
        else:
            for channel, band in enumerate(self.channels):
                out[channel, :h, :w] = mapped[band]
        return out


def _class_fractions(table: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Share of a chip's objects that are not ignored, per class (all 0 for a chip without such objects)."""
    counted = table[table[:, 6] == 0, 5].astype(np.int64)
    counts = np.bincount(counted, minlength=len(classes))
    return {name: float(counts[k] / max(1, len(counted))) for k, name in enumerate(classes)}


def chip_records(name: str, info: ImageInfo, rows: np.ndarray, cols: np.ndarray, kept: np.ndarray,
                 table: np.ndarray, size: int, classes: Sequence[str]) -> list[ChipRecord]:
    """The records of the ``kept`` windows (row-major indices over rows x cols) of scene ``name``, whose
    boxes ``table`` (BOX_COLUMNS, sorted by chip) holds: id ``<scene>_<i:05d>``, window, georeference
    (the image's CRS, or "" and an identity transform for an image without one), padding as nodata."""
    transform = Affine(*info.transform)
    starts = np.searchsorted(table[:, 0], np.arange(len(kept) + 1))
    records = []
    for i, window in enumerate(kept):
        row_off, col_off = int(rows[window // len(cols)]), int(cols[window % len(cols)])
        inside = min(size, info.height - row_off) * min(size, info.width - col_off)
        records.append(ChipRecord(
            chip_id=f"{name}_{i:05d}", split="", scene=name, index=i, sources=(str(info.path),),
            col_off=col_off, row_off=row_off, width=size, height=size, crs=info.crs,
            transform=tuple(transform @ Affine.translation(col_off, row_off))[:6],
            nodata_fraction=1.0 - inside / (size * size),
            class_fractions=_class_fractions(table[starts[i]:starts[i + 1]], classes),
        ))
    return records


@in_gdal_env
def chip_detection_scene(name: str, index: LabelIndex, out_root: Path, settings: DetectionChipSettings,
                         bands: tuple[int, ...] | None = None,
                         stretch_settings: NormalizeSettings = NormalizeSettings(),
                         stamp: dict | None = None, show_progress: bool = True) -> SceneChips:
    """Cut scene ``name`` of ``index`` into the chips the keep rule selects and store them under
    ``out_root/scenes/<name>/``: ``image`` (N, 3, S, S) uint8, ``boxes`` (M, 7) float32 and ``chips.json``.
    A scene without a kept chip is stored with empty arrays. InputError naming the image when it cannot
    be read."""
    info, size = index.image(name), settings.size
    rows = window_offsets(info.height, size, settings.stride)
    cols = window_offsets(info.width, size, settings.stride)
    objects = index.scene_objects(name)
    table = cut_boxes(objects, rows, cols, size, settings)
    keep = select_windows(table, len(rows) * len(cols), settings, name)
    uncovered = int(np.count_nonzero(uncovered_objects(objects, rows, cols, size, settings)))
    if uncovered:
        log.warning("chip %s: %d object(s) of which no %d px chip holds min_visible=%g: %s", name, uncovered, size,
                    settings.min_visible, "kept as ignored regions (ignore_cut)" if settings.ignore_cut else
                    "dropped (a larger chip.size or chip.overlap keeps them; chip.ignore_cut=true marks them ignored)")
    kept = np.flatnonzero(keep)
    chip_of = np.full(len(keep), -1, dtype=np.int64)
    chip_of[kept] = np.arange(len(kept))
    table = table[keep[table[:, 0].astype(np.int64)]]
    table[:, 0] = chip_of[table[:, 0].astype(np.int64)]
    table = table[np.argsort(table[:, 0], kind="stable")]
    log.info("chip %s: kept %d of %d windows (%d objects)", name, len(kept), len(keep), len(table))
    records = chip_records(name, info, rows, cols, kept, table, size, index.classes)

    with open_image(info.path) as src:
        image = SceneImage(src, bands, stretch_settings, show_progress)
        with scene_array_writer(out_root, name, {IMAGE_ARRAY: (len(kept), 3, size, size)}) as (writers, tmp_dir):
            row_of, col_offs = kept // len(cols), cols[kept % len(cols)]
            for r in progress(np.unique(row_of), f"chip {name}", show_progress):
                offsets = col_offs[row_of == r]
                strip = image.read(int(rows[r]), int(offsets[0]), size, int(offsets[-1] - offsets[0]) + size)
                start = offsets - offsets[0]
                writers[IMAGE_ARRAY].append(np.stack([strip[:, :, s:s + size] for s in start]))
            save_scene_boxes(tmp_dir, BOXES_ARRAY, table)
            result = SceneChips(name, records, scene_array_paths(name, [IMAGE_ARRAY, BOXES_ARRAY]), len(keep),
                                stamp, info.height, info.width,
                                {} if settings.ignore_cut or not uncovered else {TOO_LARGE: uncovered})
            write_scene_chips(tmp_dir, result)
    return result


def chip_stamp(name: str, index: LabelIndex, config: PrepConfig) -> dict:
    """What scene ``name``'s chips are made from: chip settings, image file and settings, objects."""
    stamp = stage_stamp("chip", asdict(config.chip), {"image": Path(index.scenes[name]["image"])})
    return {**stamp, "image_settings": config.image_settings(), "objects": index.objects_digest(name)}


def run_chip(name: str, index: LabelIndex, config: PrepConfig) -> bool:
    """Chip one scene unless its stored chips are up to date; True if it ran."""
    stamp = chip_stamp(name, index, config)
    stored = read_scene_chips(config.out_dir, name)
    if not config.force and stored is not None and stored.stamp == stamp:
        return False
    invalidate_dataset(config.out_dir)
    chip_detection_scene(name, index, config.out_dir, config.chip, config.bands, config.stretch, stamp,
                         config.progress)
    return True


# --- split stage ----------------------------------------------------------------------------------------------------

def coco_split(records: Sequence[ChipRecord], tables: dict[str, np.ndarray], classes: Sequence[str]) -> dict:
    """The COCO JSON of one split's chips (in order; image ids 1..N) and their boxes (``tables``: scene ->
    its boxes array); category id = class index + 1, ignored objects ``iscrowd`` 1 and ``ignore`` 1."""
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": record.chip_id, "width": record.width, "height": record.height})
        boxes, labels, ignore = chip_boxes(tables[record.scene], record.index)
        for (x1, y1, x2, y2), label, ignored in zip(boxes.tolist(), labels.tolist(), ignore.tolist()):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(ignored), "ignore": int(ignored),
            })
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_detection_dataset(out_root: Path, scenes: Sequence[SceneChips], index: LabelIndex,
                            settings: SceneSplitSettings, preparation: DetectionPreparation) -> Path:
    """Assign whole scene groups to splits, write ``coco/<split>.json``, the manifest and ``dataset.json``
    (``preparation`` with the object counts, skipped scenes and COCO files added); returns the path of
    ``dataset.json``. Scenes without a kept chip are skipped (``skipped``);
    InputError when no scene has a chip or too few groups for three splits."""
    out_root = Path(out_root)
    skipped = {s.scene: f"chip: no chip kept of {s.windows_total} windows" for s in scenes if not s.records}
    for scene, reason in skipped.items():
        log.warning("scene %s: skipped, it yields no chip (%s)", scene, reason)
    usable = [s for s in scenes if s.records]
    if not usable:
        raise no_chips_error(skipped)
    groups = {s.scene: settings.group(s.scene) for s in usable}
    counts: dict[str, int] = {}
    for s in usable:
        counts[groups[s.scene]] = counts.get(groups[s.scene], 0) + len(s.records)
    assignment = assign_scene_splits(counts, settings)
    records = [replace(r, split=assignment[groups[s.scene]]) for s in usable for r in s.records]
    tables = {s.scene: np.load(out_root / s.arrays[BOXES_ARRAY]) for s in usable}
    objects = {"kept": 0, "ignored": 0}
    for table in tables.values():
        objects["kept"] += int(np.count_nonzero(table[:, 6] == 0))
        objects["ignored"] += int(np.count_nonzero(table[:, 6] > 0))
    for split in SPLITS:
        members = [r for r in records if r.split == split]
        atomic_write_text(out_root / COCO_DIR / f"{split}.json", json.dumps(coco_split(members, tables, index.classes)))
        log.info("split %s: %d chips from %d scenes", split, len(members), len({r.scene for r in members}))
    scene_index = {
        s.scene: {"splits": {split: len(s.records) if assignment[groups[s.scene]] == split else 0 for split in SPLITS},
                  "chips": len(s.records), "windows": s.windows_total, "arrays": s.arrays,
                  "sources": list(s.records[0].sources), "group": groups[s.scene],
                  "gsd": index.scenes[s.scene].get("gsd")}
        for s in usable
    }
    dropped = dict(index.dropped)
    for s in usable:
        for reason, count in s.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    preparation = replace(preparation, objects_in_chips=objects, dropped_labels=dropped, skipped=skipped,
                          coco={split: f"{COCO_DIR}/{split}.json" for split in SPLITS})
    path = write_dataset_index(out_root, records, scene_index, index.classes, ARRAYS, preparation)
    log.info("dataset complete: %s (%d of %d scenes)", path, len(usable), len(scenes))
    return path


def run_split(index: LabelIndex, config: PrepConfig) -> Path:
    """Split the chipped scenes of ``index`` and write the dataset; returns the path of ``dataset.json``."""
    invalidate_dataset(config.out_dir)
    stored = []
    for name in index.scenes:
        chips = read_scene_chips(config.out_dir, name)
        if chips is None:
            raise InputError(f"scene {name}: not chipped yet in {config.out_dir} (run stage=chip scene={name})")
        check_made_with(f"scene {name}", "chip", chips.stamp, asdict(config.chip))
        if (chips.stamp or {}).get("objects") != index.objects_digest(name):
            raise InputError(f"scene {name}: chipped from other labels than {config.labels_path} "
                             f"(run stage=chip scene={name})")
        stored.append(chips)
    preparation = DetectionPreparation(
        chip_size=config.chip.size, overlap=config.chip.overlap, bands=config.bands, format=config.format,
        classes=tuple(index.classes), dota=config.dota if config.format == "dota" else None,
        rareplanes=config.rareplanes if config.format == "rareplanes" else None,
        images=str(config.images.resolve()) if config.images else None,
        labels=str(config.labels.resolve()) if config.labels else None,
        stride=config.chip.stride, min_visible=config.chip.min_visible, ignore_cut=config.chip.ignore_cut,
        keep_empty=config.chip.keep_empty, seed=config.chip.seed, stretch=config.stretch, split=asdict(config.split),
    )
    return write_detection_dataset(config.out_dir, stored, index, config.split, preparation)


def prepare(config: PrepConfig, stage: str = "all", scene: str | None = None) -> Path | None:
    """Run ``stage`` (one of STAGES) for ``scene`` (a scene name, the image's stem; None: every scene).

    ``stage=all`` reads the labels (unless up to date), chips each scene, then splits (only when ``scene``
    is None). Returns the path of ``dataset.json`` when the split ran.
    """
    if stage not in STAGES:
        raise InputError(f"stage: unknown stage {stage!r} (expected one of {', '.join(STAGES)})")
    if stage in ("labels", "split") and scene is not None:
        raise InputError(f"stage={stage} works on all scenes: drop scene=")
    if stage == "labels":
        run_labels(config)
        return None
    index = run_labels(config) if stage == "all" else load_labels(config)
    if stage == "split":
        return run_split(index, config)
    if scene is not None and scene not in index.scenes:
        known = ", ".join(list(index.scenes)[:5]) + (", ..." if len(index.scenes) > 5 else "")
        raise InputError(f"scene {scene}: not a scene of images {config.images} (scenes: {known})")
    for name in [scene] if scene is not None else list(index.scenes):
        ran = run_chip(name, index, config)
        log.info("scene %s: chip %s", name, "done" if ran else "up to date, skipped")
    if stage == "all" and scene is None:
        return run_split(index, config)
    return None


def _hydra_task(cfg: DictConfig) -> None:
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    prepare(PrepConfig.from_cfg(cfg), stage=str(cfg.stage), scene=None if cfg.scene is None else str(cfg.scene))


def main() -> None:
    """Command-line entry: bad input or config prints one line ``error: ...`` and exits 2."""
    from apps.foundation.cli import record_stage, run_hydra_app

    run_hydra_app(record_stage(_hydra_task), "prep_detection")


if __name__ == "__main__":
    main()
