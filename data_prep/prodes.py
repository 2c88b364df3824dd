"""PRODES deforestation polygons as change labels on a product's grid.

PRODES (INPE, TerraBrasilis) publishes yearly deforestation polygons in EPSG:4674 with fields
including ``year``, ``image_date``, ``main_class`` and ``class_name``. On a grid, for a target year:
deforestation polygons of that year are change (1); deforestation of earlier years and the
classes that are no forest or not observable (no forest, hydrography, residual) are ignored (255);
everything else is no change (0).

The date window of an area spans the ``image_date`` values of its polygons of the target year and
the year before (the years whose images the two dates are), widened by a margin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Iterable

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio.features import rasterize
from rasterio.warp import transform_bounds

from apps.foundation.chips import IGNORE_INDEX
from apps.foundation.errors import InputError
from data_prep.geotiff import first_line
from data_prep.label import polygon_file_info
from data_prep.sentinel2 import Grid

log = logging.getLogger(__name__)

CLASSES = ("no_change", "change")
"""Class names by mask value."""
NO_CHANGE, CHANGE = 0, 1
REQUIRED_FIELDS = ("year", "image_date")
CLASS_FIELDS = ("main_class", "class_name")


@dataclass(frozen=True)
class ProdesSettings:
    """``deforestation_classes``: ``main_class`` values that are deforestation (case-insensitive);
    ``ignore_classes``: ``main_class``/``class_name`` values ignored whatever the year;
    ``ignore_buffer_px``: also ignore this many px on both sides of each change polygon's edge;
    ``date_margin_days``: margin of the date window around the polygons' image dates."""

    layer: str | None = None
    deforestation_classes: tuple[str, ...] = ("desmatamento",)
    ignore_classes: tuple[str, ...] = ("nao_floresta", "hidrografia", "residuo")
    ignore_buffer_px: int = 0
    all_touched: bool = False
    date_margin_days: int = 30

    def __post_init__(self):
        for name in ("deforestation_classes", "ignore_classes"):
            object.__setattr__(self, name, tuple(str(c).lower() for c in getattr(self, name)))
        if self.ignore_buffer_px < 0 or self.date_margin_days < 0:
            raise InputError(f"prodes: ignore_buffer_px and date_margin_days must be >= 0, "
                             f"got {self.ignore_buffer_px} and {self.date_margin_days}")


def date_window(image_dates: Iterable, margin_days: int = 30) -> tuple[date, date]:
    """[earliest - ``margin_days``, latest + ``margin_days``] of ``image_dates`` (dates, datetimes or ISO
    strings; missing values skipped). ValueError when there is no date."""
    dates = pd.to_datetime(pd.Series(list(image_dates), dtype=object), errors="coerce").dropna()
    if dates.empty:
        raise ValueError("no image date")
    margin = timedelta(days=margin_days)
    return dates.min().date() - margin, dates.max().date() + margin


def read_prodes(path: Path, grid: Grid, settings: ProdesSettings = ProdesSettings()) -> gpd.GeoDataFrame:
    """The polygons of ``path`` overlapping ``grid``, in its CRS, with columns ``year`` (float, NaN if
    missing), ``image_date``, ``main_class`` and ``class_name`` (lower case, "" if absent).

    Raises InputError naming the file when it is unreadable, has no CRS (``polygon_file_info``) or
    lacks the ``year`` or ``image_date`` field (listing the fields found).
    """
    path = Path(path)
    info = polygon_file_info(path, settings.layer)
    fields = list(info["fields"])
    missing = [f for f in REQUIRED_FIELDS if f not in fields]
    if missing:
        raise InputError(f"polygons {path}: no {' or '.join(missing)} field (fields found: {', '.join(fields) or 'none'})")
    columns = [f for f in (*REQUIRED_FIELDS, *CLASS_FIELDS) if f in fields]
    bbox = transform_bounds(grid.crs, info["crs"], *grid.bounds, densify_pts=21)
    try:
        frame = pyogrio.read_dataframe(path, layer=settings.layer, bbox=bbox, columns=columns)
    except (DataSourceError, DataLayerError) as exc:
        raise InputError(f"polygons {path}: unreadable ({first_line(exc)})") from None
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    frame = frame[frame.geom_type.isin(["Polygon", "MultiPolygon"])].copy()
    frame["year"] = pd.to_numeric(frame["year"], errors="coerce")
    for name in CLASS_FIELDS:
        frame[name] = frame[name].fillna("").astype(str).str.lower() if name in frame else ""
    invalid = ~frame.geometry.is_valid
    if invalid.any():
        frame.loc[invalid, "geometry"] = frame.geometry[invalid].make_valid()
    return frame.to_crs(grid.crs)


def window_dates(frame: gpd.GeoDataFrame, target_year: int, settings: ProdesSettings) -> list:
    """The ``image_date`` values of ``read_prodes``'s frame for deforestation polygons of ``target_year`` and
    the year before: the two PRODES mappings a before/after pair spans (other classes carry unrelated dates)."""
    chosen = frame["year"].isin([target_year - 1, target_year]) & _is_deforestation(frame, settings)
    return list(frame.loc[chosen, "image_date"])


def change_polygons(frame: gpd.GeoDataFrame, target_year: int, settings: ProdesSettings) -> gpd.GeoDataFrame:
    """The rows of ``read_prodes``'s frame that are deforestation of ``target_year``."""
    return frame[_is_deforestation(frame, settings) & (frame["year"] == target_year) & ~_is_ignored(frame, settings)]


def _is_deforestation(frame: gpd.GeoDataFrame, settings: ProdesSettings) -> pd.Series:
    return frame["main_class"].isin(settings.deforestation_classes)


def _is_ignored(frame: gpd.GeoDataFrame, settings: ProdesSettings) -> pd.Series:
    return frame["main_class"].isin(settings.ignore_classes) | frame["class_name"].isin(settings.ignore_classes)


def label_mask(frame: gpd.GeoDataFrame, grid: Grid, target_year: int, invalid: np.ndarray | None = None,
               settings: ProdesSettings = ProdesSettings()) -> np.ndarray:
    """The change mask on ``grid``: (H, W) uint8, 1 change, 0 no change, 255 ignore.

    Ignored: earlier years' deforestation, ``ignore_classes``, ``ignore_buffer_px`` around change
    polygon edges, and ``invalid`` pixels ((H, W) bool, e.g. clouds in either date). Ignore wins
    over change where they overlap.
    """
    change = change_polygons(frame, target_year, settings)
    earlier = frame[_is_deforestation(frame, settings) & (frame["year"] < target_year)]
    ignored = [*earlier.geometry, *frame[_is_ignored(frame, settings)].geometry]
    if settings.ignore_buffer_px and not change.empty:
        pixel = max(abs(grid.transform.a), abs(grid.transform.e))
        ignored += [geom.boundary.buffer(settings.ignore_buffer_px * pixel) for geom in change.geometry]
    shapes = [(geom, CHANGE) for geom in change.geometry] + [(geom, IGNORE_INDEX) for geom in ignored]
    if shapes:
        mask = rasterize(shapes, out_shape=(grid.height, grid.width), transform=grid.transform, fill=NO_CHANGE,
                         dtype=np.uint8, all_touched=settings.all_touched)
    else:
        mask = np.zeros((grid.height, grid.width), np.uint8)
    if invalid is not None:
        mask[invalid] = IGNORE_INDEX
    log.info("labels: %d change polygons of %d, %d ignored; %.1f%% change, %.1f%% ignore", len(change), target_year,
             len(ignored), 100 * np.mean(mask == CHANGE), 100 * np.mean(mask == IGNORE_INDEX))
    return mask

