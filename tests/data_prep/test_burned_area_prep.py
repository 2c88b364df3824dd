"""The burned-area prep app end to end: the dataset it writes, resuming, per-scene stages, scenes without chips,
split rules, band types, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from apps.foundation.errors import CONFIG_ERROR_EXIT_CODE, InputError
from helpers.core import kill_module_once
from helpers.rasters import TINY_CHIP, write_geotiff
from data_prep.burned_area import BurnChipSettings, BurnedAreaPreparation, PrepConfig, prepare
from data_prep.normalize import NormalizeSettings
from apps.foundation.chips import ChipDataset
from data_prep.split import SplitSettings
from helpers import LIMIT_S, REPO

CLI_CHIP = [f"chip.{key}={value}" for key, value in TINY_CHIP.items()]


def tiny_config(out_dir: Path, scenes_dir: Path, polygons: Path, **changes) -> PrepConfig:
    return PrepConfig(out_dir=out_dir, scenes_dir=scenes_dir, polygons=polygons,
                      chip=changes.pop("chip", BurnChipSettings(**TINY_CHIP)), progress=False, **changes)


def copy_scenes(synthetic_scenes, tmp_path: Path, n: int | None = None) -> Path:
    """A writable copy of the first ``n`` synthetic scenes."""
    scenes_dir = tmp_path / "scenes"
    for name in synthetic_scenes.scenes[:n]:
        shutil.copytree(synthetic_scenes.scenes_dir / name, scenes_dir / name)
    return scenes_dir


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep.burned_area", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=LIMIT_S, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def manifest_rows(root: Path) -> list[tuple]:
    return [(r.chip_id, r.split, r.scene, r.col_off, r.row_off, r.transform) for r in ChipDataset(root).records]


def test_prepared_dataset_is_complete_and_georeferenced(burned_area_chips, synthetic_scenes):
    dataset = ChipDataset(burned_area_chips)
    assert dataset.classes == ["unburned", "burned"] and dataset.ignore_index == 255
    assert dataset.arrays["normalized"] == {"kind": "image", "channels": 3, "bands": ["B04", "B03", "B02"], "nodata": 0}
    assert dataset.attrs["chip_size"] == 64 and dataset.attrs["overlap"] == 0.25
    record = BurnedAreaPreparation.from_attrs(dataset.attrs)   # the prep's typed record, as prediction reads it
    assert (record.chip_size, record.bands, record.normalize) == (64, ("B04", "B03", "B02"), NormalizeSettings())
    scene_split = {}
    for split in ("train", "val", "test"):
        for record in dataset.split_records(split):
            assert scene_split.setdefault(record.scene, split) == split      # one split per scene
    counts = {scene: info["chips"] for scene, info in dataset.index["scenes"].items()}
    assert max(counts[s] for s, split in scene_split.items() if split == "test") <= \
        min(counts[s] for s, split in scene_split.items() if split == "train")
    for scene in counts:
        normalized, tci, mask = (dataset.open_array(scene, name) for name in ("normalized", "tci", "mask"))
        assert normalized.shape == tci.shape == (counts[scene], 3, 64, 64) and mask.shape == (counts[scene], 64, 64)
        assert set(np.unique(mask)) <= {0, 1, 255}
    # A chip is the window of its source scene that its manifest row names, at the place its transform says.
    record = dataset.split_records("test")[-1]
    with rasterio.open(synthetic_scenes.scenes_dir / record.scene / "TCI.tif") as src:
        window = Window(record.col_off, record.row_off, record.width, record.height)
        np.testing.assert_array_equal(dataset.open_array(record.scene, "tci")[record.index], src.read(window=window))
        assert record.transform == tuple(src.window_transform(window))[:6]
        assert rasterio.crs.CRS.from_wkt(record.crs) == src.crs
    mask = dataset.open_array(record.scene, "mask")[record.index]
    assert record.class_fractions["burned"] == pytest.approx(np.mean(mask == 1))
    assert record.class_fractions["burned"] >= 0.1 and record.class_fractions["unburned"] >= 0.1


def test_rerun_skips_finished_work_and_redoes_what_changed(tmp_path, synthetic_scenes):
    out = tmp_path / "out"
    config = tiny_config(out, synthetic_scenes.scenes_dir, synthetic_scenes.polygons)
    prepare(config)
    outputs = sorted([*out.glob("work/*/*.tif"), *out.glob("scenes/*/chips.json")])
    before = {p: p.stat().st_mtime_ns for p in outputs}
    rows = manifest_rows(out)
    prepare(config)
    assert {p: p.stat().st_mtime_ns for p in outputs} == before and manifest_rows(out) == rows
    prepare(tiny_config(out, synthetic_scenes.scenes_dir, synthetic_scenes.polygons,
                        chip=BurnChipSettings(**{**TINY_CHIP, "min_class_fraction": 0.2})))
    assert all(p.stat().st_mtime_ns == before[p] for p in outputs if p.suffix == ".tif")
    assert all(p.stat().st_mtime_ns != before[p] for p in outputs if p.suffix == ".json")
    assert min(r.class_fractions["burned"] for r in ChipDataset(out).records) >= 0.2
    with pytest.raises(InputError, match=r"scene scene_00: chip outputs were made with other settings \(size\)"):
        prepare(tiny_config(out, synthetic_scenes.scenes_dir, synthetic_scenes.polygons,
                            chip=BurnChipSettings(**{**TINY_CHIP, "min_class_fraction": 0.2, "size": 32})),
                stage="split")
    assert not (out / "dataset.json").exists()


def test_stages_one_scene_at_a_time_give_the_same_dataset(tmp_path, synthetic_scenes, burned_area_chips):
    config = tiny_config(tmp_path / "out", synthetic_scenes.scenes_dir, synthetic_scenes.polygons)
    with pytest.raises(InputError, match="label.tif missing \\(run stage=label"):
        prepare(config, stage="chip", scene="scene_00")
    for stage in ("normalize", "label", "chip"):
        for scene in synthetic_scenes.scenes:
            prepare(config, stage=stage, scene=scene)
    assert not (tmp_path / "out" / "dataset.json").exists()
    with pytest.raises(InputError, match="drop scene="):
        prepare(config, stage="split", scene="scene_00")
    prepare(config, stage="split")
    assert manifest_rows(tmp_path / "out") == manifest_rows(burned_area_chips)


@pytest.mark.slow
def test_cli_fans_a_stage_out_over_scenes(tmp_path, synthetic_scenes):
    out = tmp_path / "out"
    result = run_cli("-m", "scene=scene_01,scene_03", "stage=normalize", f"scenes_dir={synthetic_scenes.scenes_dir}",
                     f"out_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.parent.name for p in out.glob("work/*/normalized.tif")) == ["scene_01", "scene_03"]
    assert not list(out.glob("work/*/label.tif"))


def test_cli_misspelled_override_is_one_line_exit_2(tmp_path, synthetic_scenes):
    result = run_cli(f"scenes_dir={synthetic_scenes.scenes_dir}", f"out_dir={tmp_path / 'out'}", "chip.siz=64",
                     cwd=tmp_path)
    assert result.returncode == CONFIG_ERROR_EXIT_CODE
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and "chip.siz" in result.stderr


@pytest.mark.slow
def test_cli_truncated_geotiff_is_one_line_exit_2(tmp_path, synthetic_scenes):
    scenes_dir = copy_scenes(synthetic_scenes, tmp_path)
    band = scenes_dir / "scene_02" / "B03.tif"
    band.write_bytes(band.read_bytes()[: band.stat().st_size // 2])
    out = tmp_path / "out"
    result = run_cli(f"scenes_dir={scenes_dir}", f"polygons={synthetic_scenes.polygons}", f"out_dir={out}",
                     *CLI_CHIP, "progress=false", cwd=tmp_path)
    assert result.returncode == CONFIG_ERROR_EXIT_CODE, result.stderr
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("error: ") and str(band) in message, message
    assert not (out / "dataset.json").exists()
    with pytest.raises(InputError, match="incomplete"):
        ChipDataset(out)


def _break_scene_band(scenes_dir: Path, band: str, how: str) -> None:
    path = scenes_dir / "scene_01" / f"{band}.tif"
    if how == "delete":
        path.unlink()
    elif how == "zero":
        with rasterio.open(path, "r+") as dst:
            dst.write(np.zeros((dst.count, dst.height, dst.width), dst.dtypes[0]))


@pytest.mark.parametrize("case, message", [
    ("missing band", r"scene folder .*scene_01: band B02 missing"),
    ("all-nodata raster", r"band .*scene_01/B04.tif: no valid pixels"),
    ("polygons outside", r"no scene yields a chip \(scene_00: label: no polygon overlaps the raster \(all \d+ lie "
                         r"outside it\); scene_01: label: .*; scene_02: label: .*\)$"),
    ("empty polygons", r"polygons .*empty.gpkg: empty"),
    ("smaller than a chip", r"no scene yields a chip \(scene_00: chip: raster \d+x\d+ px is smaller than one chip "
                            r"\(512x512 px\); scene_01: chip: .*\)$"),
    ("too few scenes", r"only 2 usable scene\(s\) with chips \(scene_00, scene_01\)"),
])
def test_bad_input_stops_with_one_line_and_no_dataset(tmp_path, synthetic_scenes, case, message):
    scenes_dir = copy_scenes(synthetic_scenes, tmp_path, n=2 if case == "too few scenes" else 3)
    polygons, chip = synthetic_scenes.polygons, BurnChipSettings(**TINY_CHIP)
    if case == "missing band":
        _break_scene_band(scenes_dir, "B02", "delete")
    elif case == "all-nodata raster":
        _break_scene_band(scenes_dir, "B04", "zero")
    elif case == "polygons outside":
        polygons = tmp_path / "far.gpkg"
        gpd.read_file(synthetic_scenes.polygons).translate(xoff=40).to_file(polygons)
    elif case == "empty polygons":
        polygons = tmp_path / "empty.gpkg"
        gpd.read_file(synthetic_scenes.polygons).iloc[:0].to_file(polygons)
    elif case == "smaller than a chip":
        chip = BurnChipSettings(size=512)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message) as err:
        prepare(tiny_config(out, scenes_dir, polygons, chip=chip))
    assert "\n" not in str(err.value)
    assert not (out / "dataset.json").exists()


def _polygons_missing(scene_dir: Path, polygons: Path, out: Path) -> Path:
    """A copy of ``polygons`` without those near the scene in ``scene_dir``: the scene has no burn."""
    from rasterio.warp import transform_bounds
    from shapely.geometry import box

    frame = gpd.read_file(polygons)
    with rasterio.open(scene_dir / "B04.tif") as src:
        near = box(*transform_bounds(src.crs, frame.crs, *src.bounds, densify_pts=21))
    frame[~frame.intersects(near)].to_file(out)
    return out


def _crop_scene(source: Path, target: Path, window: Window) -> None:
    """``target``: ``window`` of every band of scene folder ``source``."""
    for path in source.glob("*.tif"):
        with rasterio.open(path) as src:
            write_geotiff(target / path.name, src.read(window=window), src.window_transform(window),
                          crs=src.crs.to_string(), nodata=src.nodata)


def test_scenes_without_chips_are_skipped_and_listed(tmp_path, synthetic_scenes, burned_area_chips):
    scenes_dir = copy_scenes(synthetic_scenes, tmp_path)
    with rasterio.open(burned_area_chips / "work" / "scene_00" / "label.tif") as src:
        row, col = np.argwhere(src.read(1) == 1)[0]
    _crop_scene(scenes_dir / "scene_00", scenes_dir / "tiny", Window(int(col), int(row), 40, 40))  # < one chip
    polygons = _polygons_missing(scenes_dir / "scene_04", synthetic_scenes.polygons, tmp_path / "no_04.gpkg")
    out = tmp_path / "out"
    config = tiny_config(out, scenes_dir, polygons)
    prepare(config)
    dataset = ChipDataset(out)
    skipped = dataset.attrs["skipped"]
    assert set(skipped) == {"scene_04", "tiny"} and "left_out" not in dataset.attrs
    assert re.fullmatch(r"label: no polygon overlaps the raster \(all \d+ lie outside it\)", skipped["scene_04"])
    assert skipped["tiny"] == "chip: raster 40x40 px is smaller than one chip (64x64 px)"
    assert {r.scene for r in dataset.records} == {"scene_00", "scene_01", "scene_02", "scene_03"}
    assert json.loads((out / "work" / "scene_04" / "skipped.json").read_text())["stage"] == "label"

    # A per-scene fan-out of a later stage passes over the skipped scene; the split still knows why.
    prepare(config, stage="chip", scene="scene_04")
    assert not (out / "scenes" / "scene_04").exists()
    prepare(config, stage="split")
    assert ChipDataset(out).attrs["skipped"] == skipped

    # Once the scene yields chips, its record goes and its chips join the dataset.
    prepare(tiny_config(out, scenes_dir, synthetic_scenes.polygons))
    assert not (out / "work" / "scene_04" / "skipped.json").exists()
    assert ChipDataset(out).attrs["skipped"] == {"tiny": skipped["tiny"]}
    assert {r.scene for r in ChipDataset(out).records} == set(synthetic_scenes.scenes)


@pytest.mark.slow
def test_cli_split_fixed_override_pins_a_scene(tmp_path, synthetic_scenes, burned_area_chips):
    out = tmp_path / "out"
    shutil.copytree(burned_area_chips, out)
    assert {r.split for r in ChipDataset(out).records if r.scene == "scene_02"} != {"test"}
    result = run_cli("stage=split", f"scenes_dir={synthetic_scenes.scenes_dir}", f"out_dir={out}", *CLI_CHIP,
                     "split.fixed={scene_02: test}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    dataset = ChipDataset(out)
    assert {r.split for r in dataset.records if r.scene == "scene_02"} == {"test"}
    assert dataset.attrs["split"]["fixed"] == {"scene_02": "test"}


def _as_float_reflectance(scene_dir: Path) -> None:
    """Rewrite the B02/B03/B04 bands of a scene as float32 reflectance (DN / 10000), nodata NaN."""
    for band in ("B02", "B03", "B04"):
        path = scene_dir / f"{band}.tif"
        with rasterio.open(path) as src:
            dn, transform, crs = src.read(1), src.transform, src.crs.to_string()
        reflectance = np.where(dn == 0, np.nan, dn / 10000).astype(np.float32)
        write_geotiff(path, reflectance, transform, crs=crs, nodata=np.nan)


def test_one_scene_of_float_bands_splits_by_blocks(tmp_path, synthetic_scenes, burned_area_chips):
    scenes_dir = copy_scenes(synthetic_scenes, tmp_path, n=1)
    _as_float_reflectance(scenes_dir / "scene_00")
    with pytest.raises(InputError, match=r"only 1 usable scene\(s\) .*split.method=blocks"):
        prepare(tiny_config(tmp_path / "by_scene", scenes_dir, synthetic_scenes.polygons))
    out = tmp_path / "out"
    prepare(tiny_config(out, scenes_dir, synthetic_scenes.polygons,
                        split=SplitSettings(method="blocks", block_size_px=112)))
    dataset = ChipDataset(out)
    records = {split: dataset.split_records(split) for split in ("train", "val", "test")}
    assert all(records.values())
    for split, rows in records.items():
        for a in rows:
            assert not any(windows_overlap(a, b) for other in records if other != split for b in records[other])
    info = dataset.index["scenes"]["scene_00"]
    assert info["splits"] == dataset.index["splits"] and sum(info["splits"].values()) <= info["chips"]
    assert dataset.attrs["split"]["method"] == "blocks" and dataset.attrs["split"]["block_size_px"] == 112
    # The float bands give the chips the uint16 bands gave (DN / 10000 stretches alike).
    reference = ChipDataset(burned_area_chips)
    assert info["chips"] == reference.index["scenes"]["scene_00"]["chips"]
    np.testing.assert_array_equal(dataset.open_array("scene_00", "normalized"),
                                  reference.open_array("scene_00", "normalized"))


def windows_overlap(a, b) -> bool:
    return (a.row_off < b.row_off + b.height and b.row_off < a.row_off + a.height
            and a.col_off < b.col_off + b.width and b.col_off < a.col_off + a.width)


def test_polygons_in_another_crs_give_the_same_labels(tmp_path, synthetic_scenes, burned_area_chips):
    polygons = tmp_path / "burns_3857.shp"
    gpd.read_file(synthetic_scenes.polygons).to_crs("EPSG:3857").to_file(polygons)
    out = tmp_path / "out"
    prepare(tiny_config(out, synthetic_scenes.scenes_dir, polygons))
    for scene in synthetic_scenes.scenes:
        with rasterio.open(out / "work" / scene / "label.tif") as a, \
                rasterio.open(burned_area_chips / "work" / scene / "label.tif") as b:
            assert np.mean(a.read(1) != b.read(1)) < 0.002


@pytest.mark.slow
def test_killed_prep_resumes_to_the_complete_dataset(tmp_path):
    from data_prep.synthetic import generate_scenes

    data = generate_scenes(tmp_path / "input", n_scenes=6, size=700, seed=3)
    args = [f"scenes_dir={data.scenes_dir}", f"polygons={data.polygons}", *CLI_CHIP, "progress=false"]
    out = tmp_path / "out"
    kill_module_once("data_prep.burned_area", [*args, f"out_dir={out}"], out / "scenes" / "scene_00" / "chips.json",
                     tmp_path)
    assert not (out / "dataset.json").exists()
    with pytest.raises(InputError, match="incomplete"):
        ChipDataset(out)

    resumed = run_cli(*args, f"out_dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "scene scene_00: chip up to date, skipped" in resumed.stdout
    reference = tmp_path / "reference"
    assert run_cli(*args, f"out_dir={reference}", cwd=tmp_path).returncode == 0
    assert manifest_rows(out) == manifest_rows(reference)
    dataset, expected = ChipDataset(out), ChipDataset(reference)
    for scene in dataset.index["scenes"]:
        for name in ("normalized", "tci", "mask"):
            np.testing.assert_array_equal(dataset.open_array(scene, name), expected.open_array(scene, name))
    assert json.loads((out / "dataset.json").read_text())["splits"] == expected.index["splits"]


@pytest.mark.slow
def test_benchmark_script_reports_its_figures(tmp_path):
    script = REPO / "scripts" / "bench_data_prep.py"
    result = subprocess.run([sys.executable, str(script), "--size", "700", "--work-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=LIMIT_S)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["stages_s"]) == {"normalize", "label", "chip"}
    assert report["windows"] == 16 and 0 < report["peak_rss_mb"] < report["targets"]["peak_rss_mb"]
    assert set(report["met"]) == {"time", "memory"}
    assert list(tmp_path.iterdir()) == []                      # the generated tile is removed
