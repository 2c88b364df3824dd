"""Whole-scene detection: windows over a scene, boxes merged across windows, GeoJSON and COCO outputs,
and the predict command's handling of bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from apps.detection.scene_detection import detect_scene, merge_detections

SQUARES = [(40, 50, 30), (120, 250, 40), (236, 100, 36), (300, 300, 24)]
"""(row, col, side) of white squares on a black scene; the second and third straddle 128 px windows' borders."""


class BrightSquareDetector:
    """A stand-in detector: every 4-connected bright region of a window is a box of class 0, scored by
    its size (a square cut by the window border scores lower than the whole one)."""

    class_names = ["square"]

    def eval(self):
        return self

    def to(self, device):
        return self

    def detect(self, images):
        from scipy import ndimage

        found = []
        for image in images:
            regions, _ = ndimage.label(image[0].numpy() > 0.5)
            boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(regions)]
            boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            found.append({"boxes": boxes, "scores": 0.5 + areas / 4000, "labels": torch.zeros(len(boxes), dtype=torch.int64)})
        return found


def write_scene(path, georeferenced: bool = True, dtype: str = "uint8") -> None:
    pixels = np.zeros((3, 360, 400), dtype=dtype)
    for row, col, side in SQUARES:
        pixels[:, row:row + side, col:col + side] = 255
    profile = {"driver": "GTiff" if path.suffix == ".tif" else "PNG", "width": 400, "height": 360, "count": 3,
               "dtype": dtype}
    if georeferenced:
        profile.update(crs="EPSG:32633", transform=from_origin(500_000, 4_000_000, 0.5, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(pixels)


def expected_boxes() -> np.ndarray:
    return np.array([[col, row, col + side, row + side] for row, col, side in SQUARES], dtype=float)


def test_merge_keeps_one_box_per_object_and_class():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 7], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=float)
    scores = np.array([0.9, 0.6, 0.8, 0.7])
    labels = np.array([0, 0, 1, 0])
    keep = merge_detections(boxes, scores, labels, np.zeros(4, bool), iou_threshold=0.5)
    assert sorted(keep.tolist()) == [0, 2, 3]  # the repeat goes; the same box of another class stays


def test_merge_drops_the_cut_part_of_an_object_seen_whole():
    boxes = np.array([[100, 0, 140, 40], [126, 0, 140, 40], [126, 50, 140, 90]], dtype=float)
    scores = np.array([0.6, 0.9, 0.8])  # the cut part scores higher, and its IoU with the whole is 0.35
    cut = np.array([False, True, True])
    keep = merge_detections(boxes, scores, np.zeros(3, int), cut, iou_threshold=0.5)
    assert sorted(keep.tolist()) == [0, 2]  # a cut box with no whole box around it stays


def test_each_object_is_found_once_across_overlapping_windows(tmp_path):
    scene = tmp_path / "scene.tif"
    write_scene(scene)
    summary = detect_scene(BrightSquareDetector(), scene, tmp_path / "out" / "boxes", chip_size=128, overlap=0.4,
                           batch_size=3, show_progress=False)
    assert summary["windows"] > 4 and summary["boxes"] == len(SQUARES)
    results = json.loads((tmp_path / "out" / "boxes.coco.json").read_text())
    found = np.array(sorted([r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]
                            for r in results))
    np.testing.assert_allclose(found, np.array(sorted(expected_boxes().tolist())))

    import geopandas as gpd

    native = gpd.read_file(tmp_path / "out" / "boxes.geojson")
    assert native.crs.to_epsg() == 32633
    first = native.sort_values("x1").iloc[0]  # the square at col 50, row 40: 25 m east, 20 m south of the corner
    assert first.geometry.bounds == pytest.approx((500_025.0, 4_000_000 - 35.0, 500_040.0, 4_000_000 - 20.0))
    wgs84 = gpd.read_file(tmp_path / "out" / "boxes.4326.geojson")
    assert wgs84.crs.to_epsg() == 4326 and len(wgs84) == len(SQUARES)
    assert set(native.columns) >= {"class", "score", "x1", "y1", "x2", "y2"}
    import pyogrio  # each file's layer is named after the output, not after the temporary file it was written as

    assert [name for name, _ in pyogrio.list_layers(tmp_path / "out" / "boxes.geojson")] == ["boxes"]
    assert [name for name, _ in pyogrio.list_layers(tmp_path / "out" / "boxes.4326.geojson")] == ["boxes.4326"]


def test_an_image_without_georeference_gets_pixel_boxes(tmp_path):
    scene = tmp_path / "scene.png"
    write_scene(scene, georeferenced=False)
    summary = detect_scene(BrightSquareDetector(), scene, tmp_path / "boxes", chip_size=256, show_progress=False)
    assert not summary["georeferenced"] and "geojson_4326" not in summary
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("boxes")) == ["boxes.coco.json",
                                                                                      "boxes.geojson"]
    import geopandas as gpd

    frame = gpd.read_file(tmp_path / "boxes.geojson")
    np.testing.assert_allclose(np.sort(frame.geometry.bounds.to_numpy(), axis=0), np.sort(expected_boxes(), axis=0))


def test_a_scene_of_another_type_is_made_into_pixels_as_the_prep_made_the_chips(tmp_path):
    """A uint16 scene is stretched between its percentiles, as the detection prep stretches it."""
    scene = tmp_path / "scene.tif"
    write_scene(scene, dtype="uint16")
    summary = detect_scene(BrightSquareDetector(), scene, tmp_path / "boxes", chip_size=128, overlap=0.4,
                           show_progress=False)
    assert summary["boxes"] == len(SQUARES)


def test_bands_the_scene_lacks_are_one_line_and_nothing_written(tmp_path):
    from apps.foundation.errors import InputError

    scene = tmp_path / "scene.tif"
    write_scene(scene)
    with pytest.raises(InputError, match=r"^bands: image .*scene\.tif has 3 band\(s\), asked for \[4\]$"):
        detect_scene(BrightSquareDetector(), scene, tmp_path / "out" / "boxes", bands=(4,), show_progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_predict_command_refuses_bad_input_in_one_line(tmp_path):
    from helpers.core import run_module

    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not an image")
    done = run_module("apps.detection.predict", str(tmp_path / "no_run"), str(broken), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "error:" in done.stderr
    done = run_module("apps.detection.predict", str(tmp_path), str(broken), "--out", str(tmp_path / "o"),
                      "--overlap", "1.5")
    assert done.returncode == 2 and "--overlap 1.5: must be in [0, 1)" in done.stderr
