"""Raster helpers for tests: writing GeoTIFFs, the real samples beside the repository, tiny chip settings."""

from __future__ import annotations

from pathlib import Path

from helpers import REPO

SAMPLES = REPO.parent / "shared" / "samples"
"""Real sample rasters and polygons beside the repository; tests using them skip where it is absent."""


def write_geotiff(path, data, transform, crs: str = "EPSG:32610", nodata: float | None = 0, driver: str = "GTiff",
                  block: int | None = None):
    """Write ``data`` ((H, W) or (C, H, W), any dtype) as a raster; tiled in ``block`` px blocks if given."""
    import rasterio

    data = data if data.ndim == 3 else data[None]
    tiling = {"tiled": True, "blockxsize": block, "blockysize": block} if block else {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata, **tiling) as dst:
        dst.write(data)
    return path


TINY_CHIP = {"size": 64, "overlap": 0.25, "min_class_fraction": 0.1, "max_nodata_fraction": 0.1}
"""Chip settings for the tiny synthetic scenes (chips of 64 px instead of 256)."""
