"""Sentinel-2 acquisition without a catalogue: areas, the choice of items, date windows, windows on the 20 m
lattice, offline marks, signing, and bad input (one line, exit code 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from rasterio import Affine
from shapely.geometry import box, mapping

from apps.foundation.errors import CONFIG_ERROR_EXIT_CODE, InputError
from helpers.rasters import write_geotiff
from helpers.core import CONF_DIR, LIMIT_S, compose_config
from data_prep.acquire import AcquireConfig, date_windows, read_polygons
from data_prep.areas import AreaSettings, plan_areas, utm_crs
from data_prep.fetch import SNAP_M, Fetcher, SceneJob, cut, snapped_window
from data_prep.stac import (
    COVERED, CatalogSettings, Candidate, DownloadSettings, RemoteError, choose_cover, choose_pair, is_online, redact,
)

UTM = "EPSG:32610"
X0, Y0 = 500_000.0, 5_500_000.0
EARTH_SEARCH = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "SCL": "scl", "TCI": "visual"}


def squares(*corners: tuple[float, float], side: float = 300.0, crs: str = UTM) -> gpd.GeoSeries:
    """Squares of ``side`` m with south-west corners at ``corners`` (m from X0, Y0) in UTM 10N, as a GeoSeries
    in ``crs``."""
    shapes = [box(X0 + x, Y0 + y, X0 + x + side, Y0 + y + side) for x, y in corners]
    return gpd.GeoSeries(shapes, crs=UTM).to_crs(crs)


def covered(areas, geoms) -> bool:
    """Whether the areas' boxes together contain every polygon (in the areas' CRS)."""
    union = shapely.union_all([a.box for a in areas])
    return all(union.buffer(1e-6).contains(g) for g in geoms.to_crs(areas[0].crs))


def test_nearby_polygons_share_an_area_far_ones_get_their_own():
    geoms = squares((0, 0), (1000, 500), (20_000, -30_000), crs="EPSG:4326")
    areas = plan_areas(geoms, AreaSettings(max_gap_m=2000, margin_m=500))
    assert [a.name for a in areas] == ["area_000", "area_001"] and [a.polygons for a in areas] == [2, 1]
    assert all(a.crs == UTM for a in areas)
    first, second = (a.bounds for a in areas)
    assert first == pytest.approx((X0 - 500, Y0 - 500, X0 + 1800, Y0 + 1300), abs=SNAP_M)  # north first
    assert second[3] < first[1]
    assert all(v % SNAP_M == 0 for a in areas for v in a.bounds)
    assert covered(areas, geoms)


def test_areas_never_exceed_the_size_limit_nor_overlap():
    chain = squares(*[(1500 * i, 0) for i in range(30)], (0, 9000))  # 45 km of polygons 1.2 km apart
    settings = AreaSettings(max_gap_m=2000, max_size_m=10_000, margin_m=500)
    areas = plan_areas(chain, settings)
    assert len(areas) >= 5
    for a in areas:
        left, bottom, right, top = a.bounds
        assert right - left <= 10_000 and top - bottom <= 10_000
    for i, a in enumerate(areas):
        for b in areas[i + 1:]:
            assert a.box.intersection(b.box).area == 0
    assert covered(areas, chain)


def test_groups_whose_boxes_would_overlap_are_merged():
    # 1.5 km apart (more than max_gap_m), but their 1 km margins overlap
    geoms = squares((0, 0), (1800, 0))
    areas = plan_areas(geoms, AreaSettings(max_gap_m=1000, margin_m=1000))
    assert len(areas) == 1 and areas[0].polygons == 2


def test_areas_are_deterministic_and_drawn_in_each_polygons_utm_zone():
    west = squares((0, 0), (600, 0))
    east = gpd.GeoSeries(gpd.GeoSeries([box(500_000, 5_500_000, 500_300, 5_500_300)], crs="EPSG:32611").to_crs(UTM))
    geoms = gpd.GeoSeries(list(west) + list(east), crs=UTM)
    areas = plan_areas(geoms, AreaSettings())
    assert [a.crs for a in areas] == ["EPSG:32610", "EPSG:32611"]
    shuffled = plan_areas(geoms.iloc[[2, 1, 0]].to_crs("EPSG:3857"), AreaSettings())
    assert [(a.name, a.crs, a.polygons) for a in shuffled] == [(a.name, a.crs, a.polygons) for a in areas]
    assert np.allclose([a.bounds for a in shuffled], [a.bounds for a in areas], atol=SNAP_M)
    one_crs = plan_areas(geoms, AreaSettings(crs="EPSG:3978"))
    assert {a.crs for a in one_crs} == {"EPSG:3978"}


@pytest.mark.parametrize("profile", sorted(p.stem for p in (Path(CONF_DIR) / "catalog").glob("*.yaml")))
def test_every_catalog_profile_composes_into_settings(profile, tmp_path):
    cfg = compose_config("prep_acquire", [f"catalog={profile}", "polygons=p.gpkg", f"out_dir={tmp_path}"])
    config = AcquireConfig.from_cfg(cfg)
    assert config.catalog.url.startswith("https://") and config.catalog.collection == "sentinel-2-l2a"
    assert set(config.catalog.assets) == {"B02", "B03", "B04", "B08", "SCL", "TCI"}
    assert config.bands == ("B02", "B03", "B04", "TCI") and config.max_cloud_cover == 20


def test_utm_zones_by_longitude_and_hemisphere():
    assert utm_crs(-123.5, 49.0) == "EPSG:32610" and utm_crs(-56.8, -7.3) == "EPSG:32721"
    assert utm_crs(179.9, 10) == "EPSG:32660" and utm_crs(-180, 10) == "EPSG:32601"


def candidate(item_id: str, footprint, cloud: float | None = 5.0, when: str = "2021-08-01T19:00:00Z",
              online: bool = True, missing: tuple[str, ...] = (), area=box(0, 0, 100, 100)) -> Candidate:
    inside = footprint.intersection(area)
    return Candidate({"id": item_id, "properties": {"datetime": when}}, inside, inside.area / area.area, cloud,
                     online, missing)


AREA = box(0, 0, 100, 100)


def test_cover_takes_the_least_cloudy_item_that_covers_the_area_alone():
    items = [candidate("whole_10", AREA, 10.0), candidate("whole_5", box(-10, -10, 110, 110), 5.0),
             candidate("half_0", box(0, 0, 50, 100), 0.0)]
    choice = choose_cover(items, AREA, 20)
    assert [c.id for c in choice.chosen] == ["whole_5"] and choice.uncovered == 0
    assert set(choice.dropped) == {"whole_10", "half_0"}


def test_cover_takes_the_fewest_items_least_cloud_first_and_says_why_it_drops_others():
    items = [candidate("west", box(0, 0, 60, 100), 8.0), candidate("east", box(40, 0, 100, 100), 9.0),
             candidate("small", box(0, 0, 30, 100), 1.0), candidate("east_cloudier", box(40, 0, 100, 100), 12.0),
             candidate("cloudy", AREA, 50.0), candidate("unknown", AREA, None),
             candidate("elsewhere", box(200, 0, 300, 100), 0.0), candidate("no_scl", AREA, 0.0, missing=("SCL",))]
    choice = choose_cover(items, AREA, 20)
    assert [c.id for c in choice.chosen] == ["west", "east"] and choice.uncovered <= COVERED
    assert choice.roles == ("scene", "scene")
    assert choice.claims[0] is None and choice.claims[1].bounds == (60, 0, 100, 100)  # no ground in two scenes
    assert choice.dropped == {
        "cloudy": "cloud cover 50% > 20%", "unknown": "no eo:cloud_cover", "elsewhere": "does not overlap the area",
        "no_scl": "no asset for SCL", "small": "not needed: fewer or less cloudy items cover the area",
        "east_cloudier": "not needed: fewer or less cloudy items cover the area"}


def test_cover_reports_what_no_item_covers():
    choice = choose_cover([candidate("west", box(0, 0, 60, 100))], AREA, 20)
    assert [c.id for c in choice.chosen] == ["west"] and choice.uncovered == pytest.approx(0.4)


def test_pair_takes_the_earliest_and_latest_acceptable_dates():
    items = [candidate("early_cloudy", AREA, 30.0, "2020-07-01T14:00:00Z"),
             candidate("early_partial", box(0, 0, 50, 100), 0.0, "2020-07-06T14:00:00Z"),
             candidate("early_b", AREA, 9.0, "2020-07-11T14:00:00Z"),
             candidate("early_a", AREA, 3.0, "2020-07-11T14:00:00Z"),
             candidate("middle", AREA, 0.0, "2021-01-01T14:00:00Z"),
             candidate("late", AREA, 15.0, "2021-08-01T14:00:00Z")]
    choice = choose_pair(items, 20, 0.95)
    assert [(c.id, r) for c, r in zip(choice.chosen, choice.roles)] == [("early_a", "before"), ("late", "after")]
    assert choice.dropped["middle"] == "neither the earliest nor the latest acceptable date"
    assert choice.dropped["early_partial"].startswith("covers 50.0% of the area")
    assert choice.dropped["early_cloudy"] == "cloud cover 30% > 20%"


def test_pair_needs_two_acceptable_dates():
    choice = choose_pair([candidate("only", AREA, 1.0), candidate("only_too", AREA, 2.0)], 20, 0.95)
    assert choice.chosen == () and choice.dropped["only"] == "the only acceptable date: a pair needs two"


def test_offline_marks_on_the_item_or_its_assets():
    rule = {"order:status": ("succeeded",)}
    item = {"properties": {"order:status": "succeeded"}, "assets": {"red": {}, "scl": {"order:status": "orderable"}}}
    assert is_online(item, rule, ["red"]) and not is_online(item, rule, ["red", "scl"])
    assert not is_online({"properties": {"order:status": "orderable"}, "assets": {}}, rule, [])
    assert is_online({"properties": {}, "assets": {}}, rule, []) and is_online(item, {}, ["scl"])


def test_a_window_snaps_to_the_20m_lattice_so_10m_and_20m_bands_align(tmp_path):
    origin = Affine(10, 0, X0, 0, -10, Y0)
    fine = write_geotiff(tmp_path / "B02.tif", np.arange(1, 101 * 99 + 1, dtype=np.uint16).reshape(99, 101), origin,
                         crs=UTM)
    coarse = write_geotiff(tmp_path / "SCL.tif", np.full((50, 51), 4, np.uint8), origin @ Affine.scale(2), crs=UTM)
    bounds = (X0 + 333, Y0 - 1207, X0 + 1234, Y0 + 55)  # reaches 55 m beyond the top of the rasters
    with rasterio.open(fine) as f, rasterio.open(coarse) as c:
        wf, wc = snapped_window(f, UTM, bounds), snapped_window(c, UTM, bounds)
        assert f.window_bounds(wf) == pytest.approx(c.window_bounds(wc))
        assert (wf.width, wf.height) == (2 * wc.width, 2 * wc.height)
        left, bottom, right, top = f.window_bounds(wf)
        assert left <= X0 + 333 and right >= X0 + 1234 and bottom <= Y0 - 1207 and top >= Y0 + 55
        assert all((v - X0) % SNAP_M == 0 for v in (left, right)) and all((Y0 - v) % SNAP_M == 0 for v in (top, bottom))
    # Cut: the window as a GeoTIFF, no data outside the item's claim
    job = SceneJob({"id": "x"}, tmp_path / "scene", {"B02": "blue"}, bounds, UTM, box(X0 + 333, Y0 - 600, X0 + 700, Y0))
    cut(str(fine), job, tmp_path / "cut.tif", {"A": "1"})
    with rasterio.open(tmp_path / "cut.tif") as got, rasterio.open(fine) as f:
        window = snapped_window(f, UTM, bounds)
        assert got.bounds == f.window_bounds(window) and got.tags()["A"] == "1"
        data, source = got.read(1), f.read(1, window=window, boundless=True, fill_value=0)
        inside = ~rasterio.features.geometry_mask([mapping(job.claim)], data.shape, got.transform)
        np.testing.assert_array_equal(data[inside], source[inside])
        assert data[inside].all() and not data[~inside].any() and source[~inside].any()
    # Bounds in another CRS are reprojected first
    lonlat = rasterio.warp.transform_bounds(UTM, "EPSG:4326", X0 + 400, Y0 - 600, X0 + 800, Y0 - 200)
    with rasterio.open(fine) as f:
        left, bottom, right, top = f.window_bounds(snapped_window(f, "EPSG:4326", lonlat))
        assert left <= X0 + 400 and right >= X0 + 800 and bottom <= Y0 - 600 and top >= Y0 - 200


def test_deforestation_window_is_the_prodes_window_of_the_areas_polygons(tmp_path):
    geoms = squares((0, 0), (500, 0), (40_000, 0))
    frame = gpd.GeoDataFrame({"year": [2021, 2020, 2021], "image_date": ["2021-07-20", "2020-08-02", "2021-06-01"],
                              "main_class": ["desmatamento"] * 3, "class_name": ["d2021", "d2020", "d2021"]},
                             geometry=geoms.to_crs("EPSG:4674"))
    frame.to_file(tmp_path / "prodes.gpkg")
    config = AcquireConfig(out_dir=tmp_path / "out", polygons=tmp_path / "prodes.gpkg", app="deforestation",
                           target_year=2021, catalog=CatalogSettings("http://stac", "s2", EARTH_SEARCH))
    changes, prodes = read_polygons(config)
    assert len(changes) == 2  # the 2021 deforestation polygons are what areas are drawn around
    areas = plan_areas(changes, AreaSettings(max_gap_m=1000))
    windows = date_windows(config, areas, prodes)
    assert windows == {"area_000": (date(2020, 7, 3), date(2021, 8, 19)),
                       "area_001": (date(2021, 5, 2), date(2021, 7, 1))}


def test_hrefs_are_signed_as_they_are_read_and_signed_urls_are_redacted(monkeypatch):
    from geoscale_standins.stac import StacStandin
    from planetary_computer.settings import Settings

    with StacStandin() as stac:
        monkeypatch.setenv("PC_SDK_SAS_URL", f"{stac.url}/api/sas/v1/token")
        monkeypatch.setenv("GEOSCALE_TEST_TOKEN", "t0ken-value")
        Settings.get.cache_clear()
        catalog = CatalogSettings("http://stac", "s2", EARTH_SEARCH, sign="planetary_computer",
                                  token_env="GEOSCALE_TEST_TOKEN")
        fetcher = Fetcher(catalog, DownloadSettings())
        href = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/10/U/EG/B02.tif"
        signed = fetcher.href({"href": href})
        Settings.get.cache_clear()
    assert signed.startswith(href + "?") and "sig=" in signed
    assert fetcher.session.headers["Authorization"] == "Bearer t0ken-value"
    assert redact(f"HTTP error code: 500 - {signed} Retrying") == f"HTTP error code: 500 - {href}?<query> Retrying"


def test_an_alternate_href_is_read_where_the_profile_says():
    fetcher = Fetcher(CatalogSettings("http://stac", "s2", EARTH_SEARCH, alternate="https"), DownloadSettings())
    asset = {"href": "s3://eodata/B04.jp2", "alternate": {"https": {"href": "https://download.example/B04/$value"}}}
    assert fetcher.href(asset) == "https://download.example/B04/$value"
    with pytest.raises(RemoteError, match=r"asset s3://eodata/B04.jp2: no alternate href 'https'"):
        fetcher.href({"href": "s3://eodata/B04.jp2"})


def test_a_missing_token_variable_is_bad_input(monkeypatch):
    monkeypatch.delenv("GEOSCALE_NO_SUCH_TOKEN", raising=False)
    with pytest.raises(InputError, match="catalog.token_env: environment variable GEOSCALE_NO_SUCH_TOKEN is not set"):
        Fetcher(CatalogSettings("http://stac", "s2", EARTH_SEARCH, token_env="GEOSCALE_NO_SUCH_TOKEN"),
                DownloadSettings())


# --- bad input, through the command line ---------------------------------------------------------------------

def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep.acquire", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=LIMIT_S, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def outputs(out: Path) -> list[str]:
    """Everything under ``out`` but Hydra's logs."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.relative_to(out).parts[0] != "logs") \
        if out.exists() else []


@pytest.fixture(scope="module")
def burns(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("burns") / "burns.gpkg"
    gpd.GeoDataFrame(geometry=squares((0, 0), (900, 200), crs="EPSG:4326")).to_file(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case, message", [
    ("no crs", r"polygons .*nocrs.gpkg: no CRS"),
    ("empty", r"polygons .*empty.gpkg: empty \(no features\)"),
    ("end before start", r"dates: end 2021-06-01 comes before start 2021-09-30"),
    ("cloud cover", r"max_cloud_cover: must be in \[0, 100\] %, got 120"),
    ("unknown catalog", r"catalog.*nope"),
    ("no target year", r"target_year: not set"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, burns, case, message):
    args = {"polygons": str(burns), "dates.start": "2021-06-01", "dates.end": "2021-09-30",
            "catalog.url": "http://127.0.0.1:9"}  # never reached: the input is checked first
    if case == "no crs":
        args["polygons"] = str(tmp_path / "nocrs.gpkg")
        with pytest.warns(UserWarning, match="crs"):
            gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)]).to_file(args["polygons"])
    elif case == "empty":
        args["polygons"] = str(tmp_path / "empty.gpkg")
        gpd.read_file(burns).iloc[:0].to_file(args["polygons"])
    elif case == "end before start":
        args["dates.start"], args["dates.end"] = "2021-09-30", "2021-06-01"
    elif case == "cloud cover":
        args["max_cloud_cover"] = "120"
    elif case == "unknown catalog":
        args["catalog"] = "nope"
        del args["catalog.url"]
    elif case == "no target year":
        args["app"] = "deforestation"
    out = tmp_path / "out"
    result = run_cli(*(f"{k}={v}" for k, v in args.items()), f"out_dir={out}", "progress=false", cwd=tmp_path)
    assert result.returncode == CONFIG_ERROR_EXIT_CODE, result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: "), result.stderr
    assert __import__("re").search(message, result.stderr), result.stderr
    assert outputs(out) == []


@pytest.mark.slow
def test_stage_areas_writes_and_lists_the_areas_only(tmp_path, burns):
    out = tmp_path / "out"
    result = run_cli(f"polygons={burns}", f"out_dir={out}", "stage=areas", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "area=area_000"
    assert outputs(out) == ["areas.geojson"]
    areas = json.loads((out / "areas.geojson").read_text())["features"]
    assert [f["properties"]["name"] for f in areas] == ["area_000"] and areas[0]["properties"]["crs"] == UTM
    assert shapely.geometry.shape(areas[0]["geometry"]).contains(shapely.union_all(list(gpd.read_file(burns).geometry)))
