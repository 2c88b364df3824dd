"""Normalize stage: stack reflectance bands into one uint8 image, each band stretched between
its low and high percentiles.

Percentiles are exact (numpy's default linear interpolation) and cheap: they come from a
histogram of the band's integer values, accumulated with ``np.bincount`` over row strips, so
the band is never held whole or as float. The stretch is a lookup table indexed by the raw value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import rasterio

from apps.foundation.errors import InputError
from apps.foundation.files import atomic_path
from data_prep.geotiff import (
    GeoTiffSettings, in_gdal_env, open_raster, output_profile, progress, reading, strip_windows,
)

log = logging.getLogger(__name__)

NODATA = 0
"""Nodata value of normalized images; valid pixels are stretched to 1..255."""


@dataclass(frozen=True)
class NormalizeSettings:
    """Stretch each band linearly from its ``low_percentile`` (-> 1) to its ``high_percentile`` (-> 255)."""

    low_percentile: float = 1.0
    high_percentile: float = 99.0

    def __post_init__(self):
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise InputError(
                f"normalize: need 0 <= low_percentile < high_percentile <= 100, "
                f"got {self.low_percentile} and {self.high_percentile}"
            )


def invalid_values(src: rasterio.DatasetReader) -> list[int]:
    """Raw values that mark nodata in a band: 0 always, plus the file's own nodata value if set."""
    values = {0}
    if src.nodata is not None and float(src.nodata).is_integer():
        values.add(int(src.nodata))
    return sorted(values)


def band_histogram(path: Path, strip_rows: int = 1024, show_progress: bool = True) -> np.ndarray:
    """Count each value of band 1 of ``path`` over its valid pixels: (2**bits,) int64, nodata counts zeroed.

    The band must hold unsigned integers of at most 16 bits (Sentinel-2 L2A reflectance x10000).
    """
    path = Path(path)
    with open_raster(path) as src:
        dtype = np.dtype(src.dtypes[0])
        if dtype.kind != "u" or dtype.itemsize > 2:
            raise InputError(f"band {path}: data type {dtype} unsupported (expected uint8 or uint16)")
        hist = np.zeros(2 ** (8 * dtype.itemsize), dtype=np.int64)
        windows = list(strip_windows(src.width, src.height, strip_rows))
        for window in progress(windows, f"histogram {path.name}", show_progress):
            hist += np.bincount(src.read(1, window=window).ravel(), minlength=hist.size)
        hist[invalid_values(src)] = 0
    return hist


def histogram_percentiles(hist: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Percentiles (0..100) of the values counted in ``hist`` (value -> count), as ``np.percentile``
    computes them on the expanded values (linear interpolation between closest ranks): float64.
    """
    cumulative = np.cumsum(hist)
    total = int(cumulative[-1])
    if total == 0:
        raise ValueError("histogram is empty")
    ranks = (total - 1) * np.asarray(percentiles, dtype=np.float64) / 100.0
    lower = np.floor(ranks)
    value_below = np.searchsorted(cumulative, lower, side="right")
    value_above = np.searchsorted(cumulative, np.minimum(lower + 1, total - 1), side="right")
    return value_below + (ranks - lower) * (value_above - value_below)


def stretch_lut(low: float, high: float, invalid: Sequence[int], size: int) -> np.ndarray:
    """Lookup table raw value -> uint8: clamp to [low, high], stretch linearly to 1..255, ``invalid`` -> 0.

    (size,) uint8. A constant band (low == high) maps values <= low to 1 and above it to 255.
    """
    values = np.arange(size, dtype=np.float64)
    if high > low:
        scaled = 1.0 + (np.clip(values, low, high) - low) * (254.0 / (high - low))
    else:
        scaled = np.where(values > low, 255.0, 1.0)
    lut = np.rint(scaled).astype(np.uint8)
    lut[list(invalid)] = NODATA
    return lut


@in_gdal_env
def normalize_bands(
    band_paths: Mapping[str, Path],
    out_path: Path,
    settings: NormalizeSettings = NormalizeSettings(),
    gtiff: GeoTiffSettings = GeoTiffSettings(),
    tags: Mapping[str, str] | None = None,
    show_progress: bool = True,
) -> dict[str, tuple[float, float]]:
    """Write ``out_path``: the bands of ``band_paths`` (name -> single-band file, in output band order,
    all on one grid) stretched to uint8, tiled GeoTIFF, (len(bands), H, W), nodata 0.

    A pixel that is nodata in any input band is 0 in every output band. Returns band name ->
    (low, high) percentile values in raw units. Raises InputError for a band without valid pixels.
    """
    names = list(band_paths)
    luts, limits = [], {}
    for name in names:
        path = Path(band_paths[name])
        hist = band_histogram(path, gtiff.strip_rows, show_progress)
        if not hist.any():
            raise InputError(f"band {path}: no valid pixels (every pixel is nodata)")
        low, high = histogram_percentiles(hist, [settings.low_percentile, settings.high_percentile])
        limits[name] = (float(low), float(high))
        with open_raster(path) as src:
            luts.append(stretch_lut(low, high, invalid_values(src), hist.size))
        log.info("normalize %s: p%g..p%g = %g..%g", path.name, settings.low_percentile,
                 settings.high_percentile, low, high)

    sources = [rasterio.open(band_paths[name]) for name in names]
    try:
        reference = sources[0]
        profile = output_profile(reference, len(names), "uint8", NODATA, gtiff)
        with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            windows = list(strip_windows(reference.width, reference.height, gtiff.strip_rows))
            for window in progress(windows, f"normalize {Path(out_path).name}", show_progress):
                stack = np.empty((len(names), window.height, window.width), dtype=np.uint8)
                for band, (src, lut) in enumerate(zip(sources, luts)):
                    with reading(Path(src.name), "band"):
                        np.take(lut, src.read(1, window=window), out=stack[band])
                valid = np.logical_and.reduce(stack != NODATA, axis=0)
                stack *= valid
                dst.write(stack, window=window)
            dst.update_tags(**(tags or {}))
            dst.descriptions = tuple(names)
    finally:
        for src in sources:
            src.close()
    return limits
