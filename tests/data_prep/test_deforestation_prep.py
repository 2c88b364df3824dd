"""Deforestation change-detection prep: Sentinel-2 products, PRODES labels, spatial split, the app end to end."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio import Affine
from shapely.geometry import box

from apps.foundation.chips import ChipDataset
from apps.foundation.errors import CONFIG_ERROR_EXIT_CODE, InputError
from helpers.core import kill_module_once
from helpers.rasters import write_geotiff
from data_prep.deforestation import BlockSplitSettings, PairChipSettings, PrepConfig, prepare
from data_prep.prodes import ProdesSettings, date_window, label_mask, read_prodes
from data_prep.geotiff import GeoTiffSettings
from data_prep.sentinel2 import (
    COMBINATIONS, RATIO_LEVELS, Grid, Sentinel2Settings, band_combination, channel_levels, combination_channels,
    combination_strips, level_strips, open_product,
)
from data_prep.normalize import stretch
from data_prep.spatial_split import RasterWindows, assign_blocks, split_windows
from data_prep.synthetic_pairs import generate_pairs, mtd_xml
from helpers import LIMIT_S

CHIP = {"size": 64, "overlap": 0.25, "min_change_fraction": 0.1, "max_ignore_fraction": 0.5}
CLI_ARGS = ["target_year=2021", *(f"chip.{k}={v}" for k, v in CHIP.items())]
TRANSFORM = Affine(10, 0, 500_000, 0, -10, 9_500_000)
CRS = "EPSG:32721"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, Path]:
    """Three synthetic areas of 384 px: (areas folder, PRODES polygons). Read-only."""
    return generate_pairs(tmp_path_factory.mktemp("pairs"), n_areas=3, size=384, seed=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, pairs) -> Path:
    """The deforestation chip dataset prepared from ``pairs`` with 64 px chips."""
    out = tmp_path_factory.mktemp("deforestation")
    prepare(tiny_config(out, *pairs))
    return out


def tiny_config(out_dir: Path, areas_dir: Path, polygons: Path, **changes) -> PrepConfig:
    return PrepConfig(out_dir=out_dir, areas_dir=areas_dir, polygons=polygons, target_year=2021,
                      chip=PairChipSettings(**CHIP), **changes)


def copy_area(pairs, tmp_path: Path, name: str = "area_00") -> Path:
    """A writable areas folder holding a copy of one synthetic area."""
    shutil.copytree(pairs[0] / name, tmp_path / "areas" / name)
    return tmp_path / "areas"


def write_product(folder: Path, reflectance: np.ndarray, baseline: str = "02.14", offset: int = 0,
                  transform: Affine = TRANSFORM, crs: str = CRS, scl: np.ndarray | None = None,
                  sensing: date = date(2021, 7, 28)) -> Path:
    """A product folder: reflectance (4, H, W) in [0, 1] as uint16 DN (B02, B03, B04, B08; NaN -> DN 0),
    SCL at 20 m (default all vegetation) and an MTD_MSIL2A.xml."""
    dn = np.where(np.isnan(reflectance), 0, np.rint(reflectance * 10000) - offset).astype(np.uint16)
    for band, data in zip(("B02", "B03", "B04", "B08"), dn):
        write_geotiff(folder / f"{band}.tif", data, transform, crs)
    if scl is None:
        scl = np.full((-(-dn.shape[1] // 2), -(-dn.shape[2] // 2)), 4, np.uint8)
    write_geotiff(folder / "SCL.tif", scl, transform @ Affine.scale(2), crs)
    (folder / "MTD_MSIL2A.xml").write_text(mtd_xml(sensing, baseline, offset))
    return folder


def read_combinations(product, grid, combinations, settings):
    """``combination_strips`` gathered whole (small grids only): (combination -> (C, H, W), valid (H, W))."""
    strips = list(combination_strips(product, grid, combinations, settings))
    return ({name: np.concatenate([combos[name] for _, combos, _ in strips], axis=1) for name in combinations},
            np.concatenate([valid for _, _, valid in strips]))


def random_reflectance(shape=(4, 32, 32), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.01, 0.6, shape).round(4).astype(np.float32)


def windows_overlap(a, b) -> bool:
    return (a.row_off < b.row_off + b.height and b.row_off < a.row_off + a.height
            and a.col_off < b.col_off + b.width and b.col_off < a.col_off + a.width)


# --- the dataset end to end ------------------------------------------------------------------------------

def test_prepared_dataset_is_complete_split_by_blocks_and_rotated_in_train_only(dataset):
    data = ChipDataset(dataset)
    assert data.classes == ["no_change", "change"] and data.ignore_index == 255
    combos = {"nirrg": 3, "ndvi": 1, "evi": 1}
    for d in ("before", "after"):
        for combo, channels in combos.items():
            assert data.arrays[f"{d}_{combo}"] == {"kind": "image", "channels": channels, "bands": data.arrays[f"{d}_{combo}"]["bands"],
                                                   "date": d, "combination": combo, "nodata": 0}
    for scene, info in data.index["scenes"].items():
        mask = data.open_array(scene, "mask")
        assert mask.dtype == np.uint8 and mask.shape == (info["chips"], 64, 64)
        assert set(np.unique(mask)) <= {0, 1, 255}
        for d in ("before", "after"):
            for combo, channels in combos.items():
                image = data.open_array(scene, f"{d}_{combo}")
                assert image.dtype == np.uint8 and image.shape == (info["chips"], channels, 64, 64)
    records = {split: data.split_records(split) for split in ("train", "val", "test")}
    assert all(records.values())
    originals = [r for rs in records.values() for r in rs if "_rot" not in r.chip_id]
    for a in originals:
        assert len(a.sources) == 2 and a.sources[0].endswith("before") and a.sources[1].endswith("after")
        assert a.class_fractions["change"] >= 0.1 and a.class_fractions["no_change"] > 0 and a.nodata_fraction <= 0.5
        for b in originals:
            if a.scene == b.scene and a.split != b.split:
                assert not windows_overlap(a, b), (a.chip_id, b.chip_id)
    rotated = [r for r in data.records if "_rot" in r.chip_id]
    assert rotated and all(r.split == "train" and r.scene.endswith("__rot") for r in rotated)
    assert len(rotated) == 2 * sum(1 for r in records["train"] if "_rot" not in r.chip_id)
    chip = next(r for r in rotated if r.chip_id.endswith("_rot90"))
    original = next(r for r in originals if r.chip_id == chip.chip_id[: -len("_rot90")])
    np.testing.assert_array_equal(data.open_array(chip.scene, "mask")[chip.index],
                                  np.rot90(data.open_array(original.scene, "mask")[original.index]))
    attrs = data.attrs
    assert attrs["target_year"] == 2021 and attrs["chip_size"] == 64 and attrs["split"]["block_size_px"] == 256
    assert attrs["products"]["area_00"]["after"]["baseline"] == "05.00"
    assert attrs["products"]["area_00"]["after"]["boa_add_offset"]["B04"] == -1000
    assert attrs["products"]["area_00"]["before"]["boa_add_offset"]["B04"] == 0
    start, end = attrs["date_windows"]["area_00"]
    assert start <= "2020-07-20" and "2021-07-28" <= end
    assert set(attrs["percentiles"]["area_00"]) == {"nirrg", "ndvi", "evi"}


def test_chips_are_the_windows_their_records_name(dataset):
    data = ChipDataset(dataset)
    record = data.split_records("test")[0]
    with rasterio.open(dataset / "work" / record.scene / "after_nirrg.tif") as src:
        window = rasterio.windows.Window(record.col_off, record.row_off, record.width, record.height)
        np.testing.assert_array_equal(data.open_array(record.scene, "after_nirrg")[record.index], src.read(window=window))
        assert record.transform == tuple(src.window_transform(window))[:6]


def test_rerun_skips_finished_areas(dataset, pairs):
    outputs = sorted([*dataset.glob("work/*/*.tif"), *dataset.glob("scenes/*/chips.json")])
    before = {p: p.stat().st_mtime_ns for p in outputs}
    prepare(tiny_config(dataset, *pairs))
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
    assert (dataset / "dataset.json").is_file()


def test_split_refuses_chips_made_with_other_settings_and_prepare_redoes_missing_outputs(tmp_path, dataset, pairs):
    out = tmp_path / "dataset"
    shutil.copytree(dataset, out)
    with pytest.raises(InputError, match=r"area area_00: chip outputs were made with other settings \(size\)"):
        prepare(replace(tiny_config(out, *pairs), chip=PairChipSettings(**{**CHIP, "size": 128})), stage="split")
    assert not (out / "dataset.json").exists()
    (out / "work" / "area_01" / "label.tif").unlink()
    prepare(tiny_config(out, *pairs))
    assert (out / "work" / "area_01" / "label.tif").is_file() and (out / "dataset.json").is_file()


def test_area_without_chips_is_skipped_while_others_yield(tmp_path, pairs):
    areas = copy_area(pairs, tmp_path)
    shutil.copytree(pairs[0] / "area_01", areas / "area_01")
    polygons = tmp_path / "prodes.gpkg"
    frame = gpd.read_file(pairs[1])
    lonely = frame.to_crs("EPSG:32722").geometry.intersects(box(*Grid.of(areas / "area_01/before/B02.tif").bounds))
    frame[~lonely | ~frame["year"].isin([2020, 2021])].to_file(polygons)
    out = tmp_path / "out"
    prepare(tiny_config(out, areas, polygons, split=BlockSplitSettings(block_size_px=96)))
    data = ChipDataset(out)
    assert data.attrs["skipped"] == {"area_01": "no PRODES change of 2021 on the area"}
    assert {r.scene for r in data.records} <= {"area_00", "area_00__rot"}


# --- Sentinel-2 products ---------------------------------------------------------------------------------

def test_boa_offset_of_baseline_04_and_later_gives_the_same_reflectance(tmp_path):
    reflectance = random_reflectance()
    old = open_product(write_product(tmp_path / "old", reflectance, "02.14", 0))
    new = open_product(write_product(tmp_path / "new", reflectance, "05.00", -1000))
    assert old.offsets["B08"] == 0 and new.offsets["B08"] == -1000
    read_old, _ = read_combinations(old, old.grid, ["nirrg"], Sentinel2Settings())
    read_new, _ = read_combinations(new, old.grid, ["nirrg"], Sentinel2Settings())
    np.testing.assert_allclose(read_new["nirrg"], read_old["nirrg"], atol=1e-6)
    np.testing.assert_allclose(read_old["nirrg"], reflectance[[3, 2, 1]], atol=1e-6)
    assert open_product(new.folder, Sentinel2Settings(boa_offset=0)).offsets["B04"] == 0


def test_baseline_from_a_stac_item_sets_the_offset(tmp_path):
    folder = write_product(tmp_path / "stac", random_reflectance(), "05.00", -1000)
    (folder / "MTD_MSIL2A.xml").unlink()
    (folder / "item.json").write_text('{"type": "Feature", "properties": {"s2:processing_baseline": "04.00", '
                                      '"datetime": "2022-03-01T13:56:21Z"}}')
    product = open_product(folder)
    assert product.baseline == "04.00" and product.offsets["B02"] == -1000
    assert product.sensing_date == date(2022, 3, 1)


def test_ndvi_and_evi_on_known_values():
    bands = {"B02": np.float32([0.05, 0.0, np.nan]), "B03": np.float32([0.08, 0.0, 0.1]),
             "B04": np.float32([0.1, 0.0, 0.1]), "B08": np.float32([0.5, 0.0, 0.5])}
    ndvi, evi = band_combination("ndvi", bands)[0], band_combination("evi", bands)[0]
    assert ndvi[0] == pytest.approx(0.4 / 0.6) and np.isnan(ndvi[1])
    assert evi[0] == pytest.approx(2.5 * 0.4 / (0.5 + 0.6 - 0.375 + 1)) and np.isnan(evi[2])
    nirrg = band_combination("nirrg", bands)
    assert nirrg.shape == (3, 3) and nirrg.dtype == np.float32 and nirrg[:, 0].tolist() == pytest.approx([0.5, 0.1, 0.08])
    np.testing.assert_array_equal(stretch(np.float32([np.nan, -1, 0, 0.5, 1, 2]), 0.0, 1.0), [0, 1, 1, 128, 255, 255])


def test_scl_is_resampled_by_nearest_and_masks_clouds(tmp_path):
    scl = np.random.default_rng(0).choice([4, 5, 3, 8, 9, 10, 6], (16, 16)).astype(np.uint8)
    product = open_product(write_product(tmp_path / "p", random_reflectance(), scl=scl))
    _, valid = read_combinations(product, product.grid, ["ndvi"], Sentinel2Settings())
    expected = ~np.isin(np.repeat(np.repeat(scl, 2, 0), 2, 1), [0, 1, 3, 8, 9, 10])
    np.testing.assert_array_equal(valid, expected)
    _, valid = read_combinations(product, product.grid, ["ndvi"], Sentinel2Settings(cloud_classes=(9,)))
    np.testing.assert_array_equal(valid, np.repeat(np.repeat(scl != 9, 2, 0), 2, 1))


def test_second_date_on_another_grid_is_read_onto_the_first(tmp_path, caplog):
    reflectance = random_reflectance()
    first = open_product(write_product(tmp_path / "first", reflectance))
    shifted = open_product(write_product(tmp_path / "shifted", reflectance, transform=TRANSFORM @ Affine.translation(0, 1)))
    with caplog.at_level(logging.INFO, logger="data_prep.sentinel2"):
        combos, valid = read_combinations(shifted, first.grid, ["nirrg"], Sentinel2Settings())
    assert "read onto the grid of the first date" in caplog.text
    np.testing.assert_allclose(combos["nirrg"][:, 1:], reflectance[[3, 2, 1], :-1], atol=1e-5)
    assert not valid[0].any() and valid[1:].all()
    # Another UTM zone: the same ground, reprojected, lands on the same pixels give or take the warp.
    other_zone = Grid(rasterio.crs.CRS.from_string("EPSG:32722"), *_other_zone_grid(first.grid))
    combos, valid = read_combinations(first, other_zone, ["nirrg"], Sentinel2Settings())
    assert valid.mean() > 0.3 and np.nanmean(combos["nirrg"]) == pytest.approx(reflectance[[3, 2, 1]].mean(), rel=0.1)


def _other_zone_grid(grid: Grid):
    left, bottom, right, top = rasterio.warp.transform_bounds(grid.crs, "EPSG:32722", *grid.bounds)
    return Affine(10, 0, left, 0, -10, top), int((right - left) // 10), int((top - bottom) // 10)


# --- PRODES labels and the date window -------------------------------------------------------------------

def test_date_window_spans_image_dates_with_margin():
    assert date_window(["2021-07-20", date(2021, 8, 10), None, "2020-08-01"]) == (date(2020, 7, 2), date(2021, 9, 9))
    assert date_window(["2021-07-20"], margin_days=0) == (date(2021, 7, 20), date(2021, 7, 20))
    with pytest.raises(ValueError):
        date_window([None])


def test_label_classes_ignore_and_buffer(tmp_path):
    grid = Grid(rasterio.crs.CRS.from_string(CRS), TRANSFORM, 40, 40)
    x, y = TRANSFORM.c, TRANSFORM.f
    cell = lambda c0, r0, c1, r1: box(x + 10 * c0, y - 10 * r1, x + 10 * c1, y - 10 * r0)  # noqa: E731
    frame = gpd.GeoDataFrame({
        "year": [2021, 2019, 2021, 2022, 2000], "image_date": ["2021-07-01"] * 5,
        "main_class": ["DESMATAMENTO", "desmatamento", "desmatamento", "desmatamento", "hidrografia"],
        "class_name": ["d2021", "d2019", "residuo", "d2022", "hidrografia"],
    }, geometry=[cell(0, 0, 10, 10), cell(10, 0, 20, 10), cell(20, 0, 30, 10), cell(30, 0, 40, 10), cell(0, 20, 40, 30)],
        crs=CRS).to_crs("EPSG:4674")
    path = tmp_path / "prodes.gpkg"
    frame.to_file(path)
    polygons = read_prodes(path, grid)
    invalid = np.zeros((40, 40), bool)
    invalid[35:] = True
    mask = label_mask(polygons, grid, 2021, invalid)
    assert (mask[1:9, 1:9] == 1).all() and (mask[1:9, 11:19] == 255).all() and (mask[1:9, 21:29] == 255).all()
    assert (mask[1:9, 31:39] == 0).all() and (mask[21:29] == 255).all() and (mask[35:] == 255).all()
    assert (mask[12:18] == 0).all()
    buffered = label_mask(polygons, grid, 2021, None, ProdesSettings(ignore_buffer_px=2))
    assert (buffered[2:8, 2:8] == 1).all() and (buffered[8:12, 2:8] == 255).all() and buffered[13, 5] == 0


# --- the spatial split ------------------------------------------------------------------------------------

def test_assign_blocks_is_seeded_and_reaches_the_fractions():
    weights = np.random.default_rng(0).integers(0, 20, (12, 12))
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    blocks = assign_blocks(weights, fractions, seed=3)
    assert np.array_equal(blocks, assign_blocks(weights, fractions, seed=3))
    assert not np.array_equal(blocks, assign_blocks(weights, fractions, seed=4))
    shares = [weights[blocks == i].sum() / weights.sum() for i in range(3)]
    assert shares == pytest.approx([0.6, 0.2, 0.2], abs=0.03)


def test_split_windows_never_lets_windows_of_two_splits_overlap():
    offsets = np.arange(0, 1000 - 64 + 1, 24)
    rows, cols = (g.ravel() for g in np.meshgrid(offsets, offsets, indexing="ij"))
    result = split_windows({"a": RasterWindows(rows, cols, 64, 1000, 1000)}, 200, {"train": 0.6, "val": 0.2, "test": 0.2})["a"]
    kept = np.flatnonzero(result.keep)
    assert set(result.split[kept]) == {0, 1, 2}
    for i in kept:
        other = kept[result.split[kept] != result.split[i]]
        overlap = (np.abs(rows[other] - rows[i]) < 64) & (np.abs(cols[other] - cols[i]) < 64)
        assert not overlap.any()


# --- bad input ------------------------------------------------------------------------------------------

def _set_sensing_date(product: Path, day: date, baseline: str = "05.00", offset: int = -1000) -> None:
    (product / "MTD_MSIL2A.xml").write_text(mtd_xml(day, baseline, offset))


def _rewrite(path: Path, data: np.ndarray | None = None, transform: Affine | None = None) -> None:
    with rasterio.open(path) as src:
        profile, array = src.profile, src.read(1)
    data = array if data is None else data
    profile.update(width=data.shape[1], height=data.shape[0], transform=transform or profile["transform"])
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
@pytest.mark.parametrize("case, message", [
    ("no overlap", r"products .*area_00/before and .*area_00/after: footprints do not overlap"),
    ("missing SCL", r"product .*area_00/after: no SCL band for the cloud mask .*cloud_mask=none"),
    ("outside date window", r"product .*area_00/after: sensed 2022-03-01, outside the date window 20\d\d-\d\d-\d\d\.\.2021-\d\d-\d\d"),
    ("no year field", r"polygons .*noyear.gpkg: no year field \(fields found: image_date, class_name, main_class"),
    ("all clouds", r"product .*area_00/before: no valid pixel on the grid of .*area_00/before after the cloud mask"),
    ("no CRS", r"polygons .*nocrs.shp: no CRS"),
    ("wrong resolution", r"product .*area_00/after: band B04 file .*B04.tif has 20 x 20 m pixels, expected 10 m"),
    ("three bands in B08", r"scene folder .*area_00/after: band B08 file B08.tif holds 3 bands, expected 1 \(one file per band"),
    ("geographic grid", r"product .*area_00/after: band B02 file .*B02.tif is in geographic coordinates \(EPSG:4326\), "
                        r"9e-05 x 9e-05 degree pixels; expected 10 m pixels in a projected CRS \(reproject it"),
])
def test_bad_input_stops_with_one_line_and_no_dataset(tmp_path, pairs, case, message):
    areas = copy_area(pairs, tmp_path)
    before, after = areas / "area_00" / "before", areas / "area_00" / "after"
    polygons = pairs[1]
    if case == "no overlap":
        for path in after.glob("*.tif"):
            with rasterio.open(path) as src:
                moved = Affine.translation(0, -500_000) @ src.transform
            _rewrite(path, transform=moved)
    elif case == "missing SCL":
        (after / "SCL.tif").unlink()
    elif case == "outside date window":
        _set_sensing_date(after, date(2022, 3, 1))
    elif case == "no year field":
        polygons = tmp_path / "noyear.gpkg"
        gpd.read_file(pairs[1]).drop(columns=["year", "state"]).to_file(polygons)
    elif case == "all clouds":
        with rasterio.open(before / "SCL.tif") as src:
            shape = (src.height, src.width)
        _rewrite(before / "SCL.tif", np.full(shape, 9, np.uint8))
    elif case == "no CRS":
        polygons = tmp_path / "nocrs.shp"
        frame = gpd.read_file(pairs[1])
        gpd.GeoDataFrame(frame.drop(columns="geometry"), geometry=list(frame.geometry), crs=None).to_file(polygons)
    elif case == "wrong resolution":
        with rasterio.open(after / "B04.tif") as src:
            data, transform = src.read(1)[::2, ::2], src.transform @ Affine.scale(2)
        _rewrite(after / "B04.tif", data, transform)
    elif case == "three bands in B08":
        with rasterio.open(after / "B08.tif") as src:
            profile, band = src.profile, src.read(1)
        with rasterio.open(after / "B08.tif", "w", **{**profile, "count": 3}) as dst:
            dst.write(np.stack([band] * 3))
    elif case == "geographic grid":
        for path in after.glob("*.tif"):
            with rasterio.open(path) as src:
                profile, data = src.profile, src.read()
            pixel = 9e-5 * (2 if path.stem == "SCL" else 1)
            with rasterio.open(path, "w", **{**profile, "crs": "EPSG:4326",
                                             "transform": Affine(pixel, 0, -55.0, 0, -pixel, -3.0)}) as dst:
                dst.write(data)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message) as err:
        prepare(tiny_config(out, areas, polygons))
    assert "\n" not in str(err.value)
    assert not (out / "dataset.json").exists()


def test_missing_scl_is_fine_without_the_cloud_mask(tmp_path, pairs):
    areas = copy_area(pairs, tmp_path)
    shutil.copytree(pairs[0] / "area_01", areas / "area_01")
    for area in ("area_00", "area_01"):
        for d in ("before", "after"):
            (areas / area / d / "SCL.tif").unlink()
    out = tmp_path / "out"
    prepare(tiny_config(out, areas, pairs[1], sentinel2=Sentinel2Settings(cloud_mask="none"),
                        split=BlockSplitSettings(block_size_px=96)))
    assert ChipDataset(out).attrs["sentinel2"]["cloud_mask"] == "none"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep.deforestation", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=LIMIT_S, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing SCL", "outside date window"])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, pairs, case):
    areas = copy_area(pairs, tmp_path)
    after = areas / "area_00" / "after"
    if case == "missing SCL":
        (after / "SCL.tif").unlink()
    else:
        _set_sensing_date(after, date(2022, 3, 1))
    out = tmp_path / "out"
    result = run_cli(f"areas_dir={areas}", f"polygons={pairs[1]}", f"out_dir={out}", *CLI_ARGS, cwd=tmp_path)
    assert result.returncode == CONFIG_ERROR_EXIT_CODE, result.stderr
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("error: ") and str(after) in message, message
    assert not (out / "dataset.json").exists()


@pytest.mark.slow
def test_synthetic_pairs_cli_and_prodes_fields(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data_prep.synthetic_pairs", f"out_dir={tmp_path}", "n_areas=1",
                             "size=128", "seed=2"], capture_output=True, text=True, timeout=LIMIT_S)
    assert result.returncode == 0, result.stderr
    frame = gpd.read_file(tmp_path / "prodes.gpkg")
    assert frame.crs.to_epsg() == 4674
    assert {"year", "image_date", "class_name", "main_class", "state", "uuid"} <= set(frame.columns)
    assert {2021, 2000} <= set(frame["year"]) and "hidrografia" in set(frame["main_class"])
    with rasterio.open(tmp_path / "areas/area_00/after/SCL.tif") as scl, \
            rasterio.open(tmp_path / "areas/area_00/after/B08.tif") as nir:
        assert scl.res == (20, 20) and nir.res == (10, 10) and nir.dtypes[0] == "uint16" and scl.dtypes[0] == "uint8"


# --- memory-bounded prepare: histogram percentiles, strip-wise writing ------------------------------------

def test_ratio_levels_percentiles_are_within_half_a_bin_of_numpys():
    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.3, 100_000).astype(np.float32)
    values[rng.random(values.size) < 0.1] = np.nan
    values[:50] = 7.0  # outside the range: counted in the last bin
    levels = RATIO_LEVELS.quantize(values)
    assert levels.dtype == np.uint16 and (levels[np.isnan(values)] == RATIO_LEVELS.count).all()
    counts = np.bincount(levels, minlength=RATIO_LEVELS.count + 1)
    assert counts[:-1].sum() == np.isfinite(values).sum()
    np.testing.assert_allclose(RATIO_LEVELS.percentiles(counts, [1, 50, 99]), np.nanpercentile(values, [1, 50, 99]),
                               rtol=0, atol=RATIO_LEVELS.precision)
    assert RATIO_LEVELS.percentiles(counts, [100])[0] == pytest.approx(1 - RATIO_LEVELS.precision)
    finite = np.isfinite(values) & (np.abs(values) < 1)
    assert np.abs(RATIO_LEVELS.values()[levels[finite]] - values[finite]).max() <= RATIO_LEVELS.precision + 1e-6  # float32


def test_level_strips_stand_for_the_combinations(tmp_path):
    """Reflectance levels are exactly reflectance x 10000, ratio levels within half a bin of NDVI/EVI, in
    strips of any height, with the same valid pixels (level ``count`` elsewhere)."""
    values = random_reflectance((4, 20, 24))
    values[:, 5, 5] = np.nan
    product = open_product(write_product(tmp_path / "p", values, baseline="05.00", offset=-1000), Sentinel2Settings())
    combinations = list(COMBINATIONS)
    combos, valid = read_combinations(product, product.grid, combinations, Sentinel2Settings())
    strips = list(level_strips(product, product.grid, combinations, Sentinel2Settings(), strip_rows=7))
    levels = np.concatenate([lv for _, lv, _ in strips], axis=1)
    np.testing.assert_array_equal(np.concatenate([ok for _, _, ok in strips]), valid)
    assert not valid[5, 5]
    reference = np.concatenate([combos[name] for name in combinations])
    for level, expected, channel in zip(levels, reference, combination_channels(combinations)):
        lv = channel_levels(channel)
        assert (level[~valid] == lv.count).all()
        stood_for = lv.values()[level[valid]]
        if lv.precision == 0:
            np.testing.assert_array_equal(stood_for, expected[valid])
        else:  # EVI beyond [-1, 1] counts in the end bins
            inside = np.abs(expected[valid]) < 1
            assert np.abs(stood_for - expected[valid])[inside].max() <= lv.precision + 1e-6
            assert set(level[valid][~inside]) <= {0, lv.count - 1}


def test_prepared_percentiles_match_numpys_on_both_dates_within_a_bin(dataset, pairs):
    products = {d: open_product(pairs[0] / "area_00" / d) for d in ("before", "after")}
    grid = products["before"].grid
    read = {d: read_combinations(p, grid, list(COMBINATIONS), Sentinel2Settings())[0] for d, p in products.items()}
    stored = ChipDataset(dataset).attrs["percentiles"]["area_00"]
    for combo, channels in COMBINATIONS.items():
        for c, channel in enumerate(channels):
            values = np.concatenate([read[d][combo][c][np.isfinite(read[d][combo][c])] for d in read])
            np.testing.assert_allclose(stored[combo][c], np.percentile(values, [1, 99]), rtol=0,
                                       atol=channel_levels(channel).precision + 1e-6)
    with rasterio.open(dataset / "work" / "area_00" / "after_nirrg.tif") as src:
        written = src.read()
    expected = np.stack([stretch(read["after"]["nirrg"][c], *stored["nirrg"][c]) for c in range(3)])
    np.testing.assert_array_equal(written, expected)
    # NDVI is stretched from its levels (bins of 6.1e-5): at most one step off the exact value's, and rarely.
    with rasterio.open(dataset / "work" / "area_00" / "after_ndvi.tif") as src:
        written = src.read(1).astype(int)
    exact = stretch(read["after"]["ndvi"][0], *stored["ndvi"][0]).astype(int)
    assert np.abs(written - exact).max() <= 1 and (written == exact).mean() > 0.99


def test_prepare_in_small_strips_writes_the_same_images(tmp_path, dataset, pairs):
    out = tmp_path / "out"
    prepare(tiny_config(out, *pairs, geotiff=GeoTiffSettings(strip_rows=77)), stage="prepare", area="area_00")
    for path in sorted((dataset / "work" / "area_00").glob("*.tif")):
        with rasterio.open(path) as whole, rasterio.open(out / "work" / "area_00" / path.name) as strips:
            np.testing.assert_array_equal(strips.read(), whole.read(), err_msg=path.name)


@pytest.mark.slow
def test_killed_prep_resumes_to_the_same_dataset(tmp_path):
    """SIGKILL once the first area is prepared: no dataset loads, and a re-run finishes from there to
    the dataset an uninterrupted prep makes."""
    areas, polygons = generate_pairs(tmp_path / "input", n_areas=4, size=512, seed=2)
    args = [f"areas_dir={areas}", f"polygons={polygons}", *CLI_ARGS, "split.block_size_px=128"]
    out = tmp_path / "out"
    kill_module_once("data_prep.deforestation", [*args, f"out_dir={out}"], out / "work" / "area_00" / "prepared.json",
                     tmp_path)
    with pytest.raises(InputError, match="incomplete"):
        ChipDataset(out)

    assert run_cli(*args, f"out_dir={out}", cwd=tmp_path).returncode == 0
    assert run_cli(*args, f"out_dir={tmp_path / 'reference'}", cwd=tmp_path).returncode == 0
    dataset, expected = ChipDataset(out), ChipDataset(tmp_path / "reference")
    assert [(r.chip_id, r.split) for r in dataset.records] == [(r.chip_id, r.split) for r in expected.records]
    for scene in expected.index["scenes"]:
        for name in expected.arrays:
            np.testing.assert_array_equal(dataset.open_array(scene, name), expected.open_array(scene, name))


def test_pixels_where_a_combination_is_undefined_are_no_data(tmp_path):
    """Dark in both B04 and B08 (DN below the 04.00 offset: reflectance clipped to 0) makes NDVI 0/0: the
    pixel is no data in every combination, not a valid pixel with a blank NDVI."""
    values = random_reflectance((4, 8, 8))
    values[2:, 3, 4] = [-0.002, -0.001]  # B04, B08 just under the offset
    product = open_product(write_product(tmp_path / "p", values, baseline="05.00", offset=-1000), Sentinel2Settings())
    combos, valid = read_combinations(product, product.grid, ["nirrg", "ndvi"], Sentinel2Settings())
    assert not valid[3, 4] and valid.sum() == 63
    assert np.isnan(combos["nirrg"][:, 3, 4]).all() and np.isnan(combos["ndvi"][:, 3, 4]).all()
    assert np.isfinite(combos["ndvi"][:, valid]).all()


def test_a_folder_no_prep_made_is_not_called_an_unfinished_prep(tmp_path):
    """A change-detection benchmark in its published layout (A/, B/, label/) given as a chip dataset."""
    for name in ("A", "B", "label"):
        (tmp_path / "levir" / name).mkdir(parents=True)
    with pytest.raises(InputError, match=r"chip dataset .*levir: not a chip dataset \(no dataset.json, nor a data "
                                         r"prep's scenes/ or work/\): point it at the out_dir of the app's data prep$"):
        ChipDataset(tmp_path / "levir")
