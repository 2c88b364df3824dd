"""The STAC API stand-in, driven through pystac-client, requests and rasterio only."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import rasterio
import requests
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from rasterio.windows import Window
from urllib3 import Retry

from geoscale_standins.stac import (COG_MEDIA_TYPE, GEOTIFF_MEDIA_TYPE, StacStandin, describe_asset, sentinel2_item,
                          synthetic_s2_catalog, write_cog, write_plain_tiff)
from helpers import LIMIT_S

COLLECTION = "sentinel-2-l2a"
EPSG = 32610
WEST, NORTH = 500_000.0, 5_000_000.0
SIZE = 512
BLOCK = 128
GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
# (id, sensing time, cloud cover %, footprint offset east in km): two tiles 100 km apart, five dates
ITEMS = [("S2B_A_1", "2021-08-01T19:00:00Z", 5.0, 0), ("S2B_A_2", "2021-08-03T19:00:00Z", 45.0, 0),
         ("S2B_A_3", "2021-08-05T19:00:00Z", 12.5, 0), ("S2B_B_1", "2021-08-03T19:00:00Z", 2.0, 100),
         ("S2B_A_4", "2021-09-20T19:00:00Z", 0.0, 0)]


@pytest.fixture(scope="module")
def cog(tmp_path_factory):
    """A 512 x 512 px uint16 COG (128 px tiles, overviews) in UTM 10N and its pixel values."""
    values = (np.random.default_rng(0).integers(1, 10_000, (SIZE, SIZE))).astype(np.uint16)
    path = write_cog(tmp_path_factory.mktemp("cog") / "B04.tif", values, f"EPSG:{EPSG}",
                     rasterio.Affine(10, 0, WEST, 0, -10, NORTH), nodata=0, blocksize=BLOCK)
    return path, values


def add_items(stac: StacStandin, path, signed: bool = False) -> dict[str, dict]:
    """ITEMS served by ``stac``, each with asset ``red`` -> ``path``: id -> served item."""
    served = {}
    for item_id, when, cloud, east_km in ITEMS:
        footprint = (WEST + east_km * 1000, NORTH - SIZE * 10, WEST + east_km * 1000 + SIZE * 10, NORTH)
        item = sentinel2_item(item_id, footprint, EPSG, when, cloud, assets={"red": describe_asset(path)})
        served[item_id] = stac.add_item(item, {"red": path}, signed=signed)
    return served


@pytest.fixture
def stac(cog):
    with StacStandin(collections=(COLLECTION, "landsat-c2-l2"), page_size=2) as server:
        add_items(server, cog[0])
        yield server


def tile_a_bbox(stac: StacStandin) -> list[float]:
    """A small lon/lat box inside tile A only."""
    west, south, east, north = Client.open(stac.url).get_collection(COLLECTION).get_items("S2B_A_1").__next__().bbox
    return [west + 0.01, south + 0.01, west + 0.02, south + 0.02]


def test_landing_page_conformance_and_collections(stac):
    client = Client.open(stac.url)
    for conformance in ("CORE", "COLLECTIONS", "FEATURES", "ITEM_SEARCH", "QUERY"):
        assert client.conforms_to(ConformanceClasses[conformance])
    assert not client.conforms_to(ConformanceClasses.FILTER)
    assert [c.id for c in client.get_collections()] == [COLLECTION, "landsat-c2-l2"]
    assert client.get_collection(COLLECTION).extent.spatial.bboxes[0][0] < -122
    item = client.get_collection(COLLECTION).get_item("S2B_A_3")
    assert item.properties["eo:cloud_cover"] == 12.5 and item.assets["red"].href.startswith(f"{stac.url}/assets/")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_search_filters_by_bbox_datetime_and_cloud_cover_and_pages(stac, method):
    client = Client.open(stac.url)
    search = client.search(method=method, collections=[COLLECTION], bbox=tile_a_bbox(stac),
                           datetime="2021-08-01/2021-08-31", query={"eo:cloud_cover": {"lte": 20}})
    assert [item.id for item in search.items()] == ["S2B_A_1", "S2B_A_3"]
    everything = client.search(method=method, collections=[COLLECTION], limit=100)
    assert [item.id for item in everything.items()] == ["S2B_A_1", "S2B_A_2", "S2B_B_1", "S2B_A_3", "S2B_A_4"]
    assert everything.matched() == 5
    pages = [r for r in stac.requests if r.path.startswith("/search")][-4:-1]  # the 3 pages of 2 + 2 + 1 items
    assert all(r.method == method for r in pages)
    if method == "GET":
        assert "token=" in pages[1].path and "token=" in pages[2].path
    page = requests.post(f"{stac.url}/search", json={"collections": [COLLECTION], "limit": 100}).json()
    assert page["numberMatched"] == 5 and page["numberReturned"] == 2
    assert page["links"][-1] == {"rel": "next", "href": f"{stac.url}/search", "type": "application/geo+json",
                                 "method": "POST", "body": {"token": "next:2"}, "merge": True}


@pytest.mark.parametrize("criteria, expected", [
    ({"datetime": "../2021-08-03T19:00:00Z"}, ["S2B_A_1", "S2B_A_2", "S2B_B_1"]),
    ({"datetime": "2021-08-04T00:00:00Z/.."}, ["S2B_A_3", "S2B_A_4"]),
    ({"datetime": "2021-08-03T19:00:00Z"}, ["S2B_A_2", "S2B_B_1"]),
    ({"ids": ["S2B_A_4", "S2B_B_1"]}, ["S2B_B_1", "S2B_A_4"]),
    ({"query": {"eo:cloud_cover": {"gt": 2, "lt": 45}}}, ["S2B_A_1", "S2B_A_3"]),
    ({"query": {"eo:cloud_cover": {"eq": 0}}}, ["S2B_A_4"]),
    ({"query": {"s2:processing_baseline": {"eq": "05.10"}, "eo:cloud_cover": {"gte": 45}}}, ["S2B_A_2"]),
])
def test_search_criteria(stac, criteria, expected):
    search = Client.open(stac.url).search(collections=[COLLECTION], **criteria)
    assert [item.id for item in search.items()] == expected


def test_search_by_intersecting_geometry(stac):
    west, south, east, north = tile_a_bbox(stac)
    polygon = {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, south]]]}
    for method in ("GET", "POST"):
        search = Client.open(stac.url).search(method=method, intersects=polygon, datetime="2021-08-03/2021-08-03")
        assert [item.id for item in search.items()] == ["S2B_A_2"]


def test_an_unknown_collection_is_404_while_a_search_naming_it_is_empty(stac):
    client = Client.open(stac.url)
    assert client.get_collection("sentinel-2-l9") is None
    search = client.search(collections=["sentinel-2-l9"])
    assert list(search.items()) == [] and search.matched() == 0
    answer = requests.get(f"{stac.url}/collections/sentinel-2-l9/items")
    assert answer.status_code == 404 and answer.json()["code"] == "NotFoundError"


@pytest.mark.parametrize("parameters", [
    {"limit": "0"}, {"bbox": "1,2,3"}, {"datetime": "yesterday"},
    {"datetime": "2021-09-01T00:00:00Z/2021-08-01T00:00:00Z"}, {"query": json.dumps({"eo:cloud_cover": {"like": 3}})},
    {"token": "page-2"},
])
def test_bad_search_parameters_answer_400(stac, parameters):
    answer = requests.get(f"{stac.url}/search", params=parameters)
    assert answer.status_code == 400 and answer.json()["code"] == "BadRequest"


@pytest.mark.slow
def test_429_with_retry_after_then_success(stac):
    retry = Retry(total=3, backoff_factor=0, status_forcelist=[429, 502, 503, 504], allowed_methods=None,
                  respect_retry_after_header=True)
    client = Client.open(stac.url, stac_io=StacApiIO(max_retries=retry))
    stac.fail("search", 429, times=1, retry_after=1)
    assert len(list(client.search(collections=[COLLECTION], method="POST").items())) == 5
    first, second = [r for r in stac.requests if r.path == "/search"][:2]
    assert (first.status, second.status) == (429, 200) and second.received_at - first.received_at >= 1.0


def test_500_on_search_reaches_the_client_then_the_next_search_succeeds(stac):
    client = Client.open(stac.url)
    stac.fail("search", 500)
    with pytest.raises(APIError) as error:
        list(client.search(collections=[COLLECTION]).items())
    assert error.value.status_code == 500
    assert len(list(client.search(collections=[COLLECTION]).items())) == 5


def test_a_cog_window_is_read_with_range_requests_of_a_fraction_of_the_file(stac, cog):
    path, values = cog
    href = Client.open(stac.url).get_collection(COLLECTION).get_item("S2B_A_1").assets["red"].href
    with rasterio.Env(**GDAL_ENV), rasterio.open(href) as dataset:
        assert dataset.overviews(1) and dataset.block_shapes[0] == (BLOCK, BLOCK)
        window = dataset.read(1, window=Window(0, 0, 64, 64))
    assert np.array_equal(window, values[:64, :64])
    reads = [r for r in stac.requests if r.path.startswith("/assets/")]
    assert {r.method for r in reads} == {"HEAD", "GET"} and all(r.status == 206 for r in reads if r.method == "GET")
    assert stac.bytes_sent() < path.stat().st_size / 4


def test_head_and_byte_ranges(stac, cog):
    path, _ = cog
    href = f"{stac.url}/assets/S2B_A_1/B04.tif"
    size, content = path.stat().st_size, path.read_bytes()
    head = requests.head(href)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == size and head.content == b""
    assert head.headers["Accept-Ranges"] == "bytes" and head.headers["Content-Type"] == COG_MEDIA_TYPE
    for header, status, first, last in [
        ("bytes=10-19", 206, 10, 19), (f"bytes={size - 5}-", 206, size - 5, size - 1),
        ("bytes=-7", 206, size - 7, size - 1), (f"bytes=0-{size + 99}", 206, 0, size - 1),
        ("bytes=0-1,5-6", 200, 0, size - 1),  # several ranges: the whole file, as RFC 9110 allows
    ]:
        answer = requests.get(href, headers={"Range": header})
        assert answer.status_code == status and answer.content == content[first:last + 1], header
        if status == 206:
            assert answer.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    beyond = requests.get(href, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"
    assert requests.get(f"{stac.url}/assets/S2B_A_1/B05.tif").status_code == 404


def test_drop_after_cuts_one_download_which_resumes_with_a_range(stac, cog):
    path, _ = cog
    href = f"{stac.url}/assets/S2B_A_2/B04.tif"
    stac.drop_after("S2B_A_2/B04.tif", 10_000)
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match=r"IncompleteRead\(10000 bytes read"):
        requests.get(href).content
    rest = requests.get(href, headers={"Range": "bytes=10000-"})
    assert rest.status_code == 206 and path.read_bytes()[10_000:] == rest.content
    stac.drop_after("B04.tif", 10_000, reset=True)
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="ConnectionResetError"):
        requests.get(href).content
    assert requests.get(href).content == path.read_bytes()


def test_gdal_fails_on_a_dropped_connection_and_reads_again_only_uncached(stac, cog):
    """GDAL does not retry a cut transfer and remembers the failure per URL: a second open in the same process
    fails without a request, unless CPL_VSIL_CURL_NON_CACHED covers the URL."""
    _, values = cog
    href = f"{stac.url}/assets/S2B_A_3/B04.tif"
    stac.drop_after("B04.tif", 20_000)
    with rasterio.Env(**GDAL_ENV, CPL_VSIL_CURL_NON_CACHED=f"/vsicurl/{stac.url}/"):
        with pytest.raises(rasterio.errors.RasterioIOError), rasterio.open(href) as dataset:
            dataset.read(1)
        with rasterio.open(href) as dataset:
            assert np.array_equal(dataset.read(1), values)


def test_truncate_serves_a_consistent_file_shorter_than_its_item_says(stac, cog):
    path, _ = cog
    item = Client.open(stac.url).get_collection(COLLECTION).get_item("S2B_A_4")
    stac.truncate("S2B_A_4/B04.tif", 5_000)
    href = item.assets["red"].href
    assert int(requests.head(href).headers["Content-Length"]) == 5_000 != item.assets["red"].extra_fields["file:size"]
    assert requests.get(href).content == path.read_bytes()[:5_000]
    assert len(requests.get(f"{stac.url}/assets/S2B_A_1/B04.tif").content) == path.stat().st_size


def test_signed_assets_need_a_planetary_computer_sas_token(cog, monkeypatch):
    import planetary_computer
    from planetary_computer.settings import Settings

    with StacStandin(collections=(COLLECTION,)) as stac:
        href = add_items(stac, cog[0], signed=True)["S2B_A_1"]["assets"]["red"]["href"]
        monkeypatch.setenv("PC_SDK_SAS_URL", f"{stac.url}/api/sas/v1/token")
        monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", "key-from-env")
        Settings.get.cache_clear()  # the library reads its settings once per process
        try:
            token = planetary_computer.sas.get_token("sentinel2l2a01", "sentinel2-l2")
        finally:
            Settings.get.cache_clear()
        assert requests.get(href).status_code == 409
        assert requests.get(f"{href}?sig=forged").status_code == 403
        with rasterio.Env(**GDAL_ENV), rasterio.open(token.sign(href).href) as dataset:
            assert dataset.read(1, window=Window(0, 0, 8, 8)).shape == (8, 8)
        token_request = next(r for r in stac.requests if r.path.startswith("/api/sas/"))
        assert token_request.headers["ocp-apim-subscription-key"] == "key-from-env"


def test_asset_credentials_are_required_and_recorded(cog):
    with StacStandin(asset_authorization="Bearer t0ken") as stac:
        href = add_items(stac, cog[0])["S2B_A_1"]["assets"]["red"]["href"]
        denied = requests.get(href)
        assert denied.status_code == 401 and denied.headers["WWW-Authenticate"].startswith("Bearer")
        with rasterio.Env(**GDAL_ENV, GDAL_HTTP_HEADERS="Authorization: Bearer t0ken"), rasterio.open(href) as dataset:
            assert dataset.width == SIZE
        assert stac.requests[-1].headers["authorization"] == "Bearer t0ken" and stac.requests[-1].status == 206


def test_a_stopped_standin_is_unreachable(cog):
    with StacStandin() as stac:
        url = stac.url
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, timeout=LIMIT_S)


def test_plain_tiff_is_not_cloud_optimized(tmp_path, cog):
    _, values = cog
    path = write_plain_tiff(tmp_path / "B04.tif", values, f"EPSG:{EPSG}", rasterio.Affine(10, 0, WEST, 0, -10, NORTH))
    spec = describe_asset(path)
    assert spec.media_type == GEOTIFF_MEDIA_TYPE and spec.file_size == path.stat().st_size
    with rasterio.open(path) as dataset:
        assert not dataset.overviews(1) and dataset.block_shapes[0][1] == SIZE  # strips of whole rows


def test_synthetic_burned_area_catalog_serves_scene_folders_the_prep_reads(tmp_path):
    from data_prep.scenes import find_scene
    from data_prep.sentinel2 import read_stac_item

    catalog = synthetic_s2_catalog(tmp_path / "made", app="burned_area", n_products=1, size=128, blocksize=128)
    (product,) = catalog.products
    assert catalog.polygons.is_file() and set(product.assets) == {"blue", "green", "red", "nir", "scl", "visual",
                                                                   "swir16", "thumbnail"}
    with StacStandin() as stac:
        catalog.serve(stac)
        item = next(Client.open(stac.url).search(collections=[COLLECTION]).items())
        scene = tmp_path / "scene"
        scene.mkdir()
        for key in ("blue", "green", "red", "nir", "scl", "visual"):
            asset = item.assets[key]
            assert asset.media_type == COG_MEDIA_TYPE
            content = requests.get(asset.href).content
            assert len(content) == asset.extra_fields["file:size"]
            (scene / asset.href.rsplit("/", 1)[1]).write_bytes(content)
    (scene / f"{item.id}.json").write_text(json.dumps(item.to_dict()))
    found = find_scene(scene, ["B04", "B03", "B02", "TCI"])
    with rasterio.open(found.bands["B04"]) as dataset, rasterio.open(product.source / "B04.tif") as source:
        assert dataset.crs.to_epsg() == product.item["properties"]["proj:epsg"]
        assert np.array_equal(dataset.read(), source.read())
    # pystac migrates the projection extension 1.1 the server sent to 2.0: proj:epsg becomes proj:code
    assert item.properties["proj:code"] == f"EPSG:{product.item['properties']['proj:epsg']}"
    assert read_stac_item(scene / f"{item.id}.json")[:2] == ("05.10", True)


def test_synthetic_deforestation_catalog_has_a_pair_per_area_with_offsets_as_the_mtd(tmp_path):
    from data_prep.sentinel2 import Sentinel2Settings, open_product

    catalog = synthetic_s2_catalog(tmp_path / "made", app="deforestation", n_products=1, size=128, blocksize=128)
    before, after = catalog.products
    assert [p.item["properties"]["s2:processing_baseline"] for p in catalog.products] == ["02.14", "05.00"]
    assert before.item["geometry"] == after.item["geometry"] and before.item["id"] != after.item["id"]
    for product in catalog.products:
        folder = tmp_path / product.item["id"]
        shutil.copytree(product.assets["red"].parent, folder)
        (folder / f"{product.item['id']}.json").write_text(json.dumps(product.item))
        from_item = open_product(folder, Sentinel2Settings())
        from_mtd = open_product(product.source, Sentinel2Settings())
        assert from_item.offsets == from_mtd.offsets and from_item.sensing_date == from_mtd.sensing_date
        with rasterio.open(folder / "SCL.tif") as dataset:
            assert dataset.res == (20.0, 20.0) and dataset.dtypes[0] == "uint8"


def test_asset_latency_and_bandwidth_slow_the_answers(cog):
    with StacStandin(asset_latency_s=0.05, asset_bandwidth_bytes_per_s=1e6) as stac:
        href = add_items(stac, cog[0])["S2B_A_1"]["assets"]["red"]["href"]
        start = time.monotonic()
        assert len(requests.get(href, headers={"Range": "bytes=0-99999"}).content) == 100_000
        assert time.monotonic() - start >= 0.05 + 0.1
