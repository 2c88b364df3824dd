"""The detection prep: DOTA, xView and RarePlanes readers, the chip rule for boxes, the whole-scene split with
COCO files, resuming, bad input, the synthetic object scenes and the chipping benchmark."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from rasterio.windows import Window

from apps.foundation.chips import ChipDataset, chip_boxes
from apps.foundation.errors import CONFIG_ERROR_EXIT_CODE, InputError
from helpers.rasters import write_geotiff
from data_prep.detection import (
    TOO_LARGE, DetectionChipSettings, DetectionPreparation, PrepConfig, SceneSplitSettings, cut_boxes, prepare,
    select_windows,
)
from data_prep.normalize import NormalizeSettings
from data_prep.detection_formats import (
    MISSING_IMAGE, OUTSIDE_CLIPPED, DOTA_V1_0, RAREPLANES_ROLES, XVIEW_CLASSES, DotaSettings, RarePlanesSettings, read_dota, read_rareplanes,
    read_xview,
)
from data_prep.synthetic_objects import CLASSES as SYNTHETIC_CLASSES, COLOURS, generate_object_scenes
from helpers import LIMIT_S, REPO
from helpers.core import compose_config

UTM = "EPSG:32610"
TRANSFORM = Affine(0.5, 0, 500_000, 0, -0.5, 4_200_000)
CLASSES = ("car", "tank")
TINY_CHIP = DetectionChipSettings(size=64, overlap=0.25, keep_empty=0.0)


def write_image(path: Path, height: int, width: int, seed: int = 0, dtype: str = "uint8", bands: int = 3) -> Path:
    """A random image: GeoTIFF in UTM for .tif, a PNG without georeference for .png."""
    rng = np.random.default_rng(seed)
    high = 255 if dtype == "uint8" else 4000
    data = rng.integers(0, high, (bands, height, width)).astype(dtype)
    if path.suffix == ".png":
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="PNG", width=width, height=height, count=bands, dtype=dtype) as dst:
            dst.write(data)
        return path
    return write_geotiff(path, data, TRANSFORM, crs=UTM, nodata=None)


def dota_line(x1: float, y1: float, x2: float, y2: float, name: str = "car", difficult: int | None = 0) -> str:
    corners = f"{x1} {y1} {x2} {y1} {x2} {y2} {x1} {y2} {name}"
    return corners if difficult is None else f"{corners} {difficult}"


def dota_scene(root: Path, name: str, height: int, width: int, lines: list[str], suffix: str = ".tif",
               seed: int = 0) -> Path:
    write_image(root / "images" / f"{name}{suffix}", height, width, seed)
    (root / "labelTxt").mkdir(parents=True, exist_ok=True)
    (root / "labelTxt" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_dataset(root: Path) -> Path:
    """Four DOTA-layout scenes: three GeoTIFF (one smaller than a chip) and a PNG, objects of two classes."""
    dota_scene(root, "alpha", 150, 140, ["imagesource:GoogleEarth", "gsd:0.5", dota_line(10, 10, 30, 25),
                                         dota_line(50, 60, 70, 90, "tank"), dota_line(100, 100, 120, 118, "car", 1)])
    dota_scene(root, "bravo", 130, 130, [dota_line(5, 5, 25, 20, "tank"), dota_line(90, 80, 110, 100)], seed=1)
    dota_scene(root, "charlie", 50, 40, [dota_line(3, 4, 20, 30)], seed=2)
    dota_scene(root, "delta", 100, 160, [dota_line(20, 30, 40, 50), dota_line(120, 10, 150, 30, "tank")],
               suffix=".png", seed=3)
    return root


def tiny_config(root: Path, out: Path, **changes) -> PrepConfig:
    return PrepConfig(out_dir=out, format="dota", images=root / "images", labels=root / "labelTxt", classes=CLASSES,
                      chip=changes.pop("chip", TINY_CHIP), progress=False, **changes)


@pytest.fixture
def dota_root(tmp_path) -> Path:
    return tiny_dataset(tmp_path / "dota")


# --- readers --------------------------------------------------------------------------------------------------------

def test_dota_reader_takes_polygon_bounds_headers_and_difficult(tmp_path):
    lines = ["imagesource:GoogleEarth", "gsd:0.146", "",
             "10 12 30 10 32 25 12 27 plane 0",              # a tilted polygon: its bounds
             dota_line(40, 40, 60, 55, "ship", 1), dota_line(1, 1, 9, 9, "harbor", 2),
             dota_line(-0.5, 70, 20, 80.6, "small-vehicle", None)]  # 9 fields; within a pixel of the edge
    dota_scene(tmp_path, "P0001", 80, 100, lines)
    labels = read_dota(tmp_path / "images", None, None)
    assert labels.classes == DOTA_V1_0 and len(read_dota(tmp_path / "images", None, None,
                                                          DotaSettings("1.5")).classes) == 16
    [scene] = labels.scenes
    assert scene.name == "P0001" and scene.gsd == pytest.approx(0.146)
    assert (scene.image.width, scene.image.height, scene.image.count) == (100, 80, 3)
    np.testing.assert_allclose(scene.boxes, [[10, 10, 32, 27], [40, 40, 60, 55], [1, 1, 9, 9], [0, 70, 20, 80]])
    assert [labels.classes[i] for i in scene.labels] == ["plane", "ship", "harbor", "small-vehicle"]
    assert scene.difficult.tolist() == [False, True, True, False]


def xview_feature(bounds: str | None, type_id: int, image_id: str) -> dict:
    properties = {"type_id": type_id, "image_id": image_id}
    if bounds is not None:
        properties["bounds_imcoords"] = bounds
    return {"type": "Feature", "properties": properties,
            "geometry": {"type": "Point", "coordinates": [0.0, 0.0]}}


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_xview_reader_maps_type_ids_drops_invalid_and_clips(tmp_path):
    write_image(tmp_path / "images" / "104.tif", 60, 80)
    write_image(tmp_path / "images" / "5.tif", 40, 40, seed=1)
    features = [xview_feature("1,2,11,12", 11, "104.tif"), xview_feature("20,20,30,28", 94, "104.tif"),
                xview_feature("70,50,95,70", 73, "104.tif"),           # runs off the image: clipped
                xview_feature("5,5,15,15", 75, "104.tif"), xview_feature("5,5,15,15", 82, "5.tif"),
                xview_feature("7,7,7,20", 18, "5.tif"),                 # no width
                xview_feature("90,10,99,20", 18, "5.tif"),              # wholly off its image
                xview_feature("1,1,5,5", 18, "1395.tif"),               # an image the download lacks
                xview_feature("2,3,12,13", 18, "5.tif")]
    geojson = write_json(tmp_path / "xView_train.geojson", {"type": "FeatureCollection", "features": features})
    labels = read_xview(tmp_path / "images", geojson, None)
    assert len(labels.classes) == 60 and labels.classes[0] == "Fixed-wing Aircraft" and labels.classes[59] == "Tower"
    assert labels.classes == tuple(XVIEW_CLASSES.values()) and 75 not in XVIEW_CLASSES and 82 not in XVIEW_CLASSES
    assert labels.dropped == {"invalid type ids (75, 82)": 2, "objects of images not in images/": 1,
                              "empty or degenerate boxes": 2, "boxes clipped to their image": 1}
    scenes = {s.name: s for s in labels.scenes}
    np.testing.assert_allclose(scenes["104"].boxes, [[1, 2, 11, 12], [20, 20, 30, 28], [70, 50, 80, 60]])
    assert [labels.classes[i] for i in scenes["104"].labels] == ["Fixed-wing Aircraft", "Tower", "Building"]
    np.testing.assert_allclose(scenes["5"].boxes, [[2, 3, 12, 13]])
    assert labels.classes[scenes["5"].labels[0]] == "Small Car" and not scenes["5"].difficult.any()


def test_rareplanes_geojson_tiles_in_geographic_and_pixel_coordinates(tmp_path):
    from pyproj import Transformer

    write_image(tmp_path / "tiles" / "10_ABC_tile_1.tif", 64, 64)
    to_wgs84 = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)

    def polygon(box: tuple[float, float, float, float], geographic: bool) -> dict:
        x1, y1, x2, y2 = box
        ring = [(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)]
        if geographic:
            ring = [to_wgs84.transform(*(TRANSFORM @ point)) for point in ring]
        return {"type": "Polygon", "coordinates": [ring]}

    boxes = [(4, 6, 20, 18), (30, 40, 50, 70)]  # the second runs off the tile: clipped
    properties = [{"role": "Military Bomber", "num_engines": 4}, {"role": "Small Civil Transport/Utility",
                                                                    "num_engines": 1}]
    for folder, geographic in (("geo", True), ("pixel", False)):
        write_json(tmp_path / folder / "10_ABC_tile_1.geojson", {"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": p, "geometry": polygon(b, geographic)}
            for p, b in zip(properties, boxes)]})
    labels = read_rareplanes(tmp_path / "tiles", tmp_path / "geo", None)
    [scene] = labels.scenes
    assert labels.classes == RAREPLANES_ROLES
    np.testing.assert_allclose(scene.boxes, [[4, 6, 20, 18], [30, 40, 50, 64]], atol=1e-6)
    assert [labels.classes[i] for i in scene.labels] == ["Military Bomber", "Small Civil Transport/Utility"]
    engines = read_rareplanes(tmp_path / "tiles", tmp_path / "pixel", None, RarePlanesSettings("num_engines", "pixel"))
    assert engines.classes == ("1", "4") and engines.scenes[0].labels.tolist() == [1, 0]
    np.testing.assert_allclose(engines.scenes[0].boxes, scene.boxes, atol=1e-6)


def rareplanes_coco(tmp_path: Path, image_ids: tuple[int, ...] = (1, 1, 2)) -> Path:
    write_image(tmp_path / "tiles" / "t_1.tif", 64, 64)
    write_image(tmp_path / "tiles" / "t_2.tif", 64, 64, seed=1)
    annotations = [{"id": 10 + i, "image_id": image_id, "category_id": 1, "bbox": [4 + i, 5, 10, 12], "iscrowd": i % 2,
                    "role": RAREPLANES_ROLES[i], "num_engines": 2 + i}
                   for i, image_id in enumerate(image_ids)]
    return write_json(tmp_path / "instances_train_role.json", {
        "images": [{"id": 1, "file_name": "t_1.png", "width": 64, "height": 64},
                   {"id": 2, "file_name": "t_2.tif", "width": 64, "height": 64}],
        "annotations": annotations, "categories": [{"id": 1, "name": "aircraft"}]})


def test_rareplanes_coco_file_with_attributes(tmp_path):
    coco = rareplanes_coco(tmp_path)
    labels = read_rareplanes(tmp_path / "tiles", coco, None)
    scenes = {s.name: s for s in labels.scenes}
    assert labels.classes == RAREPLANES_ROLES and set(scenes) == {"t_1", "t_2"}    # t_1.png found as t_1.tif
    np.testing.assert_allclose(scenes["t_1"].boxes, [[4, 5, 14, 17], [5, 5, 15, 17]])
    assert scenes["t_1"].labels.tolist() == [0, 1] and scenes["t_1"].difficult.tolist() == [False, True]
    assert read_rareplanes(tmp_path / "tiles", coco, None, RarePlanesSettings("num_engines")).classes == ("2", "3", "4")
    assert read_rareplanes(tmp_path / "tiles", coco, None, RarePlanesSettings(None)).classes == ("aircraft",)


# --- the chip rule --------------------------------------------------------------------------------------------------

def test_box_cut_by_a_chip_border_is_kept_where_enough_of_it_is_visible():
    rows, cols = np.array([0]), np.array([0, 100])      # two windows of 100 px side by side, no overlap
    objects = np.array([[40, 10, 140, 20, 0, 0],        # cut 60/40
                        [70, 30, 170, 40, 1, 0],        # cut 30/70: exactly the default threshold in window 1
                        [90, 50, 190, 60, 1, 1]])       # difficult, cut 10/90
    table = cut_boxes(objects, rows, cols, 100, DetectionChipSettings(size=100, overlap=0, min_visible=0.5))
    assert table[table[:, 6] == 0, :6].tolist() == [[0, 40, 10, 100, 20, 0], [1, 0, 30, 70, 40, 1]]
    default = cut_boxes(objects, rows, cols, 100, DetectionChipSettings(size=100, overlap=0))
    kept = default[default[:, 6] == 0]
    assert kept[:, :6].tolist() == [[1, 0, 30, 70, 40, 1]]  # 60 % and 30 % parts dropped, the 70 % part kept
    # The difficult object is an ignored region wherever part of it lies.
    assert default[default[:, 6] == 1, :6].tolist() == [[0, 90, 50, 100, 60, 1], [1, 0, 50, 90, 60, 1]]
    cut_ignored = cut_boxes(objects, rows, cols, 100, DetectionChipSettings(size=100, overlap=0, ignore_cut=True))
    assert sorted(map(tuple, cut_ignored[cut_ignored[:, 6] == 1, :3].tolist())) == [
        (0.0, 40.0, 10.0), (0.0, 70.0, 30.0), (0.0, 90.0, 50.0), (1.0, 0.0, 10.0), (1.0, 0.0, 50.0)]


def test_empty_windows_kept_by_a_seeded_share():
    table = np.array([[0, 1, 1, 5, 5, 0, 0], [1, 1, 1, 5, 5, 0, 1]], dtype=np.float64)  # window 1: ignored only
    settings = DetectionChipSettings(size=64, keep_empty=0.25, seed=3)
    keep = select_windows(table, 21, settings, "alpha")
    assert keep[0] and keep.sum() == 1 + 5
    np.testing.assert_array_equal(keep, select_windows(table, 21, settings, "alpha"))
    none = select_windows(table, 21, DetectionChipSettings(size=64, keep_empty=0), "alpha")
    assert none.tolist() == [True] + [False] * 20
    assert select_windows(table, 21, DetectionChipSettings(size=64, keep_empty=1), "alpha").all()


# --- the prep end to end ---------------------------------------------------------------------------------------------

def test_prep_writes_chips_boxes_coco_and_keeps_scenes_whole(dota_root, tmp_path):
    out = tmp_path / "out"
    assert prepare(tiny_config(dota_root, out)) == out / "dataset.json"
    dataset = ChipDataset(out)
    assert dataset.classes == list(CLASSES)
    assert dataset.arrays == {"image": {"kind": "image", "channels": 3, "bands": ["R", "G", "B"]},
                              "boxes": {"kind": "boxes",
                                        "columns": ["chip", "x1", "y1", "x2", "y2", "class", "ignore"]}}
    splits = {}
    for record in dataset.records:
        assert splits.setdefault(record.scene, record.split) == record.split          # a scene stays in one split
    assert set(splits.values()) == {"train", "val", "test"} and set(splits) == {"alpha", "bravo", "charlie", "delta"}

    for split in ("train", "val", "test"):
        coco = json.loads((out / "coco" / f"{split}.json").read_text())
        assert coco["categories"] == [{"id": 1, "name": "car"}, {"id": 2, "name": "tank"}]
        records = dataset.split_records(split)
        assert [image["file_name"] for image in coco["images"]] == [r.chip_id for r in records]
        assert len({image["id"] for image in coco["images"]}) == len(records)
        for image, record in zip(coco["images"], records):
            boxes, labels, ignore = chip_boxes(dataset.open_array(record.scene, "boxes"), record.index)
            annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            got = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)]).reshape(-1, 4)
            np.testing.assert_allclose(got, boxes)
            assert [a["category_id"] - 1 for a in annotations] == labels.tolist()
            assert [bool(a["iscrowd"]) for a in annotations] == ignore.tolist()
            assert [bool(a["ignore"]) for a in annotations] == ignore.tolist()
            assert [a["area"] for a in annotations] == pytest.approx(((boxes[:, 2:] - boxes[:, :2]).prod(1)).tolist())
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])

    # Chips are the windows of their image their manifest rows name, on the map where their transforms say.
    alpha = [r for r in dataset.records if r.scene == "alpha"]
    assert [(r.col_off, r.row_off) for r in alpha] == [(0, 0), (0, 48), (48, 48)]  # (76, 86): the difficult car only
    image = dataset.open_array("alpha", "image")
    assert image.shape == (3, 3, 64, 64) and image.dtype == np.uint8
    with rasterio.open(dota_root / "images" / "alpha.tif") as src:
        for r in alpha:
            window = Window(r.col_off, r.row_off, 64, 64)
            np.testing.assert_array_equal(image[r.index], src.read(window=window))
            assert r.transform == pytest.approx(tuple(src.window_transform(window))[:6])
            assert rasterio.crs.CRS.from_wkt(r.crs) == src.crs
    boxes, labels, ignore = chip_boxes(dataset.open_array("alpha", "boxes"), 1)
    assert boxes.tolist() == [[50, 12, 64, 42]] and labels.tolist() == [1]          # 0.7 of the tank: kept, clipped
    boxes, labels, ignore = chip_boxes(dataset.open_array("alpha", "boxes"), 2)
    assert boxes.tolist() == [[2, 12, 22, 42], [52, 52, 64, 64]] and ignore.tolist() == [False, True]  # difficult car
    assert alpha[1].class_fractions == alpha[2].class_fractions == {"car": 0.0, "tank": 1.0}

    # A scene smaller than a chip is padded; a PNG has no georeference.
    [charlie] = [r for r in dataset.records if r.scene == "charlie"]
    assert charlie.nodata_fraction == pytest.approx(1 - 50 * 40 / 64 ** 2)
    charlie_chip = dataset.open_array("charlie", "image")[0]
    assert not charlie_chip[:, 50:, :].any() and not charlie_chip[:, :, 40:].any()
    with rasterio.open(dota_root / "images" / "charlie.tif") as src:
        np.testing.assert_array_equal(charlie_chip[:, :50, :40], src.read())
    delta = [r for r in dataset.records if r.scene == "delta"]
    assert delta[0].crs == "" and delta[0].transform == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert delta[-1].transform == (1.0, 0.0, float(delta[-1].col_off), 0.0, 1.0, float(delta[-1].row_off))
    assert dataset.index["scenes"]["alpha"]["gsd"] == 0.5
    assert dataset.attrs["objects_in_chips"] == {"kept": 12, "ignored": 1}
    record = DetectionPreparation.from_attrs(dataset.attrs)   # the prep's typed record, as prediction reads it
    assert record.objects_in_chips == {"kept": 12, "ignored": 1} and isinstance(record.stretch, NormalizeSettings)


@pytest.mark.parametrize("ignore_cut", [False, True])
def test_an_object_no_chip_holds_is_counted_as_dropped_or_kept_ignored(dota_root, tmp_path, caplog, ignore_cut):
    """A 100 px harbour in 64 px chips: at most 64 % of it in any window, below min_visible (0.7)."""
    label = dota_root / "labelTxt" / "alpha.txt"
    label.write_text(label.read_text() + dota_line(20, 40, 120, 100, "tank") + "\n")
    out = tmp_path / "out"
    prepare(tiny_config(dota_root, out, chip=replace(TINY_CHIP, ignore_cut=ignore_cut)))
    attrs = ChipDataset(out).attrs
    if ignore_cut:
        assert TOO_LARGE not in attrs["dropped_labels"] and attrs["objects_in_chips"]["ignored"] > 1
        assert "kept as ignored regions" in caplog.text
    else:
        assert attrs["dropped_labels"][TOO_LARGE] == 1
        assert "chip alpha: 1 object(s) of which no 64 px chip holds min_visible=0.7: dropped" in caplog.text


def test_rerun_skips_finished_scenes_and_redoes_changed_ones(dota_root, tmp_path):
    out = tmp_path / "out"
    config = tiny_config(dota_root, out)
    prepare(config)
    stored = sorted([*out.glob("scenes/*/chips.json"), out / "work" / "labels.npz"])
    before = {p: p.stat().st_mtime_ns for p in stored}
    rows = [(r.chip_id, r.split) for r in ChipDataset(out).records]
    prepare(config)
    assert {p: p.stat().st_mtime_ns for p in stored} == before
    assert [(r.chip_id, r.split) for r in ChipDataset(out).records] == rows
    label = dota_root / "labelTxt" / "bravo.txt"
    label.write_text(label.read_text() + dota_line(40, 40, 60, 60, "tank") + "\n")
    prepare(config)
    changed = sorted(p.parent.name for p in stored if p.stat().st_mtime_ns != before[p])
    assert changed == ["bravo", "work"]
    other = tiny_config(dota_root, out, chip=DetectionChipSettings(size=64, overlap=0.5, keep_empty=0.0))
    with pytest.raises(InputError, match=r"scene alpha: chip outputs were made with other settings \(overlap\)"):
        prepare(other, stage="split")
    assert not (out / "dataset.json").exists()


def test_stages_one_scene_at_a_time_give_the_same_dataset(dota_root, tmp_path):
    whole = tmp_path / "whole"
    prepare(tiny_config(dota_root, whole))
    config = tiny_config(dota_root, tmp_path / "staged")
    with pytest.raises(InputError, match=r"labels.npz: missing \(run stage=labels first\)"):
        prepare(config, stage="chip", scene="alpha")
    prepare(config, stage="labels")
    for scene in ("alpha", "bravo", "charlie", "delta"):
        prepare(config, stage="chip", scene=scene)
    assert not (tmp_path / "staged" / "dataset.json").exists()
    with pytest.raises(InputError, match="drop scene="):
        prepare(config, stage="split", scene="alpha")
    with pytest.raises(InputError, match="scene echo: not a scene of images"):
        prepare(config, stage="chip", scene="echo")
    prepare(config, stage="split")
    rows = [(r.chip_id, r.split, r.col_off, r.row_off) for r in ChipDataset(tmp_path / "staged").records]
    assert rows == [(r.chip_id, r.split, r.col_off, r.row_off) for r in ChipDataset(whole).records]
    for split in ("train", "val", "test"):
        coco = f"coco/{split}.json"
        assert (whole / coco).read_text() == (tmp_path / "staged" / coco).read_text()


def test_split_by_groups_keeps_a_group_together(tmp_path):
    root = tmp_path / "tiles"
    for i, name in enumerate(["a_tile_1", "a_tile_2", "b_tile_1", "c_tile_1", "c_tile_2", "d_tile_1"]):
        dota_scene(root, name, 64, 64, [dota_line(10, 10, 30, 30)], seed=i)
    settings = SceneSplitSettings(group_pattern=r"(.*)_tile_\d+")
    assert settings.group("a_tile_2") == "a" and settings.group("other") == "other"
    prepare(tiny_config(root, tmp_path / "out", split=settings))
    dataset = ChipDataset(tmp_path / "out")
    by_group = {}
    for record in dataset.records:
        assert by_group.setdefault(record.scene.split("_")[0], record.split) == record.split
    assert dataset.index["scenes"]["c_tile_2"]["group"] == "c"


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_deeper_image_is_stretched_between_its_percentiles(tmp_path, dtype):
    root = tmp_path / "dota"
    values = np.tile(np.arange(0, 6400, 100), (64, 1)).astype(dtype)          # columns 0..6300
    bands = np.stack([values, values // 2, values // 4])
    if dtype == "float32":
        bands[:, 5, 7] = np.nan                                                  # nodata of a float image
    write_geotiff(root / "images" / "deep.tif", bands, TRANSFORM, crs=UTM, nodata=None)
    (root / "labelTxt").mkdir()
    (root / "labelTxt" / "deep.txt").write_text(dota_line(10, 10, 30, 30) + "\n")
    out = tmp_path / "out"
    config = tiny_config(root, out, chip=DetectionChipSettings(size=64, keep_empty=0.0))
    prepare(config, stage="labels")
    prepare(config, stage="chip", scene="deep")
    chip = np.load(out / "scenes" / "deep" / "image.npy")[0]
    valid = bands[0][np.isfinite(bands[0])]
    low, high = np.percentile(valid, [1, 99])
    expected = np.clip(np.rint(1 + (np.clip(bands[0], low, high) - low) * 254 / (high - low)), 1, 255)
    np.testing.assert_array_equal(chip[0], np.nan_to_num(expected, nan=0))
    assert chip[:, 0, 0].tolist() == [1] * 3 and chip[:, 0, -1].tolist() == [255] * 3
    if dtype == "float32":
        assert chip[:, 5, 7].tolist() == [0] * 3


def test_scene_without_objects_to_detect_is_skipped(dota_root, tmp_path):
    dota_scene(dota_root, "echo", 80, 80, [dota_line(10, 10, 20, 20, "tank", 2)], seed=4)   # a difficult tank only
    prepare(tiny_config(dota_root, tmp_path / "out"))
    dataset = ChipDataset(tmp_path / "out")
    assert dataset.attrs["skipped"] == {"echo": "chip: no chip kept of 4 windows"}
    assert "echo" not in {r.scene for r in dataset.records} and "echo" not in dataset.index["scenes"]


def test_gray_and_palette_images_become_rgb(tmp_path):
    root = tmp_path / "dota"
    gray = np.arange(50 * 40, dtype=np.uint8).reshape(1, 50, 40)
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    palette = {0: (255, 0, 0, 255), 1: (0, 255, 0, 255), 2: (0, 0, 255, 255)}
    for name, colormap in (("gray", None), ("palette", palette)):
        with rasterio.open(root / "images" / f"{name}.png", "w", driver="PNG", width=40, height=50, count=1,
                           dtype="uint8") as dst:
            dst.write(gray if colormap is None else gray % 3)
            if colormap:
                dst.write_colormap(1, colormap)
        (root / "labelTxt" / f"{name}.txt").write_text(dota_line(5, 5, 20, 20) + "\n")
    config = tiny_config(root, tmp_path / "out")
    prepare(config, stage="labels")
    for name in ("gray", "palette"):
        prepare(config, stage="chip", scene=name)
    chip = np.load(tmp_path / "out" / "scenes" / "gray" / "image.npy")[0]
    assert (chip[:, :50, :40] == gray).all()
    chip = np.load(tmp_path / "out" / "scenes" / "palette" / "image.npy")[0]
    assert chip[:, 0, :3].T.tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


# --- bad input ------------------------------------------------------------------------------------------------------

def _break(case: str, root: Path, tmp_path: Path) -> tuple[PrepConfig, str]:
    """Damage the tiny DOTA dataset (or make another) for ``case``: the config and the expected error."""
    out = tmp_path / "out"
    label = root / "labelTxt" / "bravo.txt"
    if case == "wrong number of fields":
        label.write_text(dota_line(5, 5, 25, 20, "tank") + "\n10 10 20 10 20 20 tank 0\n")
        return tiny_config(root, out), rf"labels {label}:2: 8 fields, expected 10"
    if case == "box outside image":
        label.write_text("imagesource:x\n" + dota_line(100, 100, 132, 120) + "\n")
        return tiny_config(root, out), rf"labels {label}:2: box \(100, 100, 132, 120\) lies outside image bravo.tif"
    if case == "unknown class":
        label.write_text(dota_line(5, 5, 25, 20, "boat") + "\n")
        return tiny_config(root, out), rf"labels {label}:1: unknown class 'boat' \(classes: car, tank\)"
    if case == "unreadable image":
        image = root / "images" / "delta.png"
        image.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return tiny_config(root, out), rf"image {image}: unreadable"
    if case == "COCO pointing to missing images":
        coco = rareplanes_coco(tmp_path, image_ids=(1, 7))
        return (PrepConfig(out_dir=out, format="rareplanes", images=tmp_path / "tiles", labels=coco, progress=False),
                rf"COCO labels {coco}: annotation 11 points to image id 7, which is not among its images")
    if case == "COCO image file missing":
        coco = rareplanes_coco(tmp_path)
        (tmp_path / "tiles" / "t_2.tif").unlink()
        return (PrepConfig(out_dir=out, format="rareplanes", images=tmp_path / "tiles", labels=coco, progress=False),
                rf"COCO labels {coco}: image id 2 \(t_2.tif\) not found in")
    if case == "xView feature without bounds_imcoords":
        write_image(tmp_path / "xview" / "5.tif", 40, 40)
        geojson = write_json(tmp_path / "xView_train.geojson", {"type": "FeatureCollection", "features": [
            xview_feature("1,1,9,9", 18, "5.tif"), xview_feature(None, 18, "5.tif")]})
        return (PrepConfig(out_dir=out, format="xview", images=tmp_path / "xview", labels=geojson, progress=False),
                rf"xView labels {geojson}: feature 1 has no bounds_imcoords")
    if case == "RarePlanes synthetic XML":
        xml = tmp_path / "synthetic" / "xmls" / "Atlanta_Airport_0_0_0.xml"
        xml.parent.mkdir(parents=True)
        xml.write_text("<annotation><object><category0>Small Civil Transport/Utility</category0></object></annotation>")
        write_image(tmp_path / "tiles" / "Atlanta_Airport_0_0_0.png", 40, 40)
        return (PrepConfig(out_dir=out, format="rareplanes", images=tmp_path / "tiles", labels=xml, progress=False),
                rf"labels {xml}: RarePlanes synthetic XML annotations are not read \(format=rareplanes takes")
    if case == "two scenes":
        for scene in ("charlie", "delta"):
            (root / "labelTxt" / f"{scene}.txt").unlink()
            next((root / "images").glob(f"{scene}.*")).unlink()
        return tiny_config(root, out), r"only 2 usable scene\(s\) with chips \(alpha, bravo\): .*test left empty$"
    raise ValueError(case)


BAD_INPUT = ["wrong number of fields", "box outside image", "unknown class", "unreadable image",
             "COCO pointing to missing images", "COCO image file missing", "xView feature without bounds_imcoords",
             "RarePlanes synthetic XML", "two scenes"]


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_stops_with_one_line_naming_the_file_and_no_dataset(case, dota_root, tmp_path):
    config, message = _break(case, dota_root, tmp_path)
    with pytest.raises(InputError, match=message) as err:
        prepare(config)
    assert "\n" not in str(err.value)
    assert not (config.out_dir / "dataset.json").exists()


@pytest.mark.parametrize("case, hint, reason", [
    ("missing image", "dota.missing_images=skip", MISSING_IMAGE),
    ("box beyond the image", "dota.outside_boxes=clip", OUTSIDE_CLIPPED),
])
def test_the_hint_of_a_stopped_dota_prep_works_when_followed(dota_root, tmp_path, case, hint, reason):
    """Stops by default, counting what stopped it; the override the error names (composed as the command line
    would) prepares the dataset and counts what it skipped or clipped."""
    labels = dota_root / "labelTxt"
    if case == "missing image":
        (labels / "echo.txt").write_text(dota_line(1, 1, 9, 9) + "\n")
        (labels / "foxtrot.txt").write_text(dota_line(1, 1, 9, 9) + "\n")
        stop = r"labels .*echo.txt: no image echo.\* in .* \(2 label file\(s\) without an image; "
        count = 2
    else:
        (labels / "bravo.txt").write_text(dota_line(100, 100, 132, 120) + "\n" + dota_line(90, 5, 140, 20) + "\n")
        stop = r"labels .*bravo.txt:1: box \(100, 100, 132, 120\) lies outside image bravo.tif \(130x130 px\) " \
               r"\(2 box\(es\) beyond their image; "
        count = 2
    overrides = [f"images={dota_root / 'images'}", f"out_dir={tmp_path / 'out'}", "classes=[car,tank]",
                 "chip.size=64", "chip.overlap=0.25", "chip.keep_empty=0.0", "progress=false"]
    with pytest.raises(InputError, match=stop + re.escape(hint)):
        prepare(PrepConfig.from_cfg(compose_config("prep_detection", overrides)))
    assert not (tmp_path / "out" / "dataset.json").exists()
    prepare(PrepConfig.from_cfg(compose_config("prep_detection", [*overrides, hint])))
    assert ChipDataset(tmp_path / "out").attrs["dropped_labels"][reason] == count


def test_split_methods_are_those_the_detection_prep_has():
    with pytest.raises(InputError, match=r"split.method: unknown method 'blocks' \(expected one of scenes\)$"):
        SceneSplitSettings(method="blocks")


def test_truncated_image_found_while_chipping_names_the_image(dota_root, tmp_path):
    image = dota_root / "images" / "bravo.tif"
    write_geotiff(image, np.full((3, 130, 130), 7, np.uint8), TRANSFORM, crs=UTM, nodata=None, block=16)
    config = tiny_config(dota_root, tmp_path / "out")
    prepare(config, stage="labels")
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    with pytest.raises(InputError, match=rf"image {image}: unreadable"):
        prepare(config, stage="chip", scene="bravo")
    assert not (tmp_path / "out" / "scenes" / "bravo").exists()


def test_cli_bad_label_line_is_one_line_exit_2(dota_root, tmp_path):
    config, message = _break("wrong number of fields", dota_root, tmp_path)
    result = subprocess.run([sys.executable, "-m", "data_prep.detection", "format=dota", f"images={config.images}",
                             f"labels={config.labels}", "classes=[car,tank]", f"out_dir={config.out_dir}",
                             "chip.size=64", "progress=false"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=LIMIT_S,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == CONFIG_ERROR_EXIT_CODE, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: labels ") and f"{config.labels / 'bravo.txt'}:2:" in result.stderr
    assert not (config.out_dir / "dataset.json").exists()


# --- synthetic scenes and the benchmark ------------------------------------------------------------------------------

def test_synthetic_object_scenes_flow_through_the_dota_reader(tmp_path):
    data = generate_object_scenes(tmp_path / "synthetic", n_scenes=2, size=256, seed=4, density=(40, 60),
                                  difficult_fraction=0.3)
    labels = read_dota(data.images, data.labels, SYNTHETIC_CLASSES)
    assert [s.name for s in labels.scenes] == data.scenes == ["scene_00", "scene_01"]
    for scene in labels.scenes:
        assert 40 * 256 ** 2 / 1024 ** 2 - 2 <= len(scene.boxes) <= 60 * 256 ** 2 / 1024 ** 2
        assert scene.difficult.any() and scene.gsd == 0.5
        sides = scene.boxes[:, 2:] - scene.boxes[:, :2]
        assert sides.min() >= 12 and sides.max() <= 90
    with rasterio.open(data.images / "scene_00.tif") as src:
        assert src.dtypes == ("uint8",) * 3 and src.crs.to_epsg() == 32633 and src.res == (0.5, 0.5)
        pixels = src.read()
    # Deterministic from the seed; objects differ from the background by colour.
    again = generate_object_scenes(tmp_path / "again", n_scenes=2, size=256, seed=4, density=(40, 60),
                                   difficult_fraction=0.3)
    with rasterio.open(again.images / "scene_00.tif") as src:
        np.testing.assert_array_equal(src.read(), pixels)
    scene = labels.scenes[0]
    for (x1, y1, x2, y2), label in zip(scene.boxes[~scene.difficult].astype(int), scene.labels[~scene.difficult]):
        centre = pixels[:, (y1 + y2) // 2, (x1 + x2) // 2].astype(int)
        assert np.abs(centre - COLOURS[SYNTHETIC_CLASSES[label]]).max() < 40


@pytest.mark.slow
def test_synthetic_objects_cli_then_detection_prep(tmp_path):
    synthetic = tmp_path / "synthetic"
    done = subprocess.run([sys.executable, "-m", "data_prep.synthetic_objects", f"out_dir={synthetic}", "n_scenes=4",
                           "size=512"], cwd=tmp_path, capture_output=True, text=True, timeout=LIMIT_S)
    assert done.returncode == 0, done.stderr
    config = PrepConfig(out_dir=tmp_path / "out", format="dota", images=synthetic / "images",
                        classes=SYNTHETIC_CLASSES, chip=DetectionChipSettings(size=256), progress=False)
    prepare(config)
    dataset = ChipDataset(tmp_path / "out")
    assert dataset.classes == list(SYNTHETIC_CLASSES) and all(dataset.index["splits"].values())


@pytest.mark.slow
def test_chipping_benchmark_reports_throughput_against_reading_the_image(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_detection_chipping.py"), "--size", "1024",
                             "--boxes", "200", "--work-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=LIMIT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["baseline_read_image_s"] > 0 and report["chip_s"] > 0 and report["chips"] > 0
    assert report["boxes_per_s"] > 0 and report["chips_per_s"] > 0 and report["peak_rss_bytes"] > 0
