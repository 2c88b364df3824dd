"""Synthetic Sentinel-2 L2A scenes with burn polygons, for tests, demos and benchmarks.

    python -m data_prep.synthetic out_dir=data/synthetic n_scenes=6 size=1024 seed=0

writes ``out_dir/scenes/<scene>/{B02,B03,B04,B08,TCI}.tif`` and one burn-polygon file for all
scenes, ``out_dir/burn_polygons.gpkg`` (EPSG:4326, like a national burn-perimeter file).

Each scene lies somewhere else in UTM zone 10 or 11 (10 m pixels) and differs in size and burned
share. Bands are uint16 reflectance x10000 (nodata 0) over textured vegetation; burned areas
(irregular blobs, varying severity) are darker and brownish; lakes, cloud shadows and bare soil
are dark or brown too but not burned, so thresholding alone does not find the burns. Some
scenes miss a corner beyond the orbit's swath edge (nodata). TCI is uint8 RGB (nodata 0).
Everything is deterministic from the seed and written strip by strip, so a full 10980 x 10980
tile (``generate_full_tile``) never needs more than a few strips in memory.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from omegaconf import DictConfig
from rasterio import Affine
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry import Polygon, box

from apps.foundation.errors import InputError
from apps.foundation.files import atomic_path
from data_prep.geotiff import progress, strip_windows

log = logging.getLogger(__name__)

PIXEL_SIZE_M = 10.0
POLYGON_CRS = "EPSG:4326"
POLYGON_FORMATS = {"gpkg": ("GPKG", ".gpkg"), "shp": ("ESRI Shapefile", ".shp"), "geojson": ("GeoJSON", ".geojson")}
BANDS = ("B02", "B03", "B04", "B08")
STRIP_ROWS = 512
FULL_TILE_SIZE = 10980

# Mean surface reflectance x10000 in B02, B03, B04, B08 (blue, green, red, near infrared).
FOREST = np.array([230, 450, 280, 2700], np.float32)
MEADOW = np.array([420, 720, 560, 3300], np.float32)
BURNED = np.array([320, 350, 470, 1100], np.float32)
WATER = np.array([300, 250, 150, 80], np.float32)
BARE_SOIL = np.array([820, 1050, 1300, 2100], np.float32)
SHADOW_GAIN = 0.45
TCI_FULL_SCALE = 2000.0
"""Reflectance x10000 that TCI maps to 255 (values above saturate)."""


@dataclass(frozen=True)
class SceneSpec:
    """Where and how large one synthetic scene is: top-left corner (m) in UTM ``epsg``, size in px."""

    name: str
    epsg: int
    west: float
    north: float
    width: int
    height: int
    burned_share: float
    swath_edge: bool
    seed: int

    @property
    def transform(self) -> Affine:
        return Affine(PIXEL_SIZE_M, 0, self.west, 0, -PIXEL_SIZE_M, self.north)


@dataclass(frozen=True)
class SceneFeatures:
    """Polygons drawn into a scene, in its UTM CRS: burned (labelled) and distractors (not labelled)."""

    burned: list[Polygon]
    water: list[Polygon]
    shadow: list[Polygon]
    bare_soil: list[Polygon]


@dataclass(frozen=True)
class SyntheticData:
    """What ``generate_scenes`` wrote: the scenes folder (one subfolder per scene) and the polygon file."""

    scenes_dir: Path
    polygons: Path
    scenes: list[str]


def plan_scenes(n_scenes: int, size: int, seed: int, vary_size: bool = True) -> list[SceneSpec]:
    """Specs of ``n_scenes`` scenes of about ``size`` px (55-100 % per side when ``vary_size``)."""
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(n_scenes):
        scale = rng.uniform(0.55, 1.0, 2) if vary_size else np.ones(2)
        width, height = (max(8, int(round(size * s))) for s in scale)
        zone = 10 + i % 2
        specs.append(SceneSpec(
            name=f"scene_{i:02d}", epsg=32600 + zone,
            west=float(300_000 + 10 * round(rng.uniform(0, 300_000) / 10)),
            north=float(5_500_000 + 150_000 * (i // 2) + 10 * round(rng.uniform(0, 100_000) / 10)),
            width=width, height=height, burned_share=float(rng.uniform(0.15, 0.35)),
            swath_edge=bool(rng.random() < 0.5), seed=int(rng.integers(2**31)),
        ))
    return specs


def blob(rng: np.random.Generator, x: float, y: float, radius: float, vertices: int = 72) -> Polygon:
    """An irregular blob around (x, y): a circle of ``radius`` with random low harmonics on its edge."""
    theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    wobble = sum(rng.uniform(0, 0.3 / k ** 0.7) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 7))
    r = radius * np.maximum(0.25, 1 + wobble)
    return Polygon(np.column_stack([x + r * np.cos(theta), y + r * np.sin(theta)]))


def scene_features(spec: SceneSpec) -> SceneFeatures:
    """Random burned blobs covering about ``spec.burned_share`` of the scene, plus distractors
    (lakes and bare soil apart from the burns, cloud shadows anywhere), all sized relative to a
    scene of at most 1024 px so that a full tile holds many burns rather than a few huge ones."""
    rng = np.random.default_rng([spec.seed, 1])
    px = PIXEL_SIZE_M
    extent = box(spec.west, spec.north - spec.height * px, spec.west + spec.width * px, spec.north)
    feature_px = min(spec.width, spec.height, 1024)
    per_1024 = max(1, spec.width * spec.height // 1024**2)

    def random_blob(min_r: float, max_r: float) -> Polygon:
        x = spec.west + rng.uniform(0.05, 0.95) * spec.width * px
        y = spec.north - rng.uniform(0.05, 0.95) * spec.height * px
        return blob(rng, x, y, rng.uniform(min_r, max_r) * feature_px * px)

    burned: list[Polygon] = []
    burned_union = Polygon()
    while burned_union.intersection(extent).area < spec.burned_share * extent.area:
        burned.append(random_blob(0.07, 0.18))
        burned_union = burned_union.union(burned[-1])

    def unburned_blobs(count: int, min_r: float, max_r: float) -> list[Polygon]:
        blobs = (random_blob(min_r, max_r) for _ in range(count))
        return [b for b in blobs if not b.intersects(burned_union)]

    water = unburned_blobs(rng.integers(2, 5) * per_1024, 0.03, 0.08)
    shadow = [random_blob(0.04, 0.09) for _ in range(rng.integers(1, 4) * per_1024)]
    bare_soil = unburned_blobs(rng.integers(3, 7) * per_1024, 0.03, 0.07)
    return SceneFeatures(burned, water, shadow, bare_soil)


class ValueNoise:
    """Smooth random field on a pixel grid: random values every ``cell`` px, smoothly interpolated.

    Evaluated strip by strip, (rows, width) float32 with zero mean and unit-ish spread, so a full
    tile never needs the field in memory.
    """

    def __init__(self, rng: np.random.Generator, height: int, width: int, cell: float):
        self.cell = cell
        self.grid = rng.standard_normal((int(height / cell) + 2, int(width / cell) + 2)).astype(np.float32)
        self.col_index, self.col_weight = self._coordinates(np.arange(width))

    def _coordinates(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        position = (pixels + 0.5) / self.cell
        index = np.floor(position).astype(np.int64)
        frac = (position - index).astype(np.float32)
        return index, frac * frac * (3 - 2 * frac)

    def rows(self, row_off: int, n_rows: int) -> np.ndarray:
        row_index, row_weight = self._coordinates(np.arange(row_off, row_off + n_rows))
        top, bottom = self.grid[row_index], self.grid[row_index + 1]
        by_row = top + (bottom - top) * row_weight[:, None]
        left, right = by_row[:, self.col_index], by_row[:, self.col_index + 1]
        return left + (right - left) * self.col_weight


def _swath_nodata(spec: SceneSpec, window: Window) -> np.ndarray | None:
    """(rows, width) bool, True beyond the scene's swath edge (a straight cut across one corner)."""
    if not spec.swath_edge:
        return None
    rng = np.random.default_rng([spec.seed, 2])
    corner = rng.integers(4)
    depth = rng.uniform(0.25, 0.45) * (spec.width + spec.height)
    rows = np.arange(window.row_off, window.row_off + window.height, dtype=np.float32)[:, None]
    cols = np.arange(spec.width, dtype=np.float32)[None, :]
    if corner in (1, 2):
        cols = spec.width - 1 - cols
    if corner in (2, 3):
        rows = spec.height - 1 - rows
    return (rows + cols * rng.uniform(0.6, 1.6)) < depth * 0.5


def _burn(polygons: list[Polygon], window: Window, spec: SceneSpec) -> np.ndarray:
    """(rows, width) bool: pixels of the window whose centre lies in one of ``polygons``."""
    transform = spec.transform @ Affine.translation(window.col_off, window.row_off)
    strip = box(*rasterio.transform.array_bounds(window.height, window.width, transform))
    shapes = [(p, 1) for p in polygons if p.intersects(strip)]
    if not shapes:
        return np.zeros((window.height, window.width), dtype=bool)
    return rasterize(shapes, out_shape=(window.height, window.width), transform=transform, dtype=np.uint8).astype(bool)


def scene_reflectance(spec: SceneSpec, features: SceneFeatures, window: Window,
                      fields: dict[str, ValueNoise]) -> np.ndarray:
    """Reflectance x10000 of BANDS in a full-width window: (4, rows, width) uint16, 0 = nodata."""
    rows = (window.row_off, window.height)
    rng = np.random.default_rng([spec.seed, 3, window.row_off])
    meadow = np.clip(0.5 + 0.6 * fields["cover"].rows(*rows), 0, 1)
    texture = 1 + 0.10 * fields["texture"].rows(*rows) + 0.05 * fields["fine"].rows(*rows)
    severity = np.clip(0.8 + 0.2 * fields["severity"].rows(*rows), 0.45, 1.0)
    burned = _burn(features.burned, window, spec)
    water = _burn(features.water, window, spec)
    bare = _burn(features.bare_soil, window, spec)
    shadow = _burn(features.shadow, window, spec)

    out = np.empty((len(BANDS), window.height, window.width), dtype=np.uint16)
    for band in range(len(BANDS)):
        value = FOREST[band] + (MEADOW[band] - FOREST[band]) * meadow
        value = np.where(burned, value + (BURNED[band] - value) * severity, value)
        value = np.where(bare, BARE_SOIL[band], value)
        value = np.where(water, WATER[band], value * texture)
        value *= np.where(shadow, SHADOW_GAIN, 1.0).astype(np.float32)
        value += rng.normal(0, 0.03 * FOREST[band] + 15, value.shape).astype(np.float32)
        out[band] = np.clip(value, 1, 10000)
    nodata = _swath_nodata(spec, window)
    if nodata is not None:
        out[:, nodata] = 0
    return out


def true_colour(reflectance: np.ndarray) -> np.ndarray:
    """TCI from (B02, B03, B04, B08) reflectance (4, rows, width): (3, rows, width) uint8 R, G, B, 0 = nodata."""
    rgb = reflectance[[2, 1, 0]].astype(np.float32) * (255.0 / TCI_FULL_SCALE)
    tci = np.clip(np.rint(rgb), 1, 255).astype(np.uint8)
    tci[:, reflectance[0] == 0] = 0
    return tci


def write_scene(scene_dir: Path, spec: SceneSpec, features: SceneFeatures, bands: Sequence[str] = BANDS,
                tci: bool = True, compress: str | None = "deflate", show_progress: bool = False) -> None:
    """Write ``scene_dir/<band>.tif`` for ``bands`` (uint16, nodata 0) and ``TCI.tif`` (uint8 x3, nodata 0),
    tiled GeoTIFFs in ``spec``'s UTM CRS, strip by strip."""
    unknown = [b for b in bands if b not in BANDS]
    if unknown:
        raise InputError(f"synthetic bands: unknown {', '.join(unknown)} (available: {', '.join(BANDS)})")
    rng = np.random.default_rng([spec.seed, 4])
    fields = {
        "cover": ValueNoise(rng, spec.height, spec.width, 96),
        "texture": ValueNoise(rng, spec.height, spec.width, 12),
        "fine": ValueNoise(rng, spec.height, spec.width, 3),
        "severity": ValueNoise(rng, spec.height, spec.width, 24),
    }
    profile = {
        "driver": "GTiff", "width": spec.width, "height": spec.height, "crs": f"EPSG:{spec.epsg}",
        "transform": spec.transform, "tiled": True, "blockxsize": 256, "blockysize": 256, "nodata": 0,
    }
    if compress:
        profile["compress"] = compress
    outputs = {band: (Path(scene_dir) / f"{band}.tif", {**profile, "count": 1, "dtype": "uint16"}) for band in bands}
    if tci:
        outputs["TCI"] = (Path(scene_dir) / "TCI.tif", {**profile, "count": 3, "dtype": "uint8"})
    Path(scene_dir).mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        datasets = {
            name: stack.enter_context(rasterio.open(stack.enter_context(atomic_path(path)), "w", **band_profile))
            for name, (path, band_profile) in outputs.items()
        }
        windows = list(strip_windows(spec.width, spec.height, STRIP_ROWS))
        for window in progress(windows, f"synthetic {spec.name}", show_progress):
            reflectance = scene_reflectance(spec, features, window, fields)
            for band in bands:
                datasets[band].write(reflectance[BANDS.index(band)], 1, window=window)
            if tci:
                datasets["TCI"].write(true_colour(reflectance), window=window)


def write_polygons(frame: gpd.GeoDataFrame, path: Path, driver: str) -> None:
    """Write ``frame`` to ``path`` with ``driver``; all files of the format (a shapefile has several)
    appear together, moved in from a temporary folder."""
    path = Path(path)
    tmp_dir = path.parent / f".{path.stem}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:
        frame.to_file(tmp_dir / path.name, driver=driver, engine="pyogrio")
        for written in sorted(tmp_dir.iterdir()):
            os.replace(written, path.parent / written.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def generate_scenes(
    out_dir: Path,
    n_scenes: int = 6,
    size: int = 1024,
    seed: int = 0,
    polygon_format: str = "gpkg",
    bands: Sequence[str] = BANDS,
    tci: bool = True,
    vary_size: bool = True,
    compress: str | None = "deflate",
    show_progress: bool = False,
) -> SyntheticData:
    """Write ``n_scenes`` synthetic scenes of about ``size`` px under ``out_dir/scenes/`` and their burn
    polygons, reprojected to EPSG:4326, into ``out_dir/burn_polygons.<gpkg|shp|geojson>``."""
    if polygon_format not in POLYGON_FORMATS:
        raise InputError(f"polygon_format: unknown {polygon_format!r} (expected one of {', '.join(POLYGON_FORMATS)})")
    if n_scenes < 1 or size < 8:
        raise InputError(f"need n_scenes >= 1 and size >= 8 px, got n_scenes={n_scenes}, size={size}")
    out_dir = Path(out_dir)
    frames = []
    specs = plan_scenes(n_scenes, size, seed, vary_size)
    for spec in specs:
        features = scene_features(spec)
        write_scene(out_dir / "scenes" / spec.name, spec, features, bands, tci, compress, show_progress)
        fires = gpd.GeoDataFrame(
            {"fire_id": [f"{spec.name}_{i:03d}" for i in range(len(features.burned))],
             "year": 2021, "area_ha": [p.area / 1e4 for p in features.burned]},
            geometry=features.burned, crs=f"EPSG:{spec.epsg}",
        )
        frames.append(fires.to_crs(POLYGON_CRS))
        log.info("synthetic %s: %dx%d px, EPSG:%d, %d burns", spec.name, spec.width, spec.height, spec.epsg,
                 len(features.burned))
    driver, suffix = POLYGON_FORMATS[polygon_format]
    polygons = out_dir / f"burn_polygons{suffix}"
    write_polygons(gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=POLYGON_CRS), polygons, driver)
    return SyntheticData(out_dir / "scenes", polygons, [spec.name for spec in specs])


def generate_full_tile(out_dir: Path, seed: int = 0, size: int = FULL_TILE_SIZE,
                       compress: str | None = "deflate", show_progress: bool = True) -> SyntheticData:
    """One full-size Sentinel-2 tile (``size`` x ``size`` px, default 10980): B02, B03, B04 (uint16) and
    TCI, plus its burn polygons, written strip by strip."""
    return generate_scenes(out_dir, n_scenes=1, size=size, seed=seed, bands=("B02", "B03", "B04"),
                           vary_size=False, compress=compress, show_progress=show_progress)


def _hydra_task(cfg: DictConfig) -> None:
    data = generate_scenes(
        Path(cfg.out_dir), n_scenes=int(cfg.n_scenes), size=int(cfg.size), seed=int(cfg.seed),
        polygon_format=str(cfg.polygon_format), bands=tuple(cfg.bands), tci=bool(cfg.tci),
        vary_size=bool(cfg.vary_size), compress=cfg.compress, show_progress=bool(cfg.progress),
    )
    log.info("wrote %d scenes to %s and polygons %s", len(data.scenes), data.scenes_dir, data.polygons)


def main() -> None:
    """Command-line entry: bad input or config prints one line ``error: ...`` and exits 2."""
    from apps.foundation.cli import run_hydra_app

    run_hydra_app(_hydra_task, "prep_synthetic")


if __name__ == "__main__":
    main()
