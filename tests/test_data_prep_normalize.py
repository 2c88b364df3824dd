"""Normalize stage: exact histogram percentiles, the stretch, nodata handling, real Sentinel-2 values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio import Affine

from apps.foundation.errors import InputError
from conftest import SAMPLES, write_geotiff
from data_prep.geotiff import GeoTiffSettings
from data_prep.normalize import (
    NormalizeSettings, band_histogram, histogram_percentiles, normalize_bands, stretch_lut,
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


def test_stretch_maps_percentiles_to_1_and_255_and_nodata_to_0():
    lut = stretch_lut(100, 354, invalid=[0], size=1000)
    assert lut[0] == 0
    assert lut[1] == lut[50] == lut[100] == 1      # clamped below
    assert lut[227] == 128                            # (227 - 100) * 254 / 254 + 1
    assert lut[354] == lut[999] == 255                # clamped above
    assert np.all(np.diff(lut[1:].astype(int)) >= 0)


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


def test_float_band_is_an_input_error(tmp_path):
    path = write_band(tmp_path / "B04.tif", np.ones((8, 8), np.float32))
    with pytest.raises(InputError, match="float32 unsupported"):
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
