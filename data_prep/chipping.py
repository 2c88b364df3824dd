"""Chip stage: cut a labelled scene into square chips with a sliding window.

Windows step by ``size * (1 - overlap)`` and the last window of each row and column sits flush
with the right and bottom edge, so the whole raster is covered. Which windows are kept is
decided on the mask alone (class and nodata fractions per window from column sums and a
cumulative sum per window row), before any image pixel is read; images are then read one
window row at a time and their chips appended to the scene's chip arrays, so memory stays flat.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Mapping

import numpy as np
import rasterio
from rasterio.windows import Window

from apps.foundation.errors import InputError
from apps.foundation.chips import IGNORE_INDEX, ChipRecord, scene_array_paths, scene_array_writer
from data_prep.geotiff import in_gdal_env, open_raster, progress, reading
from data_prep.label import BURNED, CLASSES, UNBURNED
from data_prep.scenes import check_same_grid

log = logging.getLogger(__name__)

MASK_ARRAY = "mask"
SCENE_CHIPS_FILE = "chips.json"
"""Per-scene list of kept chips, written with the scene's arrays; its presence marks the scene chipped."""


@dataclass(frozen=True)
class ChipSettings:
    """Chips of ``size`` x ``size`` px, windows overlapping by ``overlap`` (fraction of ``size``); a chip is
    kept when every class covers at least ``min_class_fraction`` of it and nodata at most ``max_nodata_fraction``."""

    size: int = 256
    overlap: float = 0.25
    min_class_fraction: float = 0.1
    max_nodata_fraction: float = 0.1

    def __post_init__(self):
        if self.size < 1:
            raise InputError(f"chip.size: must be a positive number of pixels, got {self.size}")
        if not 0 <= self.overlap < 1:
            raise InputError(f"chip.overlap: must be in [0, 1), got {self.overlap}")
        if not 0 <= self.min_class_fraction <= 0.5:
            raise InputError(f"chip.min_class_fraction: must be in [0, 0.5], got {self.min_class_fraction}")
        if not 0 <= self.max_nodata_fraction <= 1:
            raise InputError(f"chip.max_nodata_fraction: must be in [0, 1], got {self.max_nodata_fraction}")

    @property
    def stride(self) -> int:
        """Step between neighbouring windows, px (at least 1)."""
        return max(1, round(self.size * (1 - self.overlap)))


@dataclass(frozen=True)
class ChipWindows:
    """Windows of one scene: pixel offsets of each window's top-left corner and what it covers.

    All arrays are (N,): ``row_off``/``col_off`` in px, fractions of the window's pixels.
    """

    row_off: np.ndarray
    col_off: np.ndarray
    unburned_fraction: np.ndarray
    burned_fraction: np.ndarray
    nodata_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.row_off)

    def subset(self, keep: np.ndarray) -> "ChipWindows":
        return ChipWindows(*(getattr(self, f.name)[keep] for f in fields(self)))


@dataclass(frozen=True)
class SceneChips:
    """What the chip stage stored for one scene: its kept chips (split still empty) and how they were made."""

    scene: str
    records: list[ChipRecord]
    arrays: dict[str, str]
    windows_total: int
    stamp: dict | None


def window_offsets(length: int, size: int, stride: int) -> np.ndarray:
    """Offsets (px) of windows of ``size`` stepping by ``stride`` along ``length``, the last one flush
    with the end: (n,) int64, empty when ``length < size``."""
    if length < size:
        return np.zeros(0, dtype=np.int64)
    offsets = np.arange(0, length - size + 1, stride, dtype=np.int64)
    if offsets[-1] != length - size:
        offsets = np.append(offsets, length - size)
    return offsets


def scan_windows(mask: np.ndarray, settings: ChipSettings) -> ChipWindows:
    """All sliding windows over ``mask`` ((H, W) uint8: 0, 1, 255) with their class and nodata fractions,
    in row-major order (fractions are counts / window area, so they compare exactly with thresholds)."""
    size = settings.size
    rows = window_offsets(mask.shape[0], size, settings.stride)
    cols = window_offsets(mask.shape[1], size, settings.stride)
    burned = np.empty((len(rows), len(cols)), dtype=np.int64)
    nodata = np.empty_like(burned)
    for i, row_off in enumerate(rows):
        strip = mask[row_off:row_off + size]
        for counts, value in ((burned, BURNED), (nodata, IGNORE_INDEX)):
            running = np.concatenate(([0], np.cumsum(np.count_nonzero(strip == value, axis=0))))
            counts[i] = running[cols + size] - running[cols]
    area = size * size
    unburned = area - burned - nodata
    row_grid, col_grid = np.meshgrid(rows, cols, indexing="ij")
    return ChipWindows(row_grid.ravel(), col_grid.ravel(), *(counts.ravel() / area for counts in (unburned, burned, nodata)))


def select_windows(windows: ChipWindows, settings: ChipSettings) -> ChipWindows:
    """The windows worth keeping: both classes >= ``min_class_fraction``, nodata <= ``max_nodata_fraction``."""
    keep = (
        (windows.burned_fraction >= settings.min_class_fraction)
        & (windows.unburned_fraction >= settings.min_class_fraction)
        & (windows.nodata_fraction <= settings.max_nodata_fraction)
    )
    return windows.subset(keep)


@in_gdal_env
def chip_scene(
    scene: str,
    label_path: Path,
    images: Mapping[str, Path],
    out_root: Path,
    settings: ChipSettings = ChipSettings(),
    source: str = "",
    stamp: Mapping | None = None,
    show_progress: bool = True,
) -> SceneChips:
    """Cut one scene into chips and store them under ``out_root/scenes/<scene>/``.

    ``label_path``: the scene's mask (0/1/255); ``images``: array name -> uint8 image on the same
    grid (e.g. {"normalized": ..., "tci": ...}). Stores per kept chip the images as (N, C, size, size)
    arrays and the mask as ``mask`` (N, size, size), plus ``chips.json`` with the chip records
    (``split`` left empty) and ``stamp``. A scene with no kept chip is stored with empty arrays.
    Raises InputError when the raster is smaller than one chip or the images are off its grid.
    """
    label_path = Path(label_path)
    check_same_grid({MASK_ARRAY: label_path, **{name: Path(p) for name, p in images.items()}}, f"scene {scene}")
    with open_raster(label_path, "label raster") as src:
        mask = src.read(1)
        transform, crs = src.transform, src.crs.to_wkt()
    height, width = mask.shape
    size = settings.size
    if height < size or width < size:
        raise InputError(f"scene {scene}: raster {width}x{height} px is smaller than one chip ({size}x{size} px)")
    all_windows = scan_windows(mask, settings)
    kept = select_windows(all_windows, settings)
    log.info("chip %s: kept %d of %d windows", scene, len(kept), len(all_windows))

    sources = {name: rasterio.open(path) for name, path in images.items()}
    try:
        shapes = {name: (len(kept), src.count, size, size) for name, src in sources.items()}
        shapes[MASK_ARRAY] = (len(kept), size, size)
        with scene_array_writer(out_root, scene, shapes) as (writers, tmp_dir):
            for row_off in progress(np.unique(kept.row_off), f"chip {scene}", show_progress):
                cols = kept.col_off[kept.row_off == row_off]
                row_window = Window(int(cols[0]), int(row_off), int(cols[-1] - cols[0]) + size, size)
                for name, src in sources.items():
                    with reading(Path(src.name), f"{name} raster"):
                        strip = src.read(window=row_window)
                    writers[name].append(np.stack([strip[:, :, c - cols[0]:c - cols[0] + size] for c in cols]))
                writers[MASK_ARRAY].append(np.stack([mask[row_off:row_off + size, c:c + size] for c in cols]))
            records = [
                _chip_record(scene, i, kept, size, source, crs, transform) for i in range(len(kept))
            ]
            result = SceneChips(scene, records, scene_array_paths(scene, shapes), len(all_windows),
                                dict(stamp) if stamp is not None else None)
            write_scene_chips(tmp_dir, result)
    finally:
        for src in sources.values():
            src.close()
    return result


def _chip_record(scene: str, i: int, kept: ChipWindows, size: int, source: str, crs: str,
                 transform: rasterio.Affine) -> ChipRecord:
    row_off, col_off = int(kept.row_off[i]), int(kept.col_off[i])
    chip_transform = transform @ rasterio.Affine.translation(col_off, row_off)
    fractions = {CLASSES[UNBURNED]: float(kept.unburned_fraction[i]), CLASSES[BURNED]: float(kept.burned_fraction[i])}
    return ChipRecord(
        chip_id=f"{scene}_{i:05d}", split="", scene=scene, index=i, sources=(source,),
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
        "arrays": chips.arrays,
        "chips": [asdict(r) for r in chips.records],
    }
    (Path(scene_dir) / SCENE_CHIPS_FILE).write_text(json.dumps(data, indent=1))


def read_scene_chips(out_root: Path, scene: str) -> SceneChips | None:
    """The chips stored for ``scene`` under ``out_root``, or None if the scene was not chipped (completely)."""
    path = Path(out_root) / "scenes" / scene / SCENE_CHIPS_FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    records = [ChipRecord(**{**r, "transform": tuple(r["transform"]), "sources": tuple(r["sources"])}) for r in data["chips"]]
    return SceneChips(data["scene"], records, data["arrays"], data["windows_total"], data["stamp"])
