"""Chip stage: windows cover the right/bottom edges, the burned-area keep rule, chip contents and georeferencing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio import Affine
from rasterio.windows import Window

from apps.foundation.errors import InputError
from helpers.rasters import SAMPLES, write_geotiff
from apps.foundation.chips import IGNORE_INDEX
from data_prep.burned_area import BurnChipSettings
from data_prep.chipping import ChipSettings, chip_scene, read_scene_chips, scan_windows, window_offsets
from data_prep.label import CLASSES
from data_prep.scenes import NoChips

TRANSFORM = Affine(10, 0, 600_000, 0, -10, 5_000_000)


def chip(label, images, out_root, settings: BurnChipSettings, **kwargs):
    """chip_scene with the burned-area keep rule of ``settings``."""
    return chip_scene("s", label, images, out_root, settings, settings.keep, CLASSES,
                      show_progress=False, **kwargs)


def write(path: Path, data: np.ndarray, nodata=0, transform=TRANSFORM) -> Path:
    return write_geotiff(path, data, transform, crs="EPSG:32611", nodata=nodata)


@pytest.mark.parametrize("length, size, stride, expected", [
    (256, 256, 192, [0]),
    (300, 256, 192, [0, 44]),
    (448, 256, 192, [0, 192]),
    (500, 256, 192, [0, 192, 244]),
    (255, 256, 192, [0]),                                   # shorter than a window: one, padded
    (10, 4, 3, [0, 3, 6]),
])
def test_window_offsets_cover_the_far_edge(length, size, stride, expected):
    offsets = window_offsets(length, size, stride)
    assert offsets.tolist() == expected
    if length >= size:
        assert offsets[-1] + size == length                      # last window flush with the edge
        assert np.all(np.diff(offsets) <= stride)                # no gap between windows


def test_stride_from_overlap():
    assert ChipSettings(size=256, overlap=0.25).stride == 192
    assert ChipSettings(size=64, overlap=0.0).stride == 64
    with pytest.raises(InputError, match="chip.overlap"):
        ChipSettings(overlap=1.0)


def test_window_fractions_match_brute_force():
    rng = np.random.default_rng(3)
    mask = rng.choice(np.array([0, 1, IGNORE_INDEX], np.uint8), size=(70, 93), p=[0.5, 0.4, 0.1])
    settings = ChipSettings(size=16, overlap=0.25)
    windows = scan_windows(mask, settings)
    assert len(windows) == len(window_offsets(70, 16, 12)) * len(window_offsets(93, 16, 12))
    for r, c, negative, positive, nodata in zip(windows.row_off, windows.col_off, windows.negative_fraction,
                                                windows.positive_fraction, windows.nodata_fraction):
        window = mask[r:r + 16, c:c + 16]
        assert positive == np.mean(window == 1) and nodata == np.mean(window == IGNORE_INDEX)
        assert negative == np.mean(window == 0)
    assert windows.row_off.max() == 70 - 16 and windows.col_off.max() == 93 - 16


def test_burned_area_keep_rule():
    mask = np.zeros((10, 40), np.uint8)                      # four 10x10 windows side by side
    mask[:, 0:1] = 1                                          # window 0: 10 % burned -> kept
    mask[:, 10:19] = 1                                        # window 1: 90 % burned -> kept
    mask[:, 20:30] = 1                                        # window 2: all burned -> dropped
    mask[:, 30:32] = 1                                        # window 3: 20 % burned,
    mask[:2, 32:] = IGNORE_INDEX                              #           16 % nodata -> dropped at 0.1
    windows = scan_windows(mask, ChipSettings(size=10, overlap=0.0))

    def kept(**rule) -> list[int]:
        return windows.col_off[BurnChipSettings(size=10, overlap=0.0, **rule).keep(windows)].tolist()

    assert kept(min_class_fraction=0.1, max_nodata_fraction=0.1) == [0, 10]
    assert kept(min_class_fraction=0.1, max_nodata_fraction=0.2) == [0, 10, 30]
    assert kept(min_class_fraction=0.15, max_nodata_fraction=0.2) == [30]
    with pytest.raises(InputError, match="chip.min_class_fraction"):
        BurnChipSettings(min_class_fraction=0.6)


def test_chip_stage_takes_any_keep_rule(tmp_path, scene_rasters):
    """The generic chip stage keeps what the app's rule says, names classes as the app does."""
    result = chip_scene("s", scene_rasters["label"], {"normalized": scene_rasters["normalized"]}, tmp_path,
                        ChipSettings(size=32, overlap=0.25), lambda w: w.positive_fraction == 1, ("land", "sea"),
                        show_progress=False)
    assert result.records and all(r.class_fractions == {"land": 0.0, "sea": 1.0} for r in result.records)
    assert all(r.col_off + 32 <= 50 for r in result.records)


@pytest.fixture
def scene_rasters(tmp_path):
    """A 100x90 scene: mask with a burned left half, images whose pixel values encode position."""
    height, width = 90, 100
    mask = np.zeros((height, width), np.uint8)
    mask[:, :50] = 1
    rows, cols = np.mgrid[:height, :width]
    image = np.stack([rows % 251 + 1, cols % 251 + 1, (rows + cols) % 251 + 1]).astype(np.uint8)
    return {
        "label": write(tmp_path / "label.tif", mask, nodata=IGNORE_INDEX),
        "normalized": write(tmp_path / "normalized.tif", image),
        "tci": write(tmp_path / "tci.tif", image[::-1].copy()),
        "mask": mask, "image": image,
    }


def test_chip_scene_stores_windows_of_every_array(tmp_path, scene_rasters):
    settings = BurnChipSettings(size=32, overlap=0.25, min_class_fraction=0.1)
    images = {"normalized": scene_rasters["normalized"], "tci": scene_rasters["tci"]}
    result = chip(scene_rasters["label"], images, tmp_path / "out", settings, sources=("src",), stamp={"k": 1})
    root = tmp_path / "out"
    normalized = np.load(root / result.arrays["normalized"], mmap_mode="r")
    tci = np.load(root / result.arrays["tci"], mmap_mode="r")
    mask = np.load(root / result.arrays["mask"], mmap_mode="r")
    assert normalized.shape == tci.shape == (len(result.records), 3, 32, 32) and mask.shape == (len(result.records), 32, 32)
    assert len(result.records) > 0 and result.windows_total == 4 * 4       # cols 0,24,48,68; rows 0,24,48,58
    for record in result.records:
        window = np.s_[record.row_off:record.row_off + 32, record.col_off:record.col_off + 32]
        np.testing.assert_array_equal(normalized[record.index], scene_rasters["image"][(slice(None), *window)])
        np.testing.assert_array_equal(tci[record.index], scene_rasters["image"][::-1][(slice(None), *window)])
        np.testing.assert_array_equal(mask[record.index], scene_rasters["mask"][window])
        assert record.class_fractions["burned"] == pytest.approx(np.mean(scene_rasters["mask"][window] == 1))
        assert 0.1 <= record.class_fractions["burned"] <= 0.9
        assert (record.split, record.sources, record.width, record.height) == ("", ("src",), 32, 32)
    stored = read_scene_chips(root, "s")
    assert stored.records == result.records and stored.stamp == {"k": 1}
    assert (stored.height, stored.width) == (90, 100)


def test_chip_transform_georeferences_the_chip(tmp_path, scene_rasters):
    result = chip(scene_rasters["label"], {"normalized": scene_rasters["normalized"]}, tmp_path,
                  BurnChipSettings(size=32))
    with rasterio.open(scene_rasters["normalized"]) as src:
        for record in result.records:
            chip_transform = Affine(*record.transform)
            assert chip_transform == TRANSFORM @ Affine.translation(record.col_off, record.row_off)
            # The chip's pixel (5, 7) is the raster's pixel (row_off + 5, col_off + 7), at the same map point.
            x, y = chip_transform @ (7.5, 5.5)
            assert src.index(x, y) == (record.row_off + 5, record.col_off + 7)
            assert rasterio.crs.CRS.from_wkt(record.crs) == src.crs
            np.testing.assert_array_equal(
                src.read(window=Window(record.col_off, record.row_off, 32, 32)),
                np.load(tmp_path / result.arrays["normalized"])[record.index])


def test_scene_without_kept_chips_is_stored_empty(tmp_path, scene_rasters):
    result = chip(scene_rasters["label"], {"normalized": scene_rasters["normalized"]}, tmp_path,
                  BurnChipSettings(size=32, min_class_fraction=0.5))
    assert result.records == [] and np.load(tmp_path / result.arrays["mask"]).shape == (0, 32, 32)


def test_raster_smaller_than_a_chip_gets_padded_windows(tmp_path, scene_rasters):
    """The small-scene policy: 90 rows < 96 px gives one window row, padded with nodata (255 in the mask,
    0 in images); the padding counts as nodata for the keep rule."""
    result = chip(scene_rasters["label"], {"normalized": scene_rasters["normalized"]}, tmp_path / "out",
                  BurnChipSettings(size=96, min_class_fraction=0.1, max_nodata_fraction=0.1))
    assert [(r.row_off, r.col_off) for r in result.records] == [(0, 0), (0, 4)]
    mask = np.load(tmp_path / "out" / result.arrays["mask"])
    image = np.load(tmp_path / "out" / result.arrays["normalized"])
    for record in result.records:
        window = np.s_[:, record.col_off:record.col_off + 96]
        np.testing.assert_array_equal(mask[record.index, :90], scene_rasters["mask"][window])
        np.testing.assert_array_equal(image[record.index, :, :90], scene_rasters["image"][(slice(None), *window)])
        assert (mask[record.index, 90:] == IGNORE_INDEX).all() and (image[record.index, :, 90:] == 0).all()
        assert record.nodata_fraction == pytest.approx(6 / 96)


def test_raster_smaller_than_a_chip_whose_padded_window_is_not_kept(tmp_path, scene_rasters):
    with pytest.raises(NoChips, match=r"scene s: raster 100x90 px is smaller than one chip \(128x128 px\)$"):
        chip(scene_rasters["label"], {}, tmp_path / "out", BurnChipSettings(size=128, max_nodata_fraction=0.1))
    assert not (tmp_path / "out" / "scenes").exists()


def test_images_off_the_mask_grid(tmp_path, scene_rasters):
    shifted = write(tmp_path / "shifted.tif", scene_rasters["image"], transform=TRANSFORM @ Affine.translation(1, 0))
    with pytest.raises(InputError, match="not on the grid of mask"):
        chip(scene_rasters["label"], {"normalized": shifted}, tmp_path, BurnChipSettings(size=32))


def test_image_that_is_not_uint8_is_one_line(tmp_path, scene_rasters):
    wide = write(tmp_path / "wide.tif", scene_rasters["image"].astype(np.uint16))
    with pytest.raises(InputError, match=r"normalized raster .*wide.tif: data type uint16, expected uint8"):
        chip(scene_rasters["label"], {"normalized": wide}, tmp_path, BurnChipSettings(size=32))


def test_real_raster_smaller_than_a_chip(tmp_path):
    raster = SAMPLES / "raster_vector_pairs" / "eolearn_slovenia_utm33n" / "import-tiff-test1.tiff"
    if not raster.is_file():
        pytest.skip("real samples not available")
    with pytest.raises(NoChips, match=r"84x72 px is smaller than one chip \(256x256 px\)"):
        chip(raster, {}, tmp_path, BurnChipSettings())
