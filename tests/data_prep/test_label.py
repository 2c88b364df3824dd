"""Label stage: rasterized area, reprojection, nodata, polygon file errors, real raster/vector pairs."""

from __future__ import annotations

import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio import Affine
from shapely.geometry import LineString, Point, box

from apps.foundation.errors import InputError
from helpers.rasters import SAMPLES, write_geotiff
from apps.foundation.chips import IGNORE_INDEX
from data_prep.label import LabelSettings, label_raster, read_polygons
from data_prep.scenes import NoChips

UTM = "EPSG:32610"
WEST, NORTH, PIXEL = 500_000.0, 5_600_000.0, 10.0
TRANSFORM = Affine(PIXEL, 0, WEST, 0, -PIXEL, NORTH)


def write_reference(path: Path, width: int = 100, height: int = 80, nodata_rows: int = 0) -> Path:
    """A 3-band uint8 raster like normalized.tif: valid 1..255, first ``nodata_rows`` rows nodata."""
    data = np.full((3, height, width), 100, np.uint8)
    data[:, :nodata_rows] = 0
    return write_geotiff(path, data, TRANSFORM, crs=UTM)


def write_polygons(path: Path, geoms, crs=UTM, driver: str | None = None) -> Path:
    gpd.GeoDataFrame({"fire_id": list(range(len(geoms)))}, geometry=list(geoms), crs=crs).to_file(
        path, driver=driver, engine="pyogrio")
    return path


def read_mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        assert (src.dtypes[0], src.nodata, src.profile["tiled"]) == ("uint8", IGNORE_INDEX, True)
        return src.read(1)


def test_pixel_aligned_square_burns_exactly_its_pixels(tmp_path):
    ref = write_reference(tmp_path / "ref.tif")
    square = box(WEST + 200, NORTH - 500, WEST + 400, NORTH - 300)    # cols 20..39, rows 30..49
    polygons = write_polygons(tmp_path / "p.gpkg", [square])
    fraction = label_raster(polygons, ref, tmp_path / "label.tif", show_progress=False)
    mask = read_mask(tmp_path / "label.tif")
    expected = np.zeros_like(mask)
    expected[30:50, 20:40] = 1
    np.testing.assert_array_equal(mask, expected)
    assert fraction == pytest.approx(400 / 8000)


def test_mask_area_matches_polygon_area(tmp_path):
    ref = write_reference(tmp_path / "ref.tif")
    disc = Point(WEST + 480, NORTH - 410).buffer(270, quad_segs=64)
    polygons = write_polygons(tmp_path / "p.geojson", [disc], driver="GeoJSON")
    label_raster(polygons, ref, tmp_path / "label.tif", show_progress=False)
    burned_area = np.count_nonzero(read_mask(tmp_path / "label.tif") == 1) * PIXEL * PIXEL
    assert burned_area == pytest.approx(disc.area, rel=0.02)


def test_polygons_in_another_crs_are_reprojected(tmp_path):
    ref = write_reference(tmp_path / "ref.tif")
    shapes = [Point(WEST + 300, NORTH - 300).buffer(180), box(WEST + 600, NORTH - 700, WEST + 900, NORTH - 450)]
    label_raster(write_polygons(tmp_path / "utm.gpkg", shapes), ref, tmp_path / "utm.tif", show_progress=False)
    in_4326 = gpd.GeoSeries(shapes, crs=UTM).to_crs("EPSG:4326")
    in_3857 = gpd.GeoSeries(shapes, crs=UTM).to_crs("EPSG:3857")
    shapefile = write_polygons(tmp_path / "wgs84.shp", list(in_4326), crs="EPSG:4326")
    label_raster(shapefile, ref, tmp_path / "wgs84.tif", show_progress=False)
    label_raster(write_polygons(tmp_path / "merc.gpkg", list(in_3857), crs="EPSG:3857"), ref,
                 tmp_path / "merc.tif", show_progress=False)
    utm = read_mask(tmp_path / "utm.tif")
    for other in ("wgs84.tif", "merc.tif"):
        differing = np.count_nonzero(read_mask(tmp_path / other) != utm)
        assert differing <= 0.005 * np.count_nonzero(utm), other


def test_raster_nodata_becomes_ignore_index(tmp_path):
    ref = write_reference(tmp_path / "ref.tif", nodata_rows=10)
    polygons = write_polygons(tmp_path / "p.gpkg", [box(WEST, NORTH - 300, WEST + 300, NORTH)])
    fraction = label_raster(polygons, ref, tmp_path / "label.tif", show_progress=False)
    mask = read_mask(tmp_path / "label.tif")
    assert np.all(mask[:10] == IGNORE_INDEX)
    assert np.all(mask[10:30, :30] == 1) and np.all(mask[30:] != IGNORE_INDEX)
    assert fraction == pytest.approx(20 * 30 / (70 * 100))


def test_all_touched_burns_more(tmp_path):
    ref = write_reference(tmp_path / "ref.tif")
    polygons = write_polygons(tmp_path / "p.gpkg", [Point(WEST + 500, NORTH - 400).buffer(95)])
    label_raster(polygons, ref, tmp_path / "centre.tif", show_progress=False)
    label_raster(polygons, ref, tmp_path / "touched.tif", LabelSettings(all_touched=True), show_progress=False)
    assert np.count_nonzero(read_mask(tmp_path / "touched.tif")) > np.count_nonzero(read_mask(tmp_path / "centre.tif"))


@pytest.mark.parametrize("case, message", [
    ("empty", "empty"),
    ("no_crs", "no CRS"),
    ("junk", "unreadable"),
    ("missing", "file not found"),
    ("outside", "no polygon overlaps the raster"),
    ("lines", "holds no polygon geometry"),
    ("class raster", "a raster; labels are read from polygon files (GeoPackage, Shapefile, GeoJSON), not from class rasters"),
])
def test_bad_polygon_files(tmp_path, case, message):
    ref = write_reference(tmp_path / "ref.tif")
    path = tmp_path / "p.gpkg"
    if case == "empty":
        write_polygons(path, [])
    elif case == "no_crs":
        path = write_polygons(tmp_path / "p.shp", [box(WEST, NORTH - 100, WEST + 100, NORTH)])
        path.with_suffix(".prj").unlink()
    elif case == "junk":
        path.write_bytes(b"\x00not a geopackage" * 10)
    elif case == "outside":
        write_polygons(path, [box(WEST - 5000, NORTH, WEST - 4000, NORTH + 1000)])
    elif case == "lines":
        write_polygons(path, [LineString([(WEST, NORTH - 10), (WEST + 500, NORTH - 500)])])
    elif case == "class raster":  # PRODES ships its yearly classes as a uint8 raster too
        path = write_reference(tmp_path / "prodes_classes.tif")
    with pytest.raises(InputError, match=re.escape(message)) as err:
        label_raster(path, ref, tmp_path / "label.tif", show_progress=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, NoChips) == (case == "outside")       # a scene without burns, not bad input
    assert not (tmp_path / "label.tif").exists()


def test_polygons_near_but_over_no_pixel_centre_yield_no_chips(tmp_path):
    ref = write_reference(tmp_path / "ref.tif")
    sliver = write_polygons(tmp_path / "p.gpkg", [box(WEST + 101, NORTH - 109, WEST + 104, NORTH - 101)])
    with pytest.raises(NoChips, match=r"no polygon covers a pixel centre of raster .*ref.tif \(1 lie near it"):
        label_raster(sliver, ref, tmp_path / "label.tif", show_progress=False)


def _sample(*parts: str) -> Path:
    path = SAMPLES.joinpath(*parts)
    if not path.exists():
        pytest.skip("real samples not available")
    return path


@pytest.mark.parametrize("raster, polygons, burned", [
    (("raster_vector_pairs", "eolearn_slovenia_utm33n", "import-tiff-test1.tiff"),
     ("raster_vector_pairs", "eolearn_slovenia_utm33n", "LULC.gpkg"), 0.385),
    (("raster_vector_pairs", "spacenet_solaris_utm16n", "sample_geotiff.tif"),
     ("raster_vector_pairs", "spacenet_solaris_utm16n", "geotiff_labels.geojson"), 0.042),
])
def test_real_raster_vector_pairs(tmp_path, raster, polygons, burned):
    label_raster(_sample(*polygons), _sample(*raster), tmp_path / "label.tif", show_progress=False)
    mask = read_mask(tmp_path / "label.tif")
    assert np.count_nonzero(mask == 1) / mask.size == pytest.approx(burned, abs=0.01)


@pytest.mark.parametrize("vectors", [("vectors", "mtbs_ynp_fires_1984_2022.gpkg"),
                                     ("vectors", "fiona_coutwildrnp", "coutwildrnp.shp")])
def test_real_polygons_outside_every_sample_raster(tmp_path, vectors):
    raster = _sample("sentinel2_l2a_29RKH", "B04.tif")
    with rasterio.open(raster) as src:
        with pytest.raises(InputError, match="no polygon overlaps the raster"):
            read_polygons(_sample(*vectors), src.crs, tuple(src.bounds))


def test_real_polygons_are_reprojected_to_a_raster_crs():
    path = _sample("vectors", "mtbs_ynp_fires_1984_2022.gpkg")
    original = gpd.read_file(path)                          # NAD83 / Montana State Plane (EPSG:32100)
    utm12 = rasterio.crs.CRS.from_epsg(32612)
    bounds = tuple(original.to_crs(utm12).total_bounds)
    geoms = read_polygons(path, utm12, bounds)
    assert geoms.crs == utm12 and len(geoms) == len(original)
    assert geoms.area.sum() == pytest.approx(original.to_crs(utm12).area.sum(), rel=1e-6)
