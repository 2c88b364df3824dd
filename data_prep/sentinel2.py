"""Sentinel-2 L2A products for change detection: bands, metadata, cloud mask and band combinations.

A product is a folder found as ``data_prep.scenes.find_scene`` finds a scene (a ``.SAFE`` product
or a folder of band files) holding B02, B03, B04, B08 at 10 m and SCL at 20 m, plus its metadata:
``MTD_MSIL2A.xml`` (in the folder or its ``.SAFE``) or a STAC item ``*.json`` beside the bands.

Digital numbers become reflectance as ``(DN + BOA_ADD_OFFSET) / 10000``; DN 0 is no data. The
offset comes from the ``boa_offset`` setting if set, else from the MTD's BOA_ADD_OFFSET values,
else from the processing baseline (-1000 from baseline 04.00 on, 0 before). Products are read
onto a reference 10 m grid in row strips: reflectance bands bilinearly, SCL by nearest.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from apps.foundation.errors import InputError
from data_prep.geotiff import first_line, open_raster, reading, strip_windows
from data_prep.normalize import histogram_percentiles
from data_prep.scenes import check_same_grid, find_scene

log = logging.getLogger(__name__)

REFLECTANCE_BANDS = ("B02", "B03", "B04", "B08")
SCL_BAND = "SCL"
BAND_RESOLUTION_M = {"B02": 10.0, "B03": 10.0, "B04": 10.0, "B08": 10.0, SCL_BAND: 20.0}
QUANTIFICATION = 10000.0
"""DN per unit reflectance (BOA_QUANTIFICATION_VALUE of every L2A baseline so far)."""
OFFSET_BASELINE = (4, 0)
"""First processing baseline whose DNs carry BOA_ADD_OFFSET (2022-01-25 on, and reprocessed products)."""
BASELINE_OFFSET = -1000
MTD_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
"""Band names by the ``band_id`` of the MTD's BOA_ADD_OFFSET elements."""
CLOUD_MASKS = ("scl", "none")
COMBINATIONS: dict[str, tuple[str, ...]] = {"nirrg": ("B08", "B04", "B03"), "ndvi": ("NDVI",), "evi": ("EVI",)}
"""Band combination -> its channel names, in channel order."""
RATIO_CHANNELS = ("NDVI", "EVI")
"""Channels that are ratios of reflectance bands, in [-1, 1] (EVI beyond it where its denominator nears 0)."""
HISTOGRAM_BINS = 2**15
"""Levels (equal bins over [-1, 1]) of a ratio channel: its percentiles within half a bin (3.1e-5) of exact."""


@dataclass(frozen=True)
class Sentinel2Settings:
    """``cloud_mask``: ``scl`` (pixels whose SCL class is in ``cloud_classes`` are no data) or ``none``;
    ``boa_offset``: the BOA_ADD_OFFSET (DN) for every band of every product, overriding the metadata."""

    cloud_mask: str = "scl"
    cloud_classes: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
    boa_offset: int | None = None

    def __post_init__(self):
        if self.cloud_mask not in CLOUD_MASKS:
            raise InputError(f"sentinel2.cloud_mask: unknown {self.cloud_mask!r} (expected one of {', '.join(CLOUD_MASKS)})")
        object.__setattr__(self, "cloud_classes", tuple(int(c) for c in self.cloud_classes))


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform and size in px."""

    crs: CRS
    transform: rasterio.Affine
    width: int
    height: int

    @classmethod
    def of(cls, path: Path) -> "Grid":
        with open_raster(path) as src:
            return cls(src.crs, src.transform, src.width, src.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        return rasterio.transform.array_bounds(self.height, self.width, self.transform)


@dataclass(frozen=True)
class Product:
    """One L2A product: band name -> file (SCL absent when the cloud mask is off), metadata file,
    processing baseline (e.g. "05.00"), BOA_ADD_OFFSET per reflectance band (DN), sensing date."""

    folder: Path
    bands: Mapping[str, Path]
    metadata: Path
    baseline: str
    offsets: Mapping[str, int]
    sensing_date: date

    @property
    def grid(self) -> Grid:
        """The 10 m grid of its reflectance bands."""
        return Grid.of(self.bands[REFLECTANCE_BANDS[0]])

    def facts(self) -> dict:
        """What the dataset records about the product."""
        return {"product": str(self.folder), "baseline": self.baseline, "boa_add_offset": dict(self.offsets),
                "sensing_date": self.sensing_date.isoformat(), "metadata": str(self.metadata)}


def _baseline_tuple(baseline: str, source: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in baseline.strip().split("."))
    except ValueError:
        raise InputError(f"metadata {source}: processing baseline {baseline!r} is not of the form NN.NN") from None


def _iso_date(text: str, source: Path, what: str) -> date:
    try:
        return date.fromisoformat(str(text).strip()[:10])
    except ValueError:
        raise InputError(f"metadata {source}: {what} {text!r} is not an ISO date") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_mtd(path: Path) -> tuple[str, dict[str, int], date]:
    """Processing baseline, BOA_ADD_OFFSET per band name ({} when the list is absent) and sensing date
    (PRODUCT_START_TIME) of an ``MTD_MSIL2A.xml``."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputError(f"metadata {path}: unreadable ({first_line(exc)})") from None
    texts: dict[str, str] = {}
    offsets: dict[str, int] = {}
    for element in root.iter():
        name = _local(element.tag)
        if name == "BOA_ADD_OFFSET":
            try:
                offsets[MTD_BAND_IDS[int(element.get("band_id", ""))]] = int(element.text)
            except (ValueError, TypeError, IndexError):
                raise InputError(f"metadata {path}: BOA_ADD_OFFSET band_id={element.get('band_id')!r} "
                                 f"value {element.text!r} is not a band index and integer") from None
        elif name in ("PROCESSING_BASELINE", "PRODUCT_START_TIME") and element.text:
            texts.setdefault(name, element.text)
    for tag in ("PROCESSING_BASELINE", "PRODUCT_START_TIME"):
        if tag not in texts:
            raise InputError(f"metadata {path}: no {tag} element")
    return texts["PROCESSING_BASELINE"].strip(), offsets, _iso_date(texts["PRODUCT_START_TIME"], path, "PRODUCT_START_TIME")


def read_stac_item(path: Path) -> tuple[str, bool, date]:
    """Processing baseline, whether the offset was already applied (Earth Search's
    ``earthsearch:boa_offset_applied``) and sensing date of a STAC item JSON."""
    try:
        properties = json.loads(Path(path).read_text())["properties"]
        baseline, when = properties["s2:processing_baseline"], properties["datetime"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"metadata {path}: not a Sentinel-2 STAC item with properties "
                         f"s2:processing_baseline and datetime ({first_line(exc)})") from None
    return str(baseline), bool(properties.get("earthsearch:boa_offset_applied", False)), _iso_date(when, path, "datetime")


def _stac_items(folder: Path) -> list[Path]:
    items = []
    for path in sorted(folder.glob("*.json")):
        try:
            if json.loads(path.read_text()).get("type") == "Feature":
                items.append(path)
        except (OSError, ValueError, AttributeError):
            continue
    return items


def product_metadata(folder: Path, settings: Sentinel2Settings) -> tuple[Path, str, dict[str, int], date]:
    """(metadata file, baseline, BOA_ADD_OFFSET per reflectance band, sensing date) of a product folder."""
    folder = Path(folder)
    safe = [folder] if folder.name.upper().endswith(".SAFE") else sorted(folder.glob("*.SAFE"))
    mtd = [p for p in [folder / "MTD_MSIL2A.xml", *(s / "MTD_MSIL2A.xml" for s in safe)] if p.is_file()]
    if mtd:
        path = mtd[0]
        baseline, listed, sensing = read_mtd(path)
        applied = False
    else:
        items = _stac_items(folder)
        if not items:
            raise InputError(f"product {folder}: no metadata (MTD_MSIL2A.xml or a STAC item *.json) to read "
                             "the processing baseline and sensing date from")
        path = items[0]
        baseline, applied, sensing = read_stac_item(path)
        listed = {}
    default = BASELINE_OFFSET if _baseline_tuple(baseline, path) >= OFFSET_BASELINE and not applied else 0
    if settings.boa_offset is not None:
        offsets = {band: int(settings.boa_offset) for band in REFLECTANCE_BANDS}
    else:
        offsets = {band: listed.get(band, default) for band in REFLECTANCE_BANDS}
    return path, baseline, offsets, sensing


def _check_resolution(folder: Path, band: str, path: Path) -> None:
    with open_raster(path) as src:
        x_size, y_size = abs(src.transform.a), abs(src.transform.e)
        crs = src.crs
    expected = BAND_RESOLUTION_M[band]
    if crs.is_geographic:
        raise InputError(f"product {folder}: band {band} file {path} is in geographic coordinates ({crs}), "
                         f"{x_size:g} x {y_size:g} degree pixels; expected {expected:g} m pixels in a projected CRS "
                         f"(reproject it, e.g. gdalwarp -t_srs <its UTM zone> -tr {expected:g} {expected:g})")
    units = "m" if crs.linear_units.lower() in ("metre", "meter", "m") else crs.linear_units
    if units != "m" or max(abs(x_size - expected), abs(y_size - expected)) > 1e-3 * expected:
        raise InputError(f"product {folder}: band {band} file {path} has {x_size:g} x {y_size:g} {units} pixels, "
                         f"expected {expected:g} m")


WITHOUT_SCL_HINT = "sentinel2.cloud_mask=none reads products without it"
"""What to do about a product without SCL, in a prep: the setting that reads such products."""


def open_product(folder: Path, settings: Sentinel2Settings = Sentinel2Settings(),
                 without_scl_hint: str = WITHOUT_SCL_HINT) -> Product:
    """Locate a product's bands and metadata and check them.

    Raises InputError naming the product for: a missing band (SCL only when ``cloud_mask`` is
    ``scl``; the error ends with ``without_scl_hint``, what the calling command offers), a band whose
    pixel size is not that of its name (10 m, SCL 20 m), reflectance bands off one grid, and missing or
    unreadable metadata.
    """
    folder = Path(folder)
    bands: dict[str, Path] = {}
    for band in REFLECTANCE_BANDS + ((SCL_BAND,) if settings.cloud_mask == "scl" else ()):
        try:
            bands[band] = find_scene(folder, [band]).bands[band]
        except InputError as exc:
            if band != SCL_BAND:
                raise
            raise InputError(f"product {folder}: no SCL band for the cloud mask ({exc}; {without_scl_hint})") from None
        _check_resolution(folder, band, bands[band])
    check_same_grid({band: bands[band] for band in REFLECTANCE_BANDS}, f"product {folder}")
    metadata, baseline, offsets, sensing = product_metadata(folder, settings)
    return Product(folder, bands, metadata, baseline, offsets, sensing)


def check_overlap(first: Product, second: Product) -> None:
    """InputError naming both products unless their footprints overlap (by bounds)."""
    grid, other = first.grid, second.grid
    left, bottom, right, top = transform_bounds(other.crs, grid.crs, *other.bounds, densify_pts=21)
    g_left, g_bottom, g_right, g_top = grid.bounds
    if min(right, g_right) <= max(left, g_left) or min(top, g_top) <= max(bottom, g_bottom):
        raise InputError(f"products {first.folder} and {second.folder}: footprints do not overlap")


class OnGrid:
    """A band file read onto ``grid`` (strip by strip): directly when it already lies on it; by repeating
    pixels when it is the grid coarsened by an integer factor (SCL at 20 m on the 10 m grid, nearest
    resampling only; the same values a nearest warp gives); else warped.

    Pixels outside the file read as its nodata (0).
    """

    def __init__(self, path: Path, grid: Grid, resampling: Resampling):
        self.path = Path(path)
        with reading(self.path, "band"):
            self._src = rasterio.open(self.path)
            self.factor = _coarsening(self._src, grid) if resampling == Resampling.nearest else None
            on_grid = Grid(self._src.crs, self._src.transform, self._src.width, self._src.height) == grid
            self.warped = self.factor is None and not on_grid
            self._reader = WarpedVRT(self._src, crs=grid.crs, transform=grid.transform, width=grid.width,
                                     height=grid.height, resampling=resampling, src_nodata=self._src.nodata or 0,
                                     nodata=0) if self.warped else self._src

    def read(self, window: Window) -> np.ndarray:
        """(rows, cols) band values of ``window`` of the grid in the file's data type, 0 = no data."""
        with reading(self.path, "band"):
            if not self.factor:
                return self._reader.read(1, window=window)
            f = self.factor
            row0, col0 = window.row_off // f, window.col_off // f
            coarse = self._src.read(1, window=Window(col0, row0, -(-(window.col_off + window.width) // f) - col0,
                                                     -(-(window.row_off + window.height) // f) - row0))
            fine = np.repeat(np.repeat(coarse, f, axis=0), f, axis=1)
            top, left = window.row_off - row0 * f, window.col_off - col0 * f
            return fine[top:top + window.height, left:left + window.width]

    def close(self) -> None:
        if self.warped:
            self._reader.close()
        self._src.close()


def _coarsening(src: rasterio.DatasetReader, grid: Grid) -> int | None:
    """The integer factor f >= 2 when ``src`` is ``grid`` coarsened by f (same CRS and origin, f x its pixel
    size, covering it exactly: ceil(H / f) x ceil(W / f) px), else None."""
    f = int(round(src.transform.a / grid.transform.a))
    if f < 2 or src.crs != grid.crs or not src.transform.almost_equals(grid.transform @ rasterio.Affine.scale(f)):
        return None
    return f if (src.width, src.height) == (-(-grid.width // f), -(-grid.height // f)) else None


def reflectance(dn: np.ndarray, offset: int, invalid: np.ndarray) -> np.ndarray:
    """Reflectance (``dn`` + ``offset``) / 10000 clipped to [0, 1]: float32 of ``dn``'s shape, NaN where
    ``invalid`` (bool of that shape)."""
    value = dn.astype(np.float32)
    value += np.float32(offset)
    value /= np.float32(QUANTIFICATION)
    np.clip(value, 0, 1, out=value)
    value[invalid] = np.nan
    return value


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator`` / ``denominator`` computed in place of ``numerator``, NaN where undefined (0/0, x/0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(numerator, denominator, out=numerator)
    numerator[np.isinf(numerator)] = np.nan
    return numerator


def band_combination(name: str, bands: Mapping[str, np.ndarray]) -> np.ndarray:
    """Combination ``name`` (of COMBINATIONS) of reflectance bands (name -> (...) float32 in [0, 1], NaN invalid):
    (C, ...) float32, NaN where an input is NaN or the ratio is undefined.

    nirrg = (B08, B04, B03); ndvi = (B08 - B04) / (B08 + B04); evi = 2.5 (B08 - B04) / (B08 + 6 B04 - 7.5 B02 + 1).
    """
    nir, red = bands["B08"], bands["B04"]
    if name == "nirrg":
        return np.stack([nir, red, bands["B03"]])
    if name == "ndvi":
        return _ratio(nir - red, nir + red)[None]
    if name == "evi":  # in place, in the order of the formula: the same float32 values, fewer temporaries
        numerator = nir - red
        numerator *= 2.5
        denominator = red * 6
        denominator += nir
        denominator -= bands["B02"] * 7.5
        denominator += 1
        return _ratio(numerator, denominator)[None]
    raise InputError(f"bands: unknown band combination {name!r} (expected one of {', '.join(COMBINATIONS)})")


def _dn_strips(product: Product, grid: Grid, settings: Sentinel2Settings, strip_rows: int,
               ) -> Iterator[tuple[Window, dict[str, np.ndarray], np.ndarray]]:
    """Read ``product``'s reflectance bands onto ``grid`` strip by strip: (full-width window, band -> (rows, W)
    DN, invalid (rows, W) bool: DN 0 in any band or, with cloud_mask=scl, an SCL class in ``cloud_classes``)."""
    cloudy = np.isin(np.arange(256), settings.cloud_classes)
    readers = {band: OnGrid(path, grid, Resampling.nearest if band == SCL_BAND else Resampling.bilinear)
               for band, path in product.bands.items()}
    try:
        if readers[REFLECTANCE_BANDS[0]].warped:
            log.info("product %s: read onto the grid of the first date (%s)", product.folder, grid.crs.to_string())
        for window in strip_windows(grid.width, grid.height, strip_rows):
            dn = {band: readers[band].read(window) for band in REFLECTANCE_BANDS}
            invalid = np.logical_or.reduce([d == 0 for d in dn.values()])
            if SCL_BAND in readers:
                scl = readers[SCL_BAND].read(window)
                invalid |= cloudy[scl] if scl.dtype == np.uint8 else np.isin(scl, settings.cloud_classes)
            yield window, dn, invalid
    finally:
        for reader in readers.values():
            reader.close()


def _ratios(product: Product, dn: Mapping[str, np.ndarray], invalid: np.ndarray, combinations: Sequence[str],
            ) -> dict[str, np.ndarray]:
    """The ratio ``combinations`` (ndvi, evi) of one strip: combination -> (1, rows, W) float32. Pixels where a
    ratio is undefined are added to ``invalid`` (in place) and are NaN in every ratio."""
    names = [name for name in combinations if COMBINATIONS[name][0] in RATIO_CHANNELS]
    if not names:
        return {}
    needed = ("B02", "B04", "B08") if "evi" in names else ("B04", "B08")
    bands = {band: reflectance(dn[band], product.offsets[band], invalid) for band in needed}
    ratios = {name: band_combination(name, bands) for name in names}
    undefined = np.logical_or.reduce([np.isnan(values[0]) for values in ratios.values()]) & ~invalid
    if undefined.any():
        invalid |= undefined
        for values in ratios.values():
            values[:, undefined] = np.nan
    return ratios


def combination_strips(
    product: Product, grid: Grid, combinations: Sequence[str], settings: Sentinel2Settings, strip_rows: int = 256,
) -> Iterator[tuple[Window, dict[str, np.ndarray], np.ndarray]]:
    """Read ``product`` onto ``grid`` and compute ``combinations``, one strip of ``strip_rows`` rows at a time.

    Yields (full-width window of the strip, combination -> (C, rows, W) float32 with NaN where invalid,
    valid (rows, W) bool). A pixel is valid where every reflectance band has data (DN != 0),
    (cloud_mask=scl) its SCL class is not in ``cloud_classes``, and every requested combination is
    defined (NDVI of a pixel dark in both B04 and B08 is 0/0); invalid pixels are NaN in every channel.
    """
    for window, dn, invalid in _dn_strips(product, grid, settings, strip_rows):
        combos = _ratios(product, dn, invalid, combinations)
        bands = {band: reflectance(dn[band], product.offsets[band], invalid) for band in REFLECTANCE_BANDS}
        yield window, {name: combos[name] if name in combos else band_combination(name, bands)
                       for name in combinations}, ~invalid


@dataclass(frozen=True)
class ChannelLevels:
    """One channel's values as uint16 levels: level L (0..count-1) stands for ``low + (L + centre) / per_unit``
    (float32); level ``count`` marks an invalid pixel.

    Reflectance (REFLECTANCE_LEVELS): L = DN + BOA_ADD_OFFSET clipped to 0..10000, i.e. reflectance x 10000,
    exact. NDVI and EVI (RATIO_LEVELS): HISTOGRAM_BINS equal bins over [-1, 1], each standing for its centre;
    values outside count in the end bins.
    """

    low: float
    per_unit: float
    count: int
    centre: float

    @property
    def precision(self) -> float:
        """Largest distance between a value in range and the value its level stands for."""
        return self.centre / self.per_unit

    def values(self) -> np.ndarray:
        """(count,) float32: the value each level stands for."""
        levels = np.arange(self.count, dtype=np.float32) + np.float32(self.centre)
        return np.float32(self.low) + levels / np.float32(self.per_unit)

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Levels (uint16, same shape) of float32 ``values``, NaN -> ``count``."""
        index = values * np.float32(self.per_unit)
        index -= np.float32(self.low * self.per_unit)
        # Clamp into [0, count - 0.5] (NaN stays NaN), then NaN -> count.
        np.clip(index, 0, self.count - 0.5, out=index)
        np.fmin(index, self.count, out=index)
        return index.astype(np.uint16)

    def percentiles(self, counts: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
        """Values at ``percentiles`` (0..100) of the pixels counted per level in ``counts`` ((count + 1,), the
        invalid count last, unused), interpolated like ``np.percentile``: float64; ValueError when none is counted."""
        return self.low + (histogram_percentiles(counts[:self.count], percentiles) + self.centre) / self.per_unit


REFLECTANCE_LEVELS = ChannelLevels(0.0, QUANTIFICATION, int(QUANTIFICATION) + 1, 0.0)
RATIO_LEVELS = ChannelLevels(-1.0, HISTOGRAM_BINS / 2, HISTOGRAM_BINS, 0.5)


def channel_levels(channel: str) -> ChannelLevels:
    """The levels of a channel of COMBINATIONS."""
    return RATIO_LEVELS if channel in RATIO_CHANNELS else REFLECTANCE_LEVELS


def combination_channels(combinations: Sequence[str]) -> list[str]:
    """The channels of ``combinations``, in combination and channel order."""
    return [channel for name in combinations for channel in COMBINATIONS[name]]


def level_strips(
    product: Product, grid: Grid, combinations: Sequence[str], settings: Sentinel2Settings, strip_rows: int = 256,
) -> Iterator[tuple[Window, np.ndarray, np.ndarray]]:
    """``combination_strips`` as levels (``ChannelLevels``): yields (window, (C, rows, W) uint16 levels of
    ``combination_channels(combinations)``, valid (rows, W) bool), the same pixels valid. Reflectance levels
    come from the DNs by integer arithmetic; only the ratios are computed in float32."""
    channels = combination_channels(combinations)
    for window, dn, invalid in _dn_strips(product, grid, settings, strip_rows):
        ratios = _ratios(product, dn, invalid, combinations)
        levels = np.empty((len(channels), window.height, window.width), np.uint16)
        for level, channel in zip(levels, channels):
            if channel in RATIO_CHANNELS:
                level[...] = RATIO_LEVELS.quantize(ratios[channel.lower()][0])
                continue
            shifted = dn[channel].astype(np.int32)
            shifted += product.offsets[channel]
            np.clip(shifted, 0, REFLECTANCE_LEVELS.count - 1, out=shifted)
            level[...] = shifted
            level[invalid] = REFLECTANCE_LEVELS.count
        yield window, levels, ~invalid
