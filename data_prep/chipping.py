"""Chip stage: cut a labelled scene into square chips with a sliding window.

Windows step by ``size * (1 - overlap)`` and the last window of each row and column sits flush
with the right and bottom edge, so the whole raster is covered. The small-scene policy, one for
every prep and predictor (``window_offsets``): a side shorter than a window gets one window at 0
that reaches past the raster, padded with nodata (0 in images, 255 in masks); the keep rule then
judges that padding like any other nodata. Which windows are kept is
decided on the mask alone (class and nodata fractions per window from column sums and a
cumulative sum per window row) by the app's keep rule, before any image pixel is read; images
are then read one window row at a time and their chips appended to the scene's chip arrays, so
memory stays flat. Masks hold two classes, 0 (negative) and 1 (positive), and 255 for nodata;
the app names the classes.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from apps.foundation.errors import InputError
from apps.foundation.chips import IGNORE_INDEX, ChipRecord, scene_array_paths, scene_array_writer
from data_prep.geotiff import in_gdal_env, open_raster, progress, reading
from data_prep.scenes import NoChips, check_same_grid

log = logging.getLogger(__name__)

NEGATIVE, POSITIVE = 0, 1
"""Mask values of the two classes (255 is nodata)."""
MASK_ARRAY = "mask"
SCENE_CHIPS_FILE = "chips.json"
"""Per-scene list of kept chips, written with the scene's arrays; its presence marks the scene chipped."""


@dataclass(frozen=True)
class ChipSettings:
    """Windows of ``size`` x ``size`` px overlapping by ``overlap`` (fraction of ``size``)."""

    size: int = 256
    overlap: float = 0.25

    def __post_init__(self):
        if self.size < 1:
            raise InputError(f"chip.size: must be a positive number of pixels, got {self.size}")
        if not 0 <= self.overlap < 1:
            raise InputError(f"chip.overlap: must be in [0, 1), got {self.overlap}")

    @property
    def stride(self) -> int:
        """Step between neighbouring windows, px (at least 1)."""
        return max(1, round(self.size * (1 - self.overlap)))


@dataclass(frozen=True)
class ChipWindows:
    """Windows of one scene: pixel offsets of each window's top-left corner and what it covers.

    All arrays are (N,): ``row_off``/``col_off`` in px, fractions of the window's pixels that are
    class 0 (``negative_fraction``), class 1 (``positive_fraction``) and nodata.
    """

    row_off: np.ndarray
    col_off: np.ndarray
    negative_fraction: np.ndarray
    positive_fraction: np.ndarray
    nodata_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.row_off)

    def subset(self, keep: np.ndarray) -> "ChipWindows":
        return ChipWindows(*(getattr(self, f.name)[keep] for f in fields(self)))


KeepRule = Callable[[ChipWindows], np.ndarray]
"""An app's keep rule: windows -> (N,) bool, True for the windows worth a chip."""


@dataclass(frozen=True)
class SceneChips:
    """What the chip stage stored for one scene: its kept chips (split still empty), how they were made,
    the size of the scene's raster (px), and the scene's objects no chip holds, by reason -> count."""

    scene: str
    records: list[ChipRecord]
    arrays: dict[str, str]
    windows_total: int
    stamp: dict | None
    height: int
    width: int
    dropped: dict[str, int] = field(default_factory=dict)


def window_offsets(length: int, size: int, stride: int) -> np.ndarray:
    """Offsets (px) of windows of ``size`` stepping by ``stride`` along ``length``, the last one flush
    with the end: (n,) int64. A side shorter than a window gets the one window [0], padded beyond
    ``length`` (the small-scene policy of the module doc)."""
    if length <= size:
        return np.zeros(1, dtype=np.int64)
    offsets = np.arange(0, length - size + 1, stride, dtype=np.int64)
    if offsets[-1] != length - size:
        offsets = np.append(offsets, length - size)
    return offsets


def pad_to_window(mask: np.ndarray, size: int) -> np.ndarray:
    """``mask`` ((H, W)) padded at the bottom and right with nodata (255) to at least ``size`` px a side."""
    pad = ((0, max(0, size - mask.shape[0])), (0, max(0, size - mask.shape[1])))
    return np.pad(mask, pad, constant_values=IGNORE_INDEX) if pad != ((0, 0), (0, 0)) else mask


def scan_windows(mask: np.ndarray, settings: ChipSettings) -> ChipWindows:
    """All sliding windows over ``mask`` ((H, W) uint8: 0, 1, 255) with their class and nodata fractions,
    in row-major order (fractions are counts / window area, so they compare exactly with thresholds).
    ``mask`` is at least one window on each side (``pad_to_window``)."""
    size = settings.size
    rows = window_offsets(mask.shape[0], size, settings.stride)
    cols = window_offsets(mask.shape[1], size, settings.stride)
    positive = np.empty((len(rows), len(cols)), dtype=np.int64)
    nodata = np.empty_like(positive)
    for i, row_off in enumerate(rows):
        strip = mask[row_off:row_off + size]
        for counts, value in ((positive, POSITIVE), (nodata, IGNORE_INDEX)):
            running = np.concatenate(([0], np.cumsum(np.count_nonzero(strip == value, axis=0))))
            counts[i] = running[cols + size] - running[cols]
    area = size * size
    negative = area - positive - nodata
    row_grid, col_grid = np.meshgrid(rows, cols, indexing="ij")
    return ChipWindows(row_grid.ravel(), col_grid.ravel(),
                       *(counts.ravel() / area for counts in (negative, positive, nodata)))


@in_gdal_env
def chip_scene(
    scene: str,
    label_path: Path,
    images: Mapping[str, Path],
    out_root: Path,
    settings: ChipSettings,
    keep: KeepRule,
    classes: Sequence[str],
    sources: tuple[str, ...] = (),
    stamp: Mapping | None = None,
    show_progress: bool = True,
) -> SceneChips:
    """Cut one scene into the chips ``keep`` selects and store them under ``out_root/scenes/<scene>/``.

    ``label_path``: the scene's mask (0/1/255); ``images``: array name -> uint8 image on the same
    grid (e.g. {"normalized": ..., "tci": ...}); ``classes``: the names of mask values 0 and 1, keys of
    each record's class fractions; ``sources``: the source products every chip records. Stores per kept
    chip the images as (N, C, size, size) arrays and the mask as ``mask`` (N, size, size), plus
    ``chips.json`` with the chip records (``split`` left empty) and ``stamp``. A scene with no kept chip
    is stored with empty arrays. A raster smaller than one chip gets padded windows (the module's
    small-scene policy); when none of them is kept, NoChips says the raster is too small. InputError
    when an image is off its grid or not uint8.
    """
    label_path = Path(label_path)
    check_same_grid({MASK_ARRAY: label_path, **{name: Path(p) for name, p in images.items()}}, f"scene {scene}")
    with open_raster(label_path, "label raster") as src:
        mask = src.read(1)
        transform, crs = src.transform, src.crs.to_wkt()
    height, width = mask.shape
    size = settings.size
    padded = height < size or width < size
    mask = pad_to_window(mask, size)
    all_windows = scan_windows(mask, settings)
    kept = all_windows.subset(keep(all_windows))
    if padded and not len(kept):
        raise NoChips(f"scene {scene}", f"raster {width}x{height} px is smaller than one chip ({size}x{size} px)")
    log.info("chip %s: kept %d of %d windows", scene, len(kept), len(all_windows))

    readers = {name: rasterio.open(path) for name, path in images.items()}
    try:
        for name, src in readers.items():
            if set(src.dtypes) != {"uint8"}:
                raise InputError(f"{name} raster {src.name}: data type {src.dtypes[0]}, expected uint8 "
                                 f"(chip arrays are uint8: stretch it first)")
        shapes = {name: (len(kept), src.count, size, size) for name, src in readers.items()}
        shapes[MASK_ARRAY] = (len(kept), size, size)
        with scene_array_writer(out_root, scene, shapes) as (writers, tmp_dir), \
                ThreadPoolExecutor(max_workers=min(len(readers), os.cpu_count() or 1) or 1) as pool:
            for row_off in progress(np.unique(kept.row_off), f"chip {scene}", show_progress):
                cols = kept.col_off[kept.row_off == row_off]
                row_window = Window(int(cols[0]), int(row_off), int(cols[-1] - cols[0]) + size, size)

                def chip_row(name: str) -> None:  # one image a thread: GDAL decodes with the GIL released
                    with reading(Path(readers[name].name), f"{name} raster"):  # boundless: a small raster's padding
                        strip = readers[name].read(window=row_window, boundless=padded, fill_value=0)
                    writers[name].append(np.stack([strip[:, :, c - cols[0]:c - cols[0] + size] for c in cols]))

                list(pool.map(chip_row, readers))
                writers[MASK_ARRAY].append(np.stack([mask[row_off:row_off + size, c:c + size] for c in cols]))
            records = [chip_record(scene, i, kept, size, tuple(sources), crs, transform, classes)
                       for i in range(len(kept))]
            result = SceneChips(scene, records, scene_array_paths(scene, shapes), len(all_windows),
                                dict(stamp) if stamp is not None else None, height, width)
            write_scene_chips(tmp_dir, result)
    finally:
        for src in readers.values():
            src.close()
    return result


def chip_record(scene: str, i: int, kept: ChipWindows, size: int, sources: tuple[str, ...], crs: str,
                transform: rasterio.Affine, classes: Sequence[str]) -> ChipRecord:
    """The record of chip ``i`` of ``kept`` (the scene's kept windows): id ``<scene>_<i:05d>``, window,
    georeference (``crs`` as WKT, the scene raster's ``transform``) and class fractions by ``classes``."""
    row_off, col_off = int(kept.row_off[i]), int(kept.col_off[i])
    chip_transform = transform @ rasterio.Affine.translation(col_off, row_off)
    fractions = {classes[NEGATIVE]: float(kept.negative_fraction[i]), classes[POSITIVE]: float(kept.positive_fraction[i])}
    return ChipRecord(
        chip_id=f"{scene}_{i:05d}", split="", scene=scene, index=i, sources=sources,
        col_off=col_off, row_off=row_off, width=size, height=size, crs=crs,
        transform=tuple(chip_transform)[:6], nodata_fraction=float(kept.nodata_fraction[i]),
        class_fractions=fractions,
    )


def write_scene_chips(scene_dir: Path, chips: SceneChips) -> None:
    """Write ``chips.json`` (the kept chips and how they were made) into a scene's chip directory."""
    data = {
        "scene": chips.scene,
        "stamp": chips.stamp,
        "windows_total": chips.windows_total,
        "height": chips.height,
        "width": chips.width,
        "arrays": chips.arrays,
        "dropped": chips.dropped,
        "chips": [asdict(r) for r in chips.records],
    }
    (Path(scene_dir) / SCENE_CHIPS_FILE).write_text(json.dumps(data, indent=1))


def read_scene_chips(out_root: Path, scene: str) -> SceneChips | None:
    """The chips stored for ``scene`` under ``out_root``, or None if the scene was not chipped (completely,
    or by a version that did not record the raster size: it is chipped again)."""
    path = Path(out_root) / "scenes" / scene / SCENE_CHIPS_FILE
    try:
        data = json.loads(path.read_text())
        size = data["height"], data["width"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None
    records = [ChipRecord(**{**r, "transform": tuple(r["transform"]), "sources": tuple(r["sources"])}) for r in data["chips"]]
    return SceneChips(data["scene"], records, data["arrays"], data["windows_total"], data["stamp"], *size,
                      data.get("dropped", {}))
