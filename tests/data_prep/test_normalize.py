"""Normalize stage: exact percentiles for every band type, the stretch, nodata handling, real Sentinel-2 values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio import Affine

from apps.foundation.errors import InputError
from helpers.rasters import SAMPLES, write_geotiff
from data_prep.geotiff import GeoTiffSettings
from data_prep.normalize import (
    NormalizeSettings, band_histogram, histogram_percentiles, normalize_bands, stretch, values_percentiles,
)

TRANSFORM = Affine(10, 0, 500_000, 0, -10, 5_600_000)


def write_band(path: Path, data: np.ndarray, nodata: float | None = 0) -> Path:
    """A single-band GeoTIFF in EPSG:32610 holding ``data`` (H, W), tiled in 16 px blocks."""
    return write_geotiff(path, data, TRANSFORM, nodata=nodata, block=16)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 999])
def test_histogram_percentiles_equal_numpy_percentile(n):
    values = np.random.default_rng(n).integers(1, 3000, n)
    hist = np.bincount(values, minlength=65536)
    q = [0, 1, 2.5, 50, 97.3, 99, 100]
    np.testing.assert_allclose(histogram_percentiles(hist, q), np.percentile(values, q))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_values_percentiles_equal_numpy_percentile(dtype):
    values = (np.random.default_rng(5).normal(0, 1000, 1001)).astype(dtype)
    q = [0, 1, 2.5, 50, 97.3, 99, 100]
    np.testing.assert_allclose(values_percentiles(values.copy(), q), np.percentile(values.astype(np.float64), q),
                               rtol=1e-12)


def test_stretch_maps_percentiles_to_1_and_255():
    out = stretch(np.arange(1000), 100, 354)
    assert out[0] == out[50] == out[100] == 1      # clamped below
    assert out[227] == 128                            # (227 - 100) * 254 / 254 + 1
    assert out[354] == out[999] == 255                # clamped above
    assert np.all(np.diff(out.astype(int)) >= 0)
    assert stretch(np.array([-1.0, 3.0, 3.5]), 3.0, 3.0).tolist() == [1, 1, 255]     # a constant band


def test_normalize_known_array(tmp_path):
    # Band values 1..100 (one pixel each) plus nodata: p1 = 1.99, p99 = 99.01.
    values = np.arange(1, 101, dtype=np.uint16)
    band = np.zeros((10, 12), np.uint16)
    band[:, :10] = values.reshape(10, 10)
    paths = {name: write_band(tmp_path / f"{name}.tif", band) for name in ("B04", "B03", "B02")}
    limits = normalize_bands(paths, tmp_path / "normalized.tif", show_progress=False)
    assert limits["B04"] == pytest.approx((1.99, 99.01))
    with rasterio.open(tmp_path / "normalized.tif") as src:
        out = src.read()
        assert (src.count, src.dtypes[0], src.nodata, src.crs.to_epsg()) == (3, "uint8", 0, 32610)
        assert src.transform == TRANSFORM
        assert src.profile["tiled"]
    expected = np.rint(1 + (np.clip(values, 1.99, 99.01) - 1.99) * 254 / (99.01 - 1.99)).astype(np.uint8)
    np.testing.assert_array_equal(out[0, :, :10].ravel(), expected)
    assert np.all(out[:, :, 10:] == 0)            # nodata stays 0
    assert out[0, :, :10].min() == 1 and out[0].max() == 255


def test_nodata_in_any_band_is_nodata_in_all_and_file_nodata_is_excluded(tmp_path):
    rng = np.random.default_rng(0)
    bands = {name: rng.integers(100, 4000, (40, 40)).astype(np.uint16) for name in ("B04", "B03", "B02")}
    bands["B03"][5, 7] = 0
    bands["B02"][:, 0] = 65535                     # the file's own nodata value
    paths = {name: write_band(tmp_path / f"{name}.tif", data, nodata=65535 if name == "B02" else 0)
             for name, data in bands.items()}
    limits = normalize_bands(paths, tmp_path / "n.tif", show_progress=False)
    assert limits["B02"][1] == pytest.approx(np.percentile(bands["B02"][:, 1:], 99))
    with rasterio.open(tmp_path / "n.tif") as src:
        out = src.read()
    assert np.all(out[:, 5, 7] == 0) and np.all(out[:, :, 0] == 0)
    valid = np.ones((40, 40), bool)
    valid[5, 7] = False
    valid[:, 0] = False
    assert np.all(out[:, valid] > 0)


def test_histogram_is_strip_wise_and_exact(tmp_path):
    data = np.random.default_rng(1).integers(0, 70, (37, 23)).astype(np.uint16)
    path = write_band(tmp_path / "b.tif", data)
    hist = band_histogram(path, strip_rows=5, show_progress=False)
    expected = np.bincount(data.ravel(), minlength=65536)
    expected[0] = 0
    np.testing.assert_array_equal(hist, expected)


def test_all_nodata_band_is_an_input_error(tmp_path):
    paths = {name: write_band(tmp_path / f"{name}.tif", np.zeros((20, 20), np.uint16)) for name in ("B04", "B03")}
    with pytest.raises(InputError, match=r"B04\.tif: no valid pixels"):
        normalize_bands(paths, tmp_path / "n.tif", show_progress=False)
    assert not (tmp_path / "n.tif").exists()


def _band_of(dtype: str, rng: np.random.Generator, shape=(37, 29)) -> tuple[np.ndarray, float | None, np.ndarray]:
    """A band of ``dtype`` with a nodata corner: (values, the file's nodata value, valid mask)."""
    valid = np.ones(shape, bool)
    valid[:5, :7] = False
    if dtype == "float32":
        data = rng.normal(0.12, 0.05, shape).astype(np.float32)           # reflectance 0..1, nodata NaN
        data[~valid] = np.nan
        return data, np.nan, valid
    info = np.iinfo(dtype)
    data = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    nodata = {"uint8": None, "uint16": 65535, "int16": -32768}[dtype]        # uint8: none declared -> 0
    data[~valid] = 0 if nodata is None else nodata
    valid &= data != 0 if nodata is None else True
    return data, nodata, valid


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_every_band_type_matches_numpy_on_the_valid_pixels(tmp_path, dtype):
    data, nodata, valid = _band_of(dtype, np.random.default_rng(9))
    path = write_band(tmp_path / "B04.tif", data, nodata=nodata)
    settings = NormalizeSettings(low_percentile=2, high_percentile=97)
    limits = normalize_bands({"B04": path}, tmp_path / "n.tif", settings, GeoTiffSettings(strip_rows=8),
                             show_progress=False)
    low, high = np.percentile(data[valid].astype(np.float64), [2, 97])
    np.testing.assert_allclose(limits["B04"], (low, high), rtol=1e-12)
    with rasterio.open(tmp_path / "n.tif") as src:
        out = src.read(1)
    expected = np.rint(1 + (np.clip(data[valid].astype(np.float64), low, high) - low) * 254 / (high - low))
    np.testing.assert_array_equal(out[valid], expected.astype(np.uint8))
    assert np.all(out[~valid] == 0) and out[valid].min() == 1 and out[valid].max() == 255


def test_declared_nodata_replaces_zero_and_infinite_floats_are_nodata(tmp_path):
    int16 = np.arange(-50, 50, dtype=np.int16).reshape(10, 10)           # 0 is valid: the file declares -50
    path = write_band(tmp_path / "i.tif", int16, nodata=-50)
    hist = band_histogram(path, show_progress=False)
    assert hist.sum() == 99 and hist[32768] == 1 and hist[32768 - 50] == 0
    floats = np.linspace(1, 2, 100, dtype=np.float32).reshape(10, 10)
    floats[0, :3] = [np.inf, -np.inf, np.nan]
    limits = normalize_bands({"B04": write_band(tmp_path / "f.tif", floats, nodata=None)}, tmp_path / "n.tif",
                             show_progress=False)
    assert limits["B04"] == pytest.approx(tuple(np.percentile(floats[np.isfinite(floats)], [1, 99])))
    with rasterio.open(tmp_path / "n.tif") as src:
        assert np.all(src.read(1)[0, :3] == 0) and np.all(src.read(1)[1:] > 0)


def test_complex_band_is_an_input_error(tmp_path):
    path = write_band(tmp_path / "B04.tif", np.ones((8, 8), np.complex64))
    with pytest.raises(InputError, match=r"B04.tif: data type complex64 unsupported"):
        normalize_bands({"B04": path}, tmp_path / "n.tif", show_progress=False)


def test_bad_percentile_settings():
    with pytest.raises(InputError, match="low_percentile < high_percentile"):
        NormalizeSettings(low_percentile=99, high_percentile=1)


def test_real_sentinel2_percentiles_match_published_values(tmp_path):
    scene = SAMPLES / "sentinel2_l2a_29RKH"
    if not scene.is_dir():
        pytest.skip("real samples not available")
    paths = {band: scene / f"{band}.tif" for band in ("B04", "B03", "B02")}
    limits = normalize_bands(paths, tmp_path / "normalized.tif", NormalizeSettings(),
                             GeoTiffSettings(strip_rows=256), show_progress=False)
    assert limits["B02"] == pytest.approx((1012, 2639))
    assert limits["B03"] == pytest.approx((1485, 3363.97))
    assert limits["B04"] == pytest.approx((2108, 4424))
    with rasterio.open(tmp_path / "normalized.tif") as out, rasterio.open(paths["B04"]) as b04:
        assert (out.width, out.height, out.crs, out.transform) == (b04.width, b04.height, b04.crs, b04.transform)
        red, raw = out.read(1), b04.read(1)
    assert np.array_equal(red == 0, raw == 0)      # the sample's nodata is the same in all three bands
    assert np.mean(red[raw > 0] == 1) == pytest.approx(0.01, abs=0.003)
    assert np.mean(red[raw > 0] == 255) == pytest.approx(0.01, abs=0.003)
