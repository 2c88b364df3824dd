"""Synthetic scenes: real formats, deterministic, varied, burns distinct but not found by a threshold."""

from __future__ import annotations

import os
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

from apps.foundation.errors import InputError
from data_prep.synthetic import generate_full_tile, generate_scenes
from helpers import LIMIT_S


def read_scene(scene_dir):
    bands = {}
    for band in ("B02", "B03", "B04", "B08"):
        with rasterio.open(scene_dir / f"{band}.tif") as src:
            bands[band] = src.read(1)
            profile = src.profile
    return bands, profile


def burn_mask(polygons, profile) -> np.ndarray:
    geoms = gpd.read_file(polygons).to_crs(profile["crs"]).geometry
    return rasterize(((g, 1) for g in geoms), out_shape=(profile["height"], profile["width"]),
                     transform=profile["transform"], dtype=np.uint8).astype(bool)


def test_scene_files_are_real_tiled_geotiffs(synthetic_scenes):
    assert synthetic_scenes.scenes == [f"scene_{i:02d}" for i in range(5)]
    epsgs, sizes, origins = set(), set(), set()
    for name in synthetic_scenes.scenes:
        scene_dir = synthetic_scenes.scenes_dir / name
        for band in ("B02", "B03", "B04", "B08"):
            with rasterio.open(scene_dir / f"{band}.tif") as src:
                assert (src.driver, src.count, src.dtypes[0], src.nodata) == ("GTiff", 1, "uint16", 0)
                assert src.profile["tiled"] and src.res == (10.0, 10.0)
                epsgs.add(src.crs.to_epsg())
                sizes.add((src.width, src.height))
                origins.add((src.transform.c, src.transform.f))
        with rasterio.open(scene_dir / "TCI.tif") as src:
            assert (src.count, src.dtypes[0], src.nodata) == (3, "uint8", 0) and src.profile["tiled"]
    assert epsgs == {32610, 32611}
    assert len(sizes) == len(origins) == 5
    polygons = gpd.read_file(synthetic_scenes.polygons)
    assert polygons.crs.to_epsg() == 4326 and set(polygons.geom_type) == {"Polygon"}


def test_burns_are_darker_and_browner_than_vegetation_with_dark_distractors(synthetic_scenes):
    scene_dir = synthetic_scenes.scenes_dir / "scene_00"
    bands, profile = read_scene(scene_dir)
    burned = burn_mask(synthetic_scenes.polygons, profile)
    valid = bands["B02"] > 0
    unburned = valid & ~burned
    red, green, nir = (bands[b].astype(float) for b in ("B04", "B03", "B08"))
    assert red[burned & valid].mean() > green[burned & valid].mean()         # brownish
    assert green[unburned].mean() > red[unburned].mean()                     # green vegetation
    assert nir[burned & valid].mean() < 0.6 * nir[unburned].mean()          # darker in the near infrared
    # The darkest pixels in the visible are not all burned: lakes and shadows are darker still.
    brightness = (red + green + bands["B02"]) / 3
    darkest = valid & (brightness <= np.percentile(brightness[valid], 5))
    assert burned[darkest].mean() < 0.7


def test_brightness_threshold_alone_does_not_find_the_burns(synthetic_scenes):
    best_iou = 0.0
    for name in synthetic_scenes.scenes:
        bands, profile = read_scene(synthetic_scenes.scenes_dir / name)
        burned = burn_mask(synthetic_scenes.polygons, profile)
        valid = bands["B02"] > 0
        brightness = sum(bands[b].astype(float) for b in ("B02", "B03", "B04"))
        for q in range(5, 60, 5):
            guess = valid & (brightness <= np.percentile(brightness[valid], q))
            best_iou = max(best_iou, (guess & burned).sum() / (guess | burned).sum())
    assert best_iou < 0.6


def test_some_scenes_have_a_swath_edge(synthetic_scenes):
    nodata = [np.mean(read_scene(synthetic_scenes.scenes_dir / n)[0]["B02"] == 0) for n in synthetic_scenes.scenes]
    assert any(f == 0 for f in nodata) and any(0.02 < f < 0.4 for f in nodata)


def test_deterministic_from_the_seed(tmp_path):
    a = generate_scenes(tmp_path / "a", n_scenes=2, size=120, seed=5)
    b = generate_scenes(tmp_path / "b", n_scenes=2, size=120, seed=5)
    c = generate_scenes(tmp_path / "c", n_scenes=2, size=120, seed=6)
    for name in a.scenes:
        assert np.array_equal(read_scene(a.scenes_dir / name)[0]["B04"], read_scene(b.scenes_dir / name)[0]["B04"])
    assert not np.array_equal(read_scene(a.scenes_dir / "scene_00")[0]["B04"],
                              read_scene(c.scenes_dir / "scene_00")[0]["B04"])
    assert gpd.read_file(a.polygons).geometry.equals(gpd.read_file(b.polygons).geometry)


@pytest.mark.parametrize("polygon_format, suffix", [("shp", ".shp"), ("geojson", ".geojson")])
def test_polygon_formats(tmp_path, polygon_format, suffix):
    data = generate_scenes(tmp_path, n_scenes=1, size=100, seed=1, polygon_format=polygon_format)
    assert data.polygons.name == f"burn_polygons{suffix}"
    assert gpd.read_file(data.polygons).crs.to_epsg() == 4326
    assert not list(tmp_path.glob(".*"))                     # no temporary leftovers


def test_bad_options(tmp_path):
    with pytest.raises(InputError, match="polygon_format"):
        generate_scenes(tmp_path, polygon_format="kml")
    with pytest.raises(InputError, match="unknown B99"):
        generate_scenes(tmp_path, n_scenes=1, size=50, bands=("B99",))


def test_full_tile_has_rgb_bands_and_tci(tmp_path):
    data = generate_full_tile(tmp_path, size=600, show_progress=False)
    scene_dir = data.scenes_dir / data.scenes[0]
    assert sorted(p.name for p in scene_dir.iterdir()) == ["B02.tif", "B03.tif", "B04.tif", "TCI.tif"]
    with rasterio.open(scene_dir / "B04.tif") as src:
        assert (src.width, src.height) == (600, 600)


@pytest.mark.slow
def test_cli(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data_prep.synthetic", f"out_dir={tmp_path / 'out'}", "n_scenes=2",
                             "size=96", "seed=1"], cwd=tmp_path, capture_output=True, text=True, timeout=LIMIT_S,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "scenes").iterdir()) == ["scene_00", "scene_01"]
    assert (tmp_path / "out" / "burn_polygons.gpkg").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]      # no Hydra outputs beside the data
    bad = subprocess.run([sys.executable, "-m", "data_prep.synthetic", f"out_dir={tmp_path / 'x'}",
                          "polygon_format=kml"], cwd=tmp_path, capture_output=True, text=True, timeout=LIMIT_S)
    assert bad.returncode == 2 and bad.stderr.startswith("error: polygon_format")
