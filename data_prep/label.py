"""Label stage: rasterize burn polygons onto a scene's grid.

Polygons come from any vector file GDAL reads (Shapefile, GeoPackage, GeoJSON, ...), in any
CRS: only those overlapping the raster are read, then reprojected to the raster's CRS and
burned once with ``rasterio.features.rasterize``. Pixels where the reference raster is nodata
are set to the ignore index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio.features import rasterize
from rasterio.warp import transform_bounds

from apps.foundation.errors import InputError
from apps.foundation.files import atomic_path
from apps.foundation.chips import IGNORE_INDEX
from data_prep.geotiff import (
    GeoTiffSettings, first_line, in_gdal_env, open_raster, output_profile, progress, strip_windows,
)
from data_prep.scenes import NoChips

log = logging.getLogger(__name__)

CLASSES = ("unburned", "burned")
"""Class names by mask value."""
UNBURNED, BURNED = 0, 1


@dataclass(frozen=True)
class LabelSettings:
    """``layer``: the layer to read from a multi-layer file (None: the first);
    ``all_touched``: burn every pixel a polygon touches instead of those whose centre it covers."""

    layer: str | None = None
    all_touched: bool = False


RASTER_LABEL_SUFFIXES = (".tif", ".tiff", ".jp2", ".img", ".vrt")
"""Suffixes of raster files, which a polygons setting refuses by name (GDAL's own error names a CSV driver)."""


def polygon_file_info(path: Path, layer: str | None = None) -> dict:
    """pyogrio's description of a polygon file (``crs``, ``features``, ``geometry_type``, ...), checked.

    Raises InputError naming the file when it is missing, unreadable, empty or has no CRS.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"polygons {path}: file not found")
    if path.suffix.lower() in RASTER_LABEL_SUFFIXES:
        raise InputError(f"polygons {path}: a raster; labels are read from polygon files (GeoPackage, Shapefile, "
                         "GeoJSON), not from class rasters")
    try:
        info = pyogrio.read_info(path, layer=layer, force_feature_count=True)
    except (DataSourceError, DataLayerError) as exc:
        raise InputError(f"polygons {path}: unreadable ({first_line(exc)})") from None
    if info["features"] == 0:
        raise InputError(f"polygons {path}: empty (no features)")
    if not info["crs"]:
        raise InputError(f"polygons {path}: no CRS (add a .prj / declare the CRS of the polygons)")
    return info


def read_polygons(path: Path, crs: rasterio.crs.CRS, bounds: tuple[float, float, float, float],
                  layer: str | None = None) -> gpd.GeoSeries:
    """The polygons of ``path`` that overlap ``bounds`` (minx, miny, maxx, maxy in ``crs``), in ``crs``.

    Raises InputError naming the file for the problems of ``polygon_file_info`` and when it holds no
    polygon; NoChips (a scene without burns) when none of its polygons overlaps ``bounds``.
    """
    path = Path(path)
    info = polygon_file_info(path, layer)
    file_bounds = transform_bounds(crs, info["crs"], *bounds, densify_pts=21)
    try:
        frame = pyogrio.read_dataframe(path, layer=layer, bbox=file_bounds, columns=[])
    except (DataSourceError, DataLayerError) as exc:
        raise InputError(f"polygons {path}: unreadable ({first_line(exc)})") from None
    geoms = frame.geometry
    geoms = geoms[geoms.notna() & ~geoms.is_empty]
    geoms = geoms[geoms.geom_type.isin(["Polygon", "MultiPolygon"])]
    if geoms.empty and not frame.empty:
        raise InputError(f"polygons {path}: holds no polygon geometry (found {info['geometry_type']})")
    if geoms.empty:
        raise NoChips(f"polygons {path}", f"no polygon overlaps the raster (all {info['features']} lie outside it)")
    invalid = ~geoms.is_valid
    if invalid.any():
        geoms.loc[invalid] = geoms[invalid].make_valid()
    return geoms.to_crs(crs)


@in_gdal_env
def label_raster(
    polygons_path: Path,
    reference_path: Path,
    out_path: Path,
    settings: LabelSettings = LabelSettings(),
    gtiff: GeoTiffSettings = GeoTiffSettings(),
    tags: Mapping[str, str] | None = None,
    show_progress: bool = True,
) -> float:
    """Write ``out_path``: a uint8 mask on the grid of ``reference_path``, (H, W), 0 unburned,
    1 burned, 255 where any band of the reference raster is nodata; tiled GeoTIFF, nodata 255.

    Returns the burned fraction of the valid pixels. Raises InputError (naming the file) for
    the problems listed in ``read_polygons``, NoChips when no polygon covers a pixel of the raster.
    """
    reference_path, polygons_path = Path(reference_path), Path(polygons_path)
    with open_raster(reference_path) as src:
        geoms = read_polygons(polygons_path, src.crs, tuple(src.bounds), settings.layer)
        mask = rasterize(
            ((geom, BURNED) for geom in geoms), out_shape=(src.height, src.width), transform=src.transform,
            fill=UNBURNED, dtype=np.uint8, all_touched=settings.all_touched,
        )
        if not mask.any():
            raise NoChips(f"polygons {polygons_path}",
                          f"no polygon covers a pixel centre of raster {reference_path} ({len(geoms)} lie near it; "
                          f"label.all_touched=true also burns partly covered pixels)")
        nodata = src.nodata if src.nodata is not None else 0
        for window in progress(list(strip_windows(src.width, src.height, gtiff.strip_rows)),
                               f"label nodata {reference_path.name}", show_progress):
            rows = slice(window.row_off, window.row_off + window.height)
            invalid = np.logical_or.reduce(src.read(window=window) == nodata, axis=0)
            mask[rows][invalid] = IGNORE_INDEX
        profile = output_profile(src, 1, "uint8", IGNORE_INDEX, gtiff)
    with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(mask, 1)
        dst.update_tags(**(tags or {}))
    valid = np.count_nonzero(mask != IGNORE_INDEX)
    burned = np.count_nonzero(mask == BURNED)
    log.info("label %s: %d polygons, %.1f%% of valid pixels burned", reference_path.name, len(geoms),
             100.0 * burned / max(valid, 1))
    return burned / max(valid, 1)
