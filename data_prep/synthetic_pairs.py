"""Synthetic Sentinel-2 L2A product pairs with PRODES-like polygons, for tests and demos of deforestation prep.

    python -m data_prep.synthetic_pairs out_dir=data/synthetic_pairs n_areas=4 size=768 seed=0

writes, in the layout ``data_prep.deforestation`` reads::

    out_dir/areas/<area>/before/{B02,B03,B04,B08}.tif, SCL.tif, MTD_MSIL2A.xml    2020, baseline 02.14
    out_dir/areas/<area>/after/...                                                2021, baseline 05.00
    out_dir/prodes.gpkg                                                           EPSG:4674

Each area lies in UTM zone 21S or 22S (the Amazon), 10 m pixels, ``size`` px a side. Bands are uint16
DN (reflectance x10000, plus 1000 for baseline 05.00; nodata 0); SCL is uint8 at 20 m. Textured
forest everywhere; clearings that appear between the dates (NIR drops, red rises: PRODES polygons
of TARGET_YEAR); older clearings, pasture in both dates (earlier years, one of them the year before
the target, whose image dates open the date window); a river (hidrografia);
clouds and their shadows on one date, marked in its SCL (classes 9 and 3). Everything is written strip
by strip, so ``size=10980`` (a full Sentinel-2 tile, SCL 5490 px) needs only a few strips of memory.
"""

from __future__ import annotations

import logging
import uuid
import xml.etree.ElementTree as ET
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Iterator

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from omegaconf import DictConfig
from rasterio import Affine
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.affinity import rotate, translate
from shapely.geometry import LineString, Polygon, box
from shapely.ops import unary_union

from apps.foundation.errors import InputError
from apps.foundation.files import atomic_path, atomic_write_text
from data_prep.geotiff import strip_windows
from data_prep.sentinel2 import BASELINE_OFFSET, MTD_BAND_IDS, REFLECTANCE_BANDS
from data_prep.synthetic import POLYGON_FORMATS, ValueNoise, blob, write_polygons

log = logging.getLogger(__name__)

PIXEL_SIZE_M = 10.0
STRIP_ROWS = 1024
"""Rows generated per step (even, so that SCL strips at 20 m align)."""
BLOCK_SIZE = 512
POLYGON_CRS = "EPSG:4674"
TARGET_YEAR = 2021
DATES = {"before": (date(2020, 7, 20), "02.14", 0), "after": (date(2021, 7, 28), "05.00", BASELINE_OFFSET)}
"""Product folder -> (sensing date, processing baseline, BOA_ADD_OFFSET)."""

# Surface reflectance x10000 in B02, B03, B04, B08 (blue, green, red, near infrared).
FOREST = np.array([220, 430, 250, 3100], np.float32)
CLEARED = np.array([700, 1000, 1350, 2200], np.float32)
PASTURE = np.array([420, 780, 650, 2700], np.float32)
WATER = np.array([420, 560, 480, 260], np.float32)
CLOUD = np.array([5200, 5300, 5400, 5800], np.float32)
SHADOW_GAIN = 0.4
SCL_VEGETATION, SCL_NOT_VEGETATED, SCL_WATER, SCL_SHADOW, SCL_CLOUD = 4, 5, 6, 3, 9


@dataclass(frozen=True)
class AreaSpec:
    """One area: top-left corner (m) in UTM ``epsg``, ``size`` x ``size`` px, the date with clouds."""

    name: str
    epsg: int
    west: float
    north: float
    size: int
    cloudy_date: str
    seed: int

    @property
    def transform(self) -> Affine:
        return Affine(PIXEL_SIZE_M, 0, self.west, 0, -PIXEL_SIZE_M, self.north)


@dataclass(frozen=True)
class AreaFeatures:
    """Polygons of one area in its UTM CRS: new clearings (TARGET_YEAR), older clearings with their year,
    the river, clouds and their shadows."""

    new: list[Polygon]
    old: list[tuple[Polygon, int]]
    river: Polygon
    clouds: list[Polygon]
    shadows: list[Polygon]


def plan_areas(n_areas: int, size: int, seed: int) -> list[AreaSpec]:
    """Specs of ``n_areas`` areas of ``size`` px, alternately in UTM 21S and 22S."""
    rng = np.random.default_rng(seed)
    return [
        AreaSpec(name=f"area_{i:02d}", epsg=32721 + i % 2,
                 west=float(10 * round(rng.uniform(300_000, 650_000) / 10)),
                 north=float(10 * round(rng.uniform(9_000_000, 9_700_000) / 10)),
                 size=size, cloudy_date=("before", "after")[int(rng.integers(2))], seed=int(rng.integers(2**31)))
        for i in range(n_areas)
    ]


def area_features(spec: AreaSpec) -> AreaFeatures:
    """New clearings (blobs and rotated rectangles) covering about 20 % of the area, apart from 2-3 older
    clearings; a meandering river across it; 1-2 clouds with shadows offset to the south-east."""
    rng = np.random.default_rng([spec.seed, 1])
    px, extent_m = PIXEL_SIZE_M, spec.size * PIXEL_SIZE_M
    extent = box(spec.west, spec.north - extent_m, spec.west + extent_m, spec.north)

    def point() -> tuple[float, float]:
        return spec.west + rng.uniform(0.1, 0.9) * extent_m, spec.north - rng.uniform(0.1, 0.9) * extent_m

    def clearing(min_r: float, max_r: float) -> Polygon:
        x, y = point()
        radius = rng.uniform(min_r, max_r) * extent_m
        if rng.random() < 0.5:
            return blob(rng, x, y, radius)
        rect = box(x - radius, y - radius * rng.uniform(0.4, 0.8), x + radius, y + radius * rng.uniform(0.4, 0.8))
        return rotate(rect, rng.uniform(0, 90), origin=(x, y))

    t = np.linspace(0, 1, 60)
    phase, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.12) * extent_m
    centre = spec.west + rng.uniform(0.2, 0.8) * extent_m
    river = LineString(np.column_stack([centre + amplitude * np.sin(2 * np.pi * 1.5 * t + phase),
                                        spec.north - t * extent_m])).buffer(rng.uniform(2, 4) * px)
    years = [TARGET_YEAR - 1, *rng.choice([2018, 2019, 2020], int(rng.integers(1, 3)))]
    old = [(clearing(0.06, 0.1), int(year)) for year in years]
    taken = unary_union([river.buffer(3 * px), *(p.buffer(3 * px) for p, _ in old)])
    new: list[Polygon] = []
    covered = 0.0
    while covered < 0.2 * extent.area:
        candidate = clearing(0.07, 0.13).difference(taken)
        if isinstance(candidate, Polygon) and candidate.area > 0.002 * extent.area:
            new.append(candidate)
            covered = unary_union(new).intersection(extent).area
    clouds = [blob(rng, *point(), rng.uniform(0.05, 0.1) * extent_m) for _ in range(int(rng.integers(1, 3)))]
    shadows = [translate(c, 0.06 * extent_m, -0.05 * extent_m) for c in clouds]
    return AreaFeatures(new, old, river, clouds, shadows)


def _burn(polygons: list[Polygon], spec: AreaSpec, window: Window) -> np.ndarray:
    """(rows, size) bool: pixels of the full-width ``window`` whose centre lies in one of ``polygons``."""
    if not polygons:
        return np.zeros((window.height, spec.size), bool)
    transform = spec.transform @ Affine.translation(0, window.row_off)
    return rasterize([(p, 1) for p in polygons], out_shape=(window.height, spec.size), transform=transform,
                     dtype=np.uint8).astype(bool)


def area_strips(spec: AreaSpec, features: AreaFeatures, strip_rows: int = STRIP_ROWS,
                ) -> Iterator[tuple[Window, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """Per full-width strip of ``strip_rows`` rows: (window, date -> (reflectance x10000 of REFLECTANCE_BANDS
    (4, rows, size) float32, SCL at 10 m (rows, size) uint8)). Deterministic from ``spec.seed``."""
    rng = np.random.default_rng([spec.seed, 2])
    texture_field = ValueNoise(rng, spec.size, spec.size, 10)
    canopy_field = ValueNoise(rng, spec.size, spec.size, 60)
    for window in strip_windows(spec.size, spec.size, strip_rows):
        texture, canopy = (f.rows(window.row_off, window.height) for f in (texture_field, canopy_field))
        new, water = _burn(features.new, spec, window), _burn([features.river], spec, window)
        old = _burn([p for p, _ in features.old], spec, window)
        clouds, shadows = _burn(features.clouds, spec, window), _burn(features.shadows, spec, window)
        scenes = {}
        for i, name in enumerate(DATES):
            cleared_now = old | new if name == "after" else old
            value = FOREST[:, None, None] * (1 + 0.12 * texture + 0.06 * canopy)
            value = np.where(old, PASTURE[:, None, None] * (1 + 0.1 * texture), value)
            if name == "after":
                value = np.where(new, CLEARED[:, None, None] * (1 + 0.15 * texture), value)
            value = np.where(water, WATER[:, None, None], value)
            scl = np.where(water, SCL_WATER, np.where(cleared_now, SCL_NOT_VEGETATED, SCL_VEGETATION)).astype(np.uint8)
            if name == spec.cloudy_date:
                value = np.where(shadows, value * SHADOW_GAIN, value)
                value = np.where(clouds, CLOUD[:, None, None] * (1 + 0.05 * texture), value)
                scl[shadows & ~clouds], scl[clouds] = SCL_SHADOW, SCL_CLOUD
            noise = np.random.default_rng([spec.seed, 3, i, window.row_off]).standard_normal(value.shape, np.float32)
            value += noise * (0.03 * FOREST[:, None, None] + 15)
            scenes[name] = (np.clip(value, 1, 10000), scl)
        yield window, scenes


def mtd_xml(sensing: date, baseline: str, offset: int) -> str:
    """An ``MTD_MSIL2A.xml`` holding what the prep reads: PRODUCT_START_TIME, PROCESSING_BASELINE and,
    from baseline 04.00 on, BOA_ADD_OFFSET of every band."""
    root = ET.Element("{https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd}Level-2A_User_Product")
    general = ET.SubElement(root, "{https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd}General_Info")
    info = ET.SubElement(general, "Product_Info")
    ET.SubElement(info, "PRODUCT_START_TIME").text = f"{sensing.isoformat()}T13:56:21.024Z"
    ET.SubElement(info, "PROCESSING_BASELINE").text = baseline
    characteristics = ET.SubElement(general, "Product_Image_Characteristics")
    ET.SubElement(ET.SubElement(characteristics, "QUANTIFICATION_VALUES_LIST"), "BOA_QUANTIFICATION_VALUE",
                  unit="none").text = "10000"
    if offset:
        offsets = ET.SubElement(characteristics, "BOA_ADD_OFFSET_VALUES_LIST")
        for band_id in range(len(MTD_BAND_IDS)):
            ET.SubElement(offsets, "BOA_ADD_OFFSET", band_id=str(band_id)).text = str(offset)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_area(area_dir: Path, spec: AreaSpec, features: AreaFeatures, compress: str | None = "deflate") -> None:
    """Write the ``before/`` and ``after/`` products of one area (band files, SCL at 20 m, MTD_MSIL2A.xml) strip by
    strip: tiled GeoTIFFs, ``compress``ed (None: not), each appearing complete or not at all."""
    profile = {"driver": "GTiff", "crs": f"EPSG:{spec.epsg}", "nodata": 0, "tiled": True, "blockxsize": BLOCK_SIZE,
               "blockysize": BLOCK_SIZE, "count": 1, **({"compress": compress} if compress else {})}
    scl_size = -(-spec.size // 2)
    with ExitStack() as stack:
        def output(path: Path, size: int, transform: Affine, dtype: str) -> rasterio.io.DatasetWriter:
            path.parent.mkdir(parents=True, exist_ok=True)
            return stack.enter_context(rasterio.open(stack.enter_context(atomic_path(path)), "w", **profile, width=size,
                                                     height=size, transform=transform, dtype=dtype))

        files = {(name, band): output(Path(area_dir) / name / f"{band}.tif", spec.size, spec.transform, "uint16")
                 for name in DATES for band in REFLECTANCE_BANDS}
        files.update({(name, "SCL"): output(Path(area_dir) / name / "SCL.tif", scl_size,
                                            spec.transform @ Affine.scale(2), "uint8") for name in DATES})
        for window, scenes in area_strips(spec, features):
            scl_window = Window(0, window.row_off // 2, scl_size, -(-window.height // 2))
            for name, (reflectance, scl) in scenes.items():
                offset = DATES[name][2]
                for i, band in enumerate(REFLECTANCE_BANDS):
                    files[name, band].write(np.rint(reflectance[i] - offset).astype(np.uint16), 1, window=window)
                files[name, "SCL"].write(scl[::2, ::2], 1, window=scl_window)
    for name, (sensing, baseline, offset) in DATES.items():
        atomic_write_text(Path(area_dir) / name / "MTD_MSIL2A.xml", mtd_xml(sensing, baseline, offset))


def prodes_frame(spec: AreaSpec, features: AreaFeatures) -> gpd.GeoDataFrame:
    """PRODES-like polygons of one area in POLYGON_CRS: new clearings (TARGET_YEAR), older ones, the river."""
    rng = np.random.default_rng([spec.seed, 3])

    def seen(year: int) -> str:
        return (date(year, 7, 10) + timedelta(days=int(rng.integers(0, 35)))).isoformat()

    rows = [(p, TARGET_YEAR, seen(TARGET_YEAR), f"d{TARGET_YEAR}", "desmatamento") for p in features.new]
    rows += [(p, year, seen(year), f"d{year}", "desmatamento") for p, year in features.old]
    rows.append((features.river, 2000, None, "hidrografia", "hidrografia"))
    geoms, years, dates, class_names, main_classes = zip(*rows)
    frame = gpd.GeoDataFrame({
        "state": "PA", "year": list(years), "image_date": list(dates), "class_name": list(class_names),
        "main_class": list(main_classes), "area_km": [g.area / 1e6 for g in geoms],
        "uuid": [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in geoms],
    }, geometry=list(geoms), crs=f"EPSG:{spec.epsg}")
    return frame.to_crs(POLYGON_CRS)


def generate_pairs(out_dir: Path, n_areas: int = 4, size: int = 768, seed: int = 0,
                   compress: str | None = "deflate") -> tuple[Path, Path]:
    """Write ``n_areas`` synthetic areas under ``out_dir/areas/`` and ``out_dir/prodes.gpkg``; returns (areas
    folder, polygon file). Written strip by strip, so a full-size pair (``size`` 10980) needs a few strips of memory."""
    if n_areas < 1 or size < 64:
        raise InputError(f"need n_areas >= 1 and size >= 64 px, got n_areas={n_areas}, size={size}")
    out_dir = Path(out_dir)
    frames = []
    for spec in plan_areas(n_areas, size, seed):
        features = area_features(spec)
        write_area(out_dir / "areas" / spec.name, spec, features, compress)
        frames.append(prodes_frame(spec, features))
        log.info("synthetic %s: %d px, EPSG:%d, %d new and %d older clearings, clouds on %s", spec.name, size,
                 spec.epsg, len(features.new), len(features.old), spec.cloudy_date)
    polygons = out_dir / "prodes.gpkg"
    write_polygons(gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=POLYGON_CRS), polygons,
                   POLYGON_FORMATS["gpkg"][0])
    return out_dir / "areas", polygons


def _hydra_task(cfg: DictConfig) -> None:
    areas, polygons = generate_pairs(Path(cfg.out_dir), n_areas=int(cfg.n_areas), size=int(cfg.size), seed=int(cfg.seed))
    log.info("wrote %d areas to %s and polygons %s (target_year=%d)", int(cfg.n_areas), areas, polygons, TARGET_YEAR)


def main() -> None:
    """Command-line entry: bad input or config prints one line ``error: ...`` and exits 2."""
    from apps.foundation.cli import run_hydra_app

    run_hydra_app(_hydra_task, "prep_synthetic_pairs")


if __name__ == "__main__":
    main()
