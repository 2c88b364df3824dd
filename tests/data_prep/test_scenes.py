"""Scene discovery: band files by name, SAFE products, missing/ambiguous bands, bands off the grid."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from rasterio import Affine

from apps.foundation.errors import InputError
from helpers.rasters import write_geotiff
from data_prep.scenes import find_scene, list_folders, scene_name

RGB = ("B04", "B03", "B02")


def write_raster(path: Path, width: int = 24, height: int = 20, pixel: float = 10.0, crs: str = "EPSG:32629",
                 count: int = 1, driver: str = "GTiff") -> Path:
    data = np.ones((count, height, width), "uint8" if count == 3 else "uint16")
    return write_geotiff(path, data, Affine(pixel, 0, 199_980, 0, -pixel, 2_800_020), crs=crs, driver=driver)


def test_plain_band_files_with_tile_prefix(tmp_path):
    for band in RGB:
        write_raster(tmp_path / "s1" / f"T29RKH_20200219_{band}.tif")
    write_raster(tmp_path / "s1" / "T29RKH_20200219_TCI.tif", count=3)
    write_raster(tmp_path / "s1" / "T29RKH_20200219_B8A.tif")
    scene = find_scene(tmp_path / "s1", (*RGB, "TCI"))
    assert scene.name == "s1"
    assert scene.bands["B04"].name == "T29RKH_20200219_B04.tif"
    assert scene.bands["TCI"].name == "T29RKH_20200219_TCI.tif"


def test_jp2_band_files_with_resolution_suffix(tmp_path):
    for band in RGB:
        write_raster(tmp_path / "s" / f"{band}_10m.jp2", driver="JP2OpenJPEG")
        write_raster(tmp_path / "s" / f"{band}_20m.jp2", width=12, height=10, pixel=20, driver="JP2OpenJPEG")
    scene = find_scene(tmp_path / "s", RGB)
    assert {p.name for p in scene.bands.values()} == {"B04_10m.jp2", "B03_10m.jp2", "B02_10m.jp2"}


def test_safe_product_inside_a_scene_folder(tmp_path):
    safe = tmp_path / "scene_a" / "S2A_MSIL2A_20200219T110941_N0214_R137_T29RKH_20200219T140000.SAFE"
    for res, pixel in (("10m", 10), ("20m", 20)):
        img = safe / "GRANULE" / "L2A_T29RKH_A024" / "IMG_DATA" / f"R{res}"
        for band in (*RGB, "TCI"):
            write_raster(img / f"T29RKH_20200219T110941_{band}_{res}.tif", count=3 if band == "TCI" else 1,
                         width=240 // pixel, height=200 // pixel, pixel=pixel)
    scene = find_scene(tmp_path / "scene_a", (*RGB, "TCI"))
    assert scene.name == "scene_a"
    assert all(p.parent.name == "R10m" for p in scene.bands.values())
    assert find_scene(safe, RGB).name == safe.name[: -len(".SAFE")]


def test_missing_band_names_folder_and_band(tmp_path):
    for band in ("B04", "B02"):
        write_raster(tmp_path / "s" / f"{band}.tif")
    with pytest.raises(InputError, match=r"scene folder .*/s: band B03 missing \(found: B02, B04\)"):
        find_scene(tmp_path / "s", RGB)


def test_a_file_given_as_a_scene_folder_is_called_a_file(tmp_path):
    path = write_raster(tmp_path / "pair_2019.tif", count=3)
    with pytest.raises(InputError, match=r"scene folder .*pair_2019.tif: a file, not a folder \(give the folder"):
        find_scene(path, RGB)


def test_bands_on_different_grids(tmp_path):
    write_raster(tmp_path / "s" / "B04.tif")
    write_raster(tmp_path / "s" / "B03.tif")
    write_raster(tmp_path / "s" / "B02.tif", crs="EPSG:32630")
    with pytest.raises(InputError, match=r"B02 \(B02.tif\) is not on the grid of B04"):
        find_scene(tmp_path / "s", RGB)
    write_raster(tmp_path / "t" / "B04.tif")
    write_raster(tmp_path / "t" / "B03.tif", width=25)
    write_raster(tmp_path / "t" / "B02.tif")
    with pytest.raises(InputError, match="25x20 px"):
        find_scene(tmp_path / "t", RGB)


@pytest.mark.parametrize("band, count, expected", [("B04", 3, "expected 1 (one file per band"), ("TCI", 1, "expected 3")])
def test_a_band_file_with_another_band_count_than_its_name_is_refused(tmp_path, band, count, expected):
    for name in (*RGB, "TCI"):
        write_raster(tmp_path / "s" / f"{name}.tif", count=count if name == band else 3 if name == "TCI" else 1)
    with pytest.raises(InputError, match=rf"scene folder .*/s: band {band} file {band}.tif holds {count} bands, "
                                         rf"{re.escape(expected)}"):
        find_scene(tmp_path / "s", (*RGB, "TCI"))


def test_ambiguous_band(tmp_path):
    write_raster(tmp_path / "s" / "B04.tif")
    write_raster(tmp_path / "s" / "x_B04.tif")
    with pytest.raises(InputError, match="band B04 is ambiguous"):
        find_scene(tmp_path / "s", ("B04",))


def test_scene_folders(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        list_folders(tmp_path / "nope")
    with pytest.raises(InputError, match="holds no scene folder"):
        list_folders(tmp_path)
    for name in ("b", "a", ".hidden"):
        (tmp_path / name).mkdir()
    assert [p.name for p in list_folders(tmp_path)] == ["a", "b"]
    assert scene_name(Path("x/S2B_T10.SAFE")) == "S2B_T10"
