"""Acquisition against the local STAC stand-in: polygons -> scene folders -> the preps; every fault of the issue
(429 with Retry-After, 500 on search, a dropped connection, a size mismatch, no item, an unreachable catalogue),
offline items, resuming, and credentials that stay out of logs and outputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds

from apps.foundation.chips import ChipDataset
from apps.foundation.errors import CONFIG_ERROR_EXIT_CODE, NOT_READY_EXIT_CODE, InputError
from data_prep.acquire import REMOTE_ERROR_EXIT_CODE, AcquireConfig, acquire
from data_prep.areas import AreaSettings
from data_prep.stac import CatalogSettings, DownloadSettings, RemoteError
from geoscale_standins.stac import StacStandin, synthetic_s2_catalog
from helpers import LIMIT_S

EARTH_SEARCH = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "SCL": "scl", "TCI": "visual"}
FAST = DownloadSettings(retries=2, backoff_s=0.05, timeout_s=10, chunk_bytes=4096)
AUGUST = {"start": date(2021, 8, 1), "end": date(2021, 8, 31)}
pytestmark = pytest.mark.slow  # a stand-in, synthetic catalogs and subprocesses: about 14 s

CLI_FAST = ["download.retries=1", "download.backoff_s=0.05", "progress=false"]


@pytest.fixture(scope="module")
def burns(tmp_path_factory):
    """Three synthetic burned-area scenes of 256 px as COG items, and their burn polygons. Read-only."""
    return synthetic_s2_catalog(tmp_path_factory.mktemp("cog"), app="burned_area", n_products=3, size=256)


@pytest.fixture(scope="module")
def plain_burns(tmp_path_factory):
    """The same scenes (same item ids) as plain GeoTIFFs, which must be downloaded whole. Read-only."""
    return synthetic_s2_catalog(tmp_path_factory.mktemp("plain"), app="burned_area", n_products=3, size=256, cog=False)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Two synthetic deforestation areas, two dates each, and PRODES-like polygons. Read-only."""
    return synthetic_s2_catalog(tmp_path_factory.mktemp("pairs"), app="deforestation", n_products=2, size=256)


def config_for(stac: StacStandin, catalog, out: Path, **changes) -> AcquireConfig:
    settings = {"out_dir": out, "polygons": catalog and catalog.polygons, "app": "burned_area",
                "catalog": CatalogSettings(stac.url, "sentinel-2-l2a", EARTH_SEARCH), "areas": AreaSettings(margin_m=0),
                "download": FAST, "progress": False, **AUGUST}
    return AcquireConfig(**{**settings, **changes})


def asset_requests(stac: StacStandin) -> list:
    return [r for r in stac.requests if r.path.startswith("/assets/")]


def assert_window_of_source(band_file: Path, source: Path) -> None:
    """``band_file`` holds the pixels of ``source`` at the same place (0 where it reaches beyond ``source``)."""
    with rasterio.open(band_file) as got, rasterio.open(source) as src:
        assert got.crs == src.crs and got.res == src.res
        window = from_bounds(*got.bounds, transform=src.transform).round_offsets().round_lengths()
        np.testing.assert_array_equal(got.read(), src.read(window=window, boundless=True, fill_value=0))


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep.acquire", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=LIMIT_S, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def profile_dir(tmp_path: Path, stac: StacStandin, **fields) -> Path:
    """A config folder with catalog profile ``standin`` for ``stac`` (added with hydra.searchpath)."""
    profile = {"name": "standin", "url": stac.url, "collection": "sentinel-2-l2a", "assets": EARTH_SEARCH,
               "alternate": None, "sign": None, "token_env": None, "online": {}, **fields}
    (tmp_path / "profiles" / "catalog").mkdir(parents=True, exist_ok=True)
    (tmp_path / "profiles" / "catalog" / "standin.yaml").write_text(json.dumps(profile))
    return tmp_path / "profiles"


def one_line_error(result: subprocess.CompletedProcess) -> str:
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("error: "), result.stderr
    return message


# --- end to end ---------------------------------------------------------------------------------------------

def test_burn_polygons_to_scene_folders_to_a_chip_dataset(tmp_path, burns):
    from data_prep.burned_area import BurnChipSettings, PrepConfig, prepare
    from data_prep.split import SplitSettings

    out = tmp_path / "acquired"
    with StacStandin(page_size=2) as stac:
        burns.serve(stac)
        areas = acquire(config_for(stac, burns, out))
    assert [a.name for a in areas] == ["area_000", "area_001", "area_002"]
    scenes = sorted(p.name for p in (out / "scenes").iterdir())
    assert len(scenes) == 3 and all(s.startswith("area_") and "__S2B_" in s for s in scenes)
    for product in burns.products:
        folder = next((out / "scenes").glob(f"*__{product.item['id']}"))
        assert sorted(p.name for p in folder.iterdir()) == ["B02.tif", "B03.tif", "B04.tif",
                                                            f"{product.item['id']}.json", "TCI.tif"]
        assert json.loads((folder / f"{product.item['id']}.json").read_text())["properties"]["s2:processing_baseline"]
        for band in ("B04", "TCI"):
            assert_window_of_source(folder / f"{band}.tif", product.source / f"{band}.tif")
    record = json.loads((out / "areas" / "area_000" / "acquisition.json").read_text())
    assert record["status"] == "complete" and len(record["chosen"]) == 1 and record["chosen"][0]["role"] == "scene"
    assert record["date_window"] == ["2021-08-01", "2021-08-31"] and len(record["candidates"]) >= 1
    prepare(PrepConfig(out_dir=tmp_path / "chips", scenes_dir=out / "scenes", polygons=burns.polygons,
                       chip=BurnChipSettings(size=64, overlap=0.25, min_class_fraction=0.1, max_nodata_fraction=0.1),
                       split=SplitSettings(method="scenes"), progress=False))
    dataset = ChipDataset(tmp_path / "chips")
    assert len(dataset.records) > 0 and set(dataset.index["scenes"]) == set(scenes)


def test_a_cog_is_read_by_its_window_only(tmp_path):
    """A 1024 px tile and a 600 m area in its corner: a small part of its bytes travel."""
    import geopandas as gpd
    from shapely.geometry import box

    from geoscale_standins.stac import describe_asset, sentinel2_item, write_cog

    west, north, crs = 500_000.0, 5_500_000.0, "EPSG:32610"
    transform = rasterio.Affine(10, 0, west, 0, -10, north)
    values = np.random.default_rng(0).integers(1, 10_000, (3, 1024, 1024)).astype(np.uint16)
    files = {key: write_cog(tmp_path / f"{band}.tif", values[i], crs, transform, nodata=0, blocksize=128)
             for i, (band, key) in enumerate([("B02", "blue"), ("B03", "green"), ("B04", "red")])}
    files["visual"] = write_cog(tmp_path / "TCI.tif", (values // 40).astype(np.uint8), crs, transform, nodata=0,
                                blocksize=128)
    item = sentinel2_item(None, (west, north - 10240, west + 10240, north), 32610, "2021-08-10T19:00:00Z", 1.0,
                          assets={key: describe_asset(path) for key, path in files.items()})
    polygons = tmp_path / "burns.gpkg"
    gpd.GeoDataFrame(geometry=[box(west + 1000, north - 1600, west + 1600, north - 1000)], crs=crs).to_file(polygons)
    with StacStandin() as stac:
        stac.add_item(item, files)
        acquire(config_for(stac, None, tmp_path / "out", polygons=polygons))
        sent = stac.bytes_sent()
    folder = next((tmp_path / "out" / "scenes").iterdir())
    assert_window_of_source(folder / "B04.tif", files["red"])
    with rasterio.open(folder / "B04.tif") as got:
        assert got.shape == (60, 60)
    assert sent < 0.1 * sum(path.stat().st_size for path in files.values())


def test_prodes_polygons_to_a_deforestation_pair_the_prep_reads(tmp_path, pairs):
    from data_prep.deforestation import PairChipSettings, PrepConfig, prepare

    out = tmp_path / "acquired"
    with StacStandin(page_size=2) as stac:
        pairs.serve(stac)
        areas = acquire(config_for(stac, pairs, out, app="deforestation", target_year=2021, start=None, end=None))
    assert [a.name for a in areas] == ["area_000", "area_001"]
    by_id = {p.item["id"]: p for p in pairs.products}
    for area in areas:
        record = json.loads((out / "areas" / area.name / "acquisition.json").read_text())
        assert [c["role"] for c in record["chosen"]] == ["before", "after"] and record["status"] == "complete"
        start, end = (date.fromisoformat(d) for d in record["date_window"])
        for chosen in record["chosen"]:
            folder = out / "areas" / area.name / chosen["role"]
            assert sorted(p.stem for p in folder.glob("*.tif")) == ["B02", "B03", "B04", "B08", "SCL"]
            assert start <= date.fromisoformat(chosen["datetime"][:10]) <= end
            for band in ("B08", "SCL"):
                assert_window_of_source(folder / f"{band}.tif", by_id[chosen["id"]].source / f"{band}.tif")
    config = PrepConfig(out_dir=tmp_path / "chips", areas_dir=out / "areas", polygons=pairs.polygons, target_year=2021,
                        chip=PairChipSettings(size=64, overlap=0.25, min_change_fraction=0.1, max_ignore_fraction=0.5))
    for area in areas:
        prepare(config, stage="prepare", area=area.name)
        prepared = json.loads((tmp_path / "chips" / "work" / area.name / "prepared.json").read_text())
        assert {d: p["baseline"] for d, p in prepared["products"].items()} == {"before": "02.14", "after": "05.00"}
        assert prepared["change_fraction"] > 0


def test_a_rerun_skips_complete_areas_and_another_band_set_fetches_only_new_bands(tmp_path, burns):
    out = tmp_path / "acquired"
    with StacStandin(page_size=2) as stac:
        burns.serve(stac)
        config = config_for(stac, burns, out)
        acquire(config, area="area_001")
        assert len(list((out / "scenes").iterdir())) == 1
        before = len(stac.requests)
        acquire(config, area="area_001")
        again = [r.path for r in stac.requests[before:]]
        assert again and not [p for p in again if p.startswith(("/search", "/assets/"))]  # nothing searched or fetched
        before = len(stac.requests)
        acquire(replace(config, bands=("B02", "B03", "B04", "B08", "TCI")), area="area_001")
        assert {Path(r.path).name for r in stac.requests[before:] if r.path.startswith("/assets/")} == {"B08.tif"}
    folder = next((out / "scenes").iterdir())
    assert sorted(p.name for p in folder.glob("*.tif")) == ["B02.tif", "B03.tif", "B04.tif", "B08.tif", "TCI.tif"]


# --- faults -------------------------------------------------------------------------------------------------

def test_429_with_retry_after_then_success(tmp_path, plain_burns):
    with StacStandin() as stac:
        plain_burns.serve(stac)
        stac.fail("search", 429, retry_after=1)
        acquire(config_for(stac, plain_burns, tmp_path / "search"), area="area_000")
        stac.fail("asset", 429, retry_after=1)
        acquire(config_for(stac, plain_burns, tmp_path / "asset"), area="area_000")
    for route in ("/search", "/assets/"):
        answered = sorted((r for r in stac.requests if r.path.startswith(route)), key=lambda r: r.received_at)
        first = next(r for r in answered if r.status == 429)
        second = next(r for r in answered if r.path == first.path and r.received_at > first.received_at)
        assert second.status == 200 and second.received_at - first.received_at >= 1.0  # Retry-After honoured
    assert len(list((tmp_path / "asset" / "scenes").iterdir())) == 1


def test_500_on_search_is_retried_and_one_clear_error_when_it_persists(tmp_path, burns):
    with StacStandin() as stac:
        burns.serve(stac)
        stac.fail("search", 500, times=2)
        acquire(config_for(stac, burns, tmp_path / "transient"), area="area_000")
        stac.fail("search", 500, times=10)
        with pytest.raises(RemoteError, match=r"catalog http://127.0.0.1:\d+: search failed, HTTP 500 on every retry$"):
            acquire(config_for(stac, burns, tmp_path / "persistent"), area="area_000")
    assert (tmp_path / "transient" / "areas" / "area_000" / "acquisition.json").is_file()
    assert not (tmp_path / "persistent" / "scenes").exists()


@pytest.mark.parametrize("catalog, reset", [("plain", False), ("plain", True), ("cog", True)])
def test_a_connection_dropped_mid_download_is_resumed(tmp_path, burns, plain_burns, catalog, reset, caplog):
    served = plain_burns if catalog == "plain" else burns
    with StacStandin() as stac:
        served.serve(stac)
        stac.drop_after("B04.tif", 20_000, reset=reset)
        acquire(config_for(stac, served, tmp_path / "out"), area="area_000")
    gets = sorted((r for r in asset_requests(stac) if r.path.endswith("/B04.tif") and r.method == "GET"),
                  key=lambda r: r.received_at)
    assert gets[0].bytes_sent <= 20_000 and "B04 (red)" in caplog.text and "attempt 1 failed" in caplog.text
    if catalog == "plain" and not reset:  # the rest was asked for from the last whole chunk written
        assert gets[1].headers["range"] == f"bytes={20_000 // 4096 * 4096}-" and gets[1].status == 206
    folder = next((tmp_path / "out" / "scenes").iterdir())
    product = next(p for p in served.products if p.item["id"] in folder.name)
    assert_window_of_source(folder / "B04.tif", product.source / "B04.tif")


def test_an_asset_whose_size_does_not_match_fails_and_nothing_looks_complete(tmp_path, plain_burns):
    out = tmp_path / "out"
    with StacStandin() as stac:
        plain_burns.serve(stac)
        stac.truncate("B03.tif", 10_000)
        with pytest.raises(RemoteError, match=r"asset B03 \(green\) of item S2B_\w+ \(http://.*/B03.tif\): 10000 bytes "
                                              r"downloaded, the catalogue's file:size says \d+"):
            acquire(config_for(stac, plain_burns, out), area="area_000")
    assert not any(p.is_dir() and not p.name.startswith(".") for p in (out / "scenes").iterdir())
    assert not list(out.rglob("B03*"))  # not even a partial download
    assert json.loads((out / "areas" / "area_000" / "acquisition.json").read_text())["status"] == "fetching"
    with StacStandin() as stac:  # the server is fixed: a re-run fetches only what is missing
        plain_burns.serve(stac)
        acquire(config_for(stac, plain_burns, out), area="area_000")
        assert {Path(r.path).name for r in asset_requests(stac)} == {"B03.tif"}
    assert json.loads((out / "areas" / "area_000" / "acquisition.json").read_text())["status"] == "complete"


def test_no_item_in_the_window_is_one_clear_error_and_recorded(tmp_path, burns):
    out = tmp_path / "out"
    with StacStandin() as stac:
        burns.serve(stac)
        with pytest.raises(InputError, match=r"area area_000: no item in sentinel-2-l2a of http://127.0.0.1:\d+ within "
                                             r"2019-08-01..2019-08-31 at <= 20% cloud \(0 found; see .*\)$"):
            acquire(config_for(stac, burns, out, start=date(2019, 8, 1), end=date(2019, 8, 31)), area="area_000")
    record = json.loads((out / "areas" / "area_000" / "acquisition.json").read_text())
    assert record["status"] == "no_items" and record["candidates"] == []


def test_an_unreachable_catalogue_is_one_line_exit_1(tmp_path, burns):
    with StacStandin() as stac:
        url = stac.url
    out = tmp_path / "out"
    result = run_cli(f"polygons={burns.polygons}", f"out_dir={out}", f"catalog.url={url}", "dates.start=2021-08-01",
                     "dates.end=2021-08-31", *CLI_FAST, cwd=tmp_path)
    assert result.returncode == REMOTE_ERROR_EXIT_CODE, result.stderr
    assert one_line_error(result) == f"error: catalog {url}: unreachable ([Errno 111] Connection refused)"
    assert sorted(p.name for p in out.iterdir()) == ["logs"]


def test_a_collection_the_catalogue_lacks_is_bad_input(tmp_path, burns):
    out = tmp_path / "out"
    with StacStandin() as stac:
        result = run_cli(f"polygons={burns.polygons}", f"out_dir={out}", f"catalog.url={stac.url}",
                         "catalog.collection=sentinel-2-l1c", "dates.start=2021-08-01", "dates.end=2021-08-31",
                         *CLI_FAST, cwd=tmp_path)
    assert result.returncode == CONFIG_ERROR_EXIT_CODE, result.stderr
    assert one_line_error(result) == (f"error: catalog.collection: 'sentinel-2-l1c' is not a collection of {stac.url} "
                                      "(it has: sentinel-2-l2a)")
    assert sorted(p.name for p in out.iterdir()) == ["logs"]


def test_offline_items_exit_3_with_their_ids_and_a_rerun_fetches_them_once_online(tmp_path, burns):
    args = [f"polygons={burns.polygons}", f"out_dir={tmp_path / 'out'}", "catalog=standin", "dates.start=2021-08-01",
            "dates.end=2021-08-31", "areas.margin_m=0", *CLI_FAST]
    offline = burns.products[1].item["id"]
    with StacStandin() as stac:
        for product in burns.products:
            status = "orderable" if product.item["id"] == offline else "succeeded"
            stac.add_item({**product.item, "properties": {**product.item["properties"], "order:status": status}},
                          product.assets)
        searchpath = f"hydra.searchpath=[file://{profile_dir(tmp_path, stac, online={'order:status': ['succeeded']})}]"
        result = run_cli(*args, searchpath, cwd=tmp_path)
        assert result.returncode == NOT_READY_EXIT_CODE, result.stderr
        expected = f"error: items not online yet in {stac.url} \\(long-term archive\\): area_00\\d: {offline}; re-run"
        assert re.fullmatch(expected + " once they are online", one_line_error(result))
        assert len(list((tmp_path / "out" / "scenes").iterdir())) == 2  # the other areas are fetched
        burns.serve(stac)  # the archive restored it: now online
        result = run_cli(*args, searchpath, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out" / "scenes").iterdir())) == 3
    fetched = {Path(r.path).parent.name for r in asset_requests(stac)}
    assert offline in fetched


def test_a_multirun_over_areas_uses_the_token_by_reference_and_never_writes_it(tmp_path, burns, plain_burns):
    token = "s3cr3t-t0ken-for-the-test"
    out = tmp_path / "out"
    with StacStandin(asset_authorization=f"Bearer {token}") as stac:
        burns.serve(stac)
        stac.add_item(plain_burns.products[0].item, plain_burns.products[0].assets)  # area_000: downloaded whole
        searchpath = f"hydra.searchpath=[file://{profile_dir(tmp_path, stac, token_env='GEOSCALE_STAC_TOKEN')}]"
        result = run_cli("-m", "area=area_000,area_002", f"polygons={burns.polygons}", f"out_dir={out}",
                         "catalog=standin", searchpath, "dates.start=2021-08-01", "dates.end=2021-08-31",
                         "areas.margin_m=0", *CLI_FAST, cwd=tmp_path, env={"GEOSCALE_STAC_TOKEN": token})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name.split("__")[0] for p in (out / "scenes").iterdir()) == ["area_000", "area_002"]
    assert {r.status for r in asset_requests(stac)} <= {200, 206}
    assert token not in result.stdout + result.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
