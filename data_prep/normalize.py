"""Normalize stage: stack bands into one uint8 image, each band stretched between its low and high
percentiles of its valid pixels.

Bands may hold any integer or float type. Nodata is the file's nodata value, or 0 (Sentinel-2 L2A)
when the file declares none; in a float band NaN and +-inf are nodata too. Percentiles are exact
(numpy's default linear interpolation) for every type:

- integers of at most 16 bits (uint8, uint16, int8, int16): from a histogram of the raw values,
  accumulated with ``np.bincount`` over row strips (int16 offset by 32768), so the band is never
  held whole; the stretch is a lookup table indexed by the raw value;
- other types (float32, float64, 32/64-bit integers): ``np.partition`` on the valid pixels, gathered
  strip by strip into one array of the band's type (4 bytes per pixel for float32: about 0.5 GB for
  a 10980 x 10980 tile); the stretch is computed per strip.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
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
"""Nodata value of normalized images, and of Sentinel-2 L2A bands that declare none; valid pixels are
stretched to 1..255."""


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


def band_dtype(src: rasterio.DatasetReader) -> np.dtype:
    """The data type of band 1; InputError for a type that is neither integer nor float (complex)."""
    dtype = np.dtype(src.dtypes[0])
    if dtype.kind not in "uif":
        raise InputError(f"band {src.name}: data type {dtype} unsupported (expected integers or floats)")
    return dtype


def uses_histogram(dtype: np.dtype) -> bool:
    """Whether a band type gets exact percentiles from a histogram (integers of at most 16 bits)."""
    return dtype.kind in "ui" and dtype.itemsize <= 2


def nodata_value(src: rasterio.DatasetReader) -> float:
    """The raw value that marks nodata in a band: the file's own, or 0 (Sentinel-2 L2A) if it declares none."""
    return NODATA if src.nodata is None else src.nodata


def valid_pixels(raw: np.ndarray, nodata: float) -> np.ndarray:
    """Bool mask of ``raw``'s shape: True where a pixel is not ``nodata`` (nor NaN or +-inf in a float band)."""
    valid = raw != nodata
    if raw.dtype.kind == "f":
        valid &= np.isfinite(raw)
    return valid


def histogram_index(raw: np.ndarray) -> np.ndarray:
    """Histogram bin of each value of an integer array of at most 16 bits: value - type minimum, unsigned,
    same shape (for int16, value + 32768)."""
    unsigned = np.dtype(f"u{raw.dtype.itemsize}")
    if raw.dtype.kind == "u":
        return raw
    return raw.view(unsigned) ^ unsigned.type(1 << (8 * raw.dtype.itemsize - 1))


def band_histogram(path: Path, strip_rows: int = 1024, show_progress: bool = True) -> np.ndarray:
    """Count each value of band 1 of ``path`` over its valid pixels: (2**bits,) int64, count of value
    ``i + type minimum`` at ``i`` (see ``histogram_index``), nodata counts zeroed.

    The band must hold integers of at most 16 bits (``uses_histogram``).
    """
    path = Path(path)
    with open_raster(path) as src:
        dtype = band_dtype(src)
        if not uses_histogram(dtype):
            raise ValueError(f"band {path}: {dtype} has no histogram of every value")
        hist = np.zeros(2 ** (8 * dtype.itemsize), dtype=np.int64)
        windows = list(strip_windows(src.width, src.height, strip_rows))
        for window in progress(windows, f"histogram {path.name}", show_progress):
            hist += np.bincount(histogram_index(src.read(1, window=window)).ravel(), minlength=hist.size)
        hist[_nodata_index(dtype, nodata_value(src))] = 0
    return hist


def _nodata_index(dtype: np.dtype, nodata: float) -> np.ndarray:
    """The histogram bin of ``nodata`` in a band of ``dtype``: (1,), or (0,) if no value of the type is nodata."""
    if not (float(nodata).is_integer() and np.iinfo(dtype).min <= nodata <= np.iinfo(dtype).max):
        return np.zeros(0, np.intp)
    return histogram_index(np.array([nodata], dtype)).astype(np.intp)


def _ranks(total: int, percentiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks (0-based) of the values just below and above each percentile among ``total`` sorted values,
    and the weight of the upper one, as ``np.percentile``'s linear interpolation takes them."""
    ranks = (total - 1) * np.asarray(percentiles, dtype=np.float64) / 100.0
    lower = np.floor(ranks).astype(np.int64)
    return lower, np.minimum(lower + 1, total - 1), ranks - lower


def histogram_percentiles(hist: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Percentiles (0..100) of the values counted in ``hist`` (value index -> count), as ``np.percentile``
    computes them on the expanded values (linear interpolation between closest ranks): float64 indexes.
    """
    cumulative = np.cumsum(hist)
    total = int(cumulative[-1])
    if total == 0:
        raise ValueError("histogram is empty")
    lower, upper, weight = _ranks(total, percentiles)
    value_below = np.searchsorted(cumulative, lower, side="right")
    value_above = np.searchsorted(cumulative, upper, side="right")
    return value_below + weight * (value_above - value_below)


def values_percentiles(values: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Percentiles (0..100) of ``values`` (1-D, non-empty; partially sorted in place), as ``np.percentile``
    computes them: float64."""
    lower, upper, weight = _ranks(values.size, percentiles)
    values.partition(np.unique(np.concatenate([lower, upper])))
    below, above = values[lower].astype(np.float64), values[upper].astype(np.float64)
    return below + weight * (above - below)


def _valid_values(src: rasterio.DatasetReader, strip_rows: int, show_progress: bool) -> np.ndarray:
    """The valid pixels of band 1 gathered strip by strip: (n,) of the band's type."""
    values = np.empty(src.width * src.height, dtype=band_dtype(src))
    nodata, count = nodata_value(src), 0
    for window in progress(list(strip_windows(src.width, src.height, strip_rows)), f"read {Path(src.name).name}",
                           show_progress):
        raw = src.read(1, window=window)
        valid = raw[valid_pixels(raw, nodata)]
        values[count:count + valid.size] = valid
        count += valid.size
    return values[:count]


def stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` clamped to [low, high] and stretched linearly to 1..255 (computed in float64, rounded),
    NaN -> 0 (NODATA): uint8, same shape. A constant band (low == high) maps values <= low to 1 and above it to 255."""
    values = np.asarray(values, dtype=np.float64)
    if high > low:
        scaled = 1.0 + (np.clip(values, low, high) - low) * (254.0 / (high - low))
    else:
        scaled = np.where(values > low, 255.0, 1.0)
    return np.where(np.isnan(values), NODATA, np.rint(scaled)).astype(np.uint8)


@dataclass(frozen=True)
class BandStretch:
    """How one band's raw values become uint8: ``low`` -> 1, ``high`` -> 255 (raw units, clamped), nodata -> 0.

    ``lut``: for integer bands of at most 16 bits, the result per ``histogram_index`` of the raw value
    ((2**bits,) uint8); None for other types, stretched value by value.
    """

    low: float
    high: float
    nodata: float
    lut: np.ndarray | None

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """(H, W) raw values -> (H, W) uint8."""
        if self.lut is not None:
            return np.take(self.lut, histogram_index(raw))
        out = stretch(raw, self.low, self.high)
        out[~valid_pixels(raw, self.nodata)] = NODATA
        return out


def band_stretch(path: Path, settings: NormalizeSettings, strip_rows: int = 1024,
                 show_progress: bool = True) -> BandStretch:
    """The stretch of band 1 of ``path`` between its percentiles (see the module for how they are found).

    Raises InputError naming the file for an unsupported type and for a band without valid pixels.
    """
    path = Path(path)
    percentiles = [settings.low_percentile, settings.high_percentile]
    with open_raster(path) as src:
        dtype, nodata = band_dtype(src), nodata_value(src)
        if uses_histogram(dtype):
            hist = band_histogram(path, strip_rows, show_progress)
            found = bool(hist.any())
        else:
            values = _valid_values(src, strip_rows, show_progress)
            found = values.size > 0
    if not found:
        raise InputError(f"band {path}: no valid pixels (every pixel is nodata)")
    if uses_histogram(dtype):
        offset = int(np.iinfo(dtype).min)
        low, high = histogram_percentiles(hist, percentiles) + offset
        lut = stretch(np.arange(hist.size) + offset, low, high)
        lut[_nodata_index(dtype, nodata)] = NODATA
        return BandStretch(float(low), float(high), nodata, lut)
    low, high = values_percentiles(values, percentiles)
    return BandStretch(float(low), float(high), nodata, None)


def _write_stretched(band_paths: Mapping[str, Path], stretches: Mapping[str, BandStretch], out_path: Path,
                     gtiff: GeoTiffSettings, tags: Mapping[str, str] | None, show_progress: bool,
                     pool: ThreadPoolExecutor) -> None:
    """Write the stretched bands strip by strip; a strip is read and stretched (one band a thread) while the
    one before it is written."""
    names = list(band_paths)
    sources = [rasterio.open(band_paths[name]) for name in names]
    try:
        profile = output_profile(sources[0], len(names), "uint8", NODATA, gtiff)
        with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            def stretched(window):
                def band(i: int) -> np.ndarray:
                    with reading(Path(sources[i].name), "band"):
                        return stretches[names[i]].apply(sources[i].read(1, window=window))

                stack = np.stack(list(pool.map(band, range(len(names)))))
                stack *= np.logical_and.reduce(stack != NODATA, axis=0)
                return stack

            writing = None
            for window in progress(list(strip_windows(dst.width, dst.height, gtiff.strip_rows)),
                                   f"normalize {Path(out_path).name}", show_progress):
                stack = stretched(window)
                if writing is not None:
                    writing.result()
                writing = pool.submit(dst.write, stack, window=window)
            if writing is not None:
                writing.result()
            dst.update_tags(**(tags or {}))
            dst.descriptions = tuple(names)
    finally:
        for src in sources:
            src.close()


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
    all on one grid, any integer or float type) stretched to uint8, tiled GeoTIFF, (len(bands), H, W), nodata 0.

    A pixel that is nodata in any input band is 0 in every output band. Returns band name ->
    (low, high) percentile values in raw units. Raises InputError for a band without valid pixels.
    """
    names = list(band_paths)
    # Threads overlap GDAL's decoding and encoding, which release the GIL, with numpy's work on another strip.
    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1)) as pool:
        found = pool.map(lambda name: band_stretch(Path(band_paths[name]), settings, gtiff.strip_rows, show_progress),
                         names)
        stretches = dict(zip(names, found))
        for name in names:
            log.info("normalize %s: p%g..p%g = %g..%g", Path(band_paths[name]).name, settings.low_percentile,
                     settings.high_percentile, stretches[name].low, stretches[name].high)
        _write_stretched(band_paths, stretches, out_path, gtiff, tags, show_progress, pool)
    return {name: (s.low, s.high) for name, s in stretches.items()}
