"""Whole-scene prediction: the core's exact stitching, the burned-area command line end to end, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from helpers.core import TINY_MODEL, compose_config, run_module

from apps.burned_area.predict import main
from apps.core.prediction.masks import coverage, output_paths, predict_scene, tent
from apps.foundation.errors import InputError

TINY_NET = {"_target_": "apps.burned_area.model.smp_network", "_partial_": True,
            "arch": "unet", "encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]}


class PixelwiseTask(torch.nn.Module):
    """Stand-in task: class-1 logit 10 * (channel 0 of ``image`` - 0.5), class-0 logit 0, pixel by pixel."""

    def forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = batch["image"]
        return torch.cat([torch.zeros_like(image[:, :1]), 10 * (image[:, :1] - 0.5)], dim=1)


def write_image(path: Path, image: np.ndarray) -> Path:
    """A (3, H, W) uint8 GeoTIFF in UTM 10N, 10 m pixels, nodata 0."""
    profile = {"driver": "GTiff", "width": image.shape[2], "height": image.shape[1], "count": 3, "dtype": "uint8",
               "crs": "EPSG:32610", "transform": from_origin(500_000, 4_200_000, 10, 10), "nodata": 0}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


def make_checkpoint(path: Path, input_set: str, preparation: dict | None = None,
                    saved_model: dict | None = None) -> Path:
    """An untrained tiny BurnedAreaTask saved as a Lightning checkpoint (loads like a trained one), with
    ``preparation`` as the training dataset's record and ``saved_model``, if given, as the ``model``
    hyperparameter in place of the task's (the form an older geoscale wrote)."""
    import pytorch_lightning as pl

    from apps.burned_area.model import BurnedAreaTask

    task = BurnedAreaTask(model=TINY_NET, init={"weights": None}, input_set=input_set,
                          optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3})
    task.preparation = preparation or {}
    hyper_parameters = {**task.hparams, "model": saved_model or task.hparams["model"]}
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": hyper_parameters,
                  "pytorch-lightning_version": pl.__version__}
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_tent_weight_is_positive_and_peaks_at_the_centre():
    for size in (1, 2, 7, 64):
        ramp = tent(size)
        assert ramp.shape == (size,) and (ramp > 0).all() and ramp.max() == 1
        assert np.array_equal(ramp, ramp[::-1]) and ramp[(size - 1) // 2] == 1
    assert tent(4).tolist() == [0.5, 1, 1, 0.5]
    assert coverage(np.array([0, 2]), tent(4), 6).tolist() == [0.5, 1, 1.5, 1.5, 1, 0.5]


@pytest.mark.parametrize("width, height", [(300, 230), (50, 40)])
def test_stitching_equals_the_function_on_the_whole_image(tmp_path, width, height):
    """Overlapping, edge-flush and (for the small raster) padded windows blend back to exactly the
    pixelwise result; nodata stays 255; the output sits on the input's grid."""
    rng = np.random.default_rng(width)
    image = rng.integers(1, 256, (3, height, width), dtype=np.uint8)
    image[:, : height // 4, : width // 3] = 0  # a corner without data
    image[1, -1, :] = 0  # one band zero alone is still data
    source = write_image(tmp_path / "image.tif", image)

    summary = predict_scene(PixelwiseTask(), {"image": source}, tmp_path / "out", chip_size=64, overlap=0.25, batch_size=3,
                            class_name="burned", show_progress=False)

    logits = torch.stack([torch.zeros(height, width), 10 * (torch.from_numpy(image[0]).float() / 255 - 0.5)])
    probability = torch.softmax(logits, dim=0)[1].numpy()
    valid = (image != 0).any(axis=0)
    expected_mask = np.where(valid, probability >= 0.5, 255)
    expected_probability = np.where(valid, np.rint(probability * 254), 255)
    with rasterio.open(tmp_path / "out.tif") as out, rasterio.open(source) as src:
        assert (out.crs, out.transform, out.shape, out.count) == (src.crs, src.transform, src.shape, 2)
        assert out.nodata == 255 and out.dtypes == ("uint8", "uint8")
        mask, scaled = out.read()
    assert np.array_equal(mask, expected_mask)
    assert np.array_equal(scaled, expected_probability)
    assert summary["valid_pixels"] == valid.sum() and summary["burned_pixels"] == (expected_mask == 1).sum()
    assert summary["burned_ha"] == pytest.approx(summary["burned_pixels"] * 100 / 1e4)
    assert leftovers(tmp_path) == ["image.tif", "out.geojson", "out.tif"]


def test_polygons_carry_their_area_and_small_ones_are_dropped(tmp_path):
    import geopandas as gpd

    image = np.full((3, 40, 60), 10, dtype=np.uint8)  # unburned everywhere but two bright squares
    image[0, 5:7, 5:7] = 250  # 4 px = 400 m2
    image[0, 20:30, 30:40] = 250  # 100 px = 10000 m2
    source = write_image(tmp_path / "image.tif", image)
    summary = predict_scene(PixelwiseTask(), {"image": source}, tmp_path / "out", chip_size=32, min_area_m2=500,
                            class_name="burned", show_progress=False)
    polygons = gpd.read_file(tmp_path / "out.geojson")
    assert polygons.crs.to_epsg() == 4326
    import pyogrio  # the layer is named after the output, not after the temporary file it was written as

    assert [name for name, _ in pyogrio.list_layers(tmp_path / "out.geojson")] == ["out"]
    assert polygons["area_m2"].tolist() == [10000.0]
    assert summary["polygons"] == 1 and summary["burned_ha"] == pytest.approx(1.04)
    assert polygons.to_crs("EPSG:32610").area.iloc[0] == pytest.approx(10000, rel=1e-3)


def test_input_without_data_is_rejected_and_nothing_is_written(tmp_path):
    source = write_image(tmp_path / "image.tif", np.zeros((3, 30, 30), dtype=np.uint8))
    with pytest.raises(InputError, match="no valid pixels"):
        predict_scene(PixelwiseTask(), {"image": source}, tmp_path / "out", chip_size=16, show_progress=False)
    assert leftovers(tmp_path) == ["image.tif"]


def test_output_paths_take_a_prefix_or_a_tif_name(tmp_path):
    assert output_paths(tmp_path / "a.b") == (tmp_path / "a.b.tif", tmp_path / "a.b.geojson")
    assert output_paths(tmp_path / "a.tif") == (tmp_path / "a.tif", tmp_path / "a.geojson")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """One synthetic Sentinel-2 scene folder (B02, B03, B04, B08, TCI) of about 200 px."""
    from data_prep.synthetic import generate_scenes

    data = generate_scenes(tmp_path_factory.mktemp("synthetic"), n_scenes=1, size=200, seed=11)
    return data.scenes_dir / data.scenes[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory of a tiny U-Net trained for one epoch on in-memory disc chips (normalized input)."""
    from apps.core.training.train import train
    from data_prep.synthetic_chips import make_chip_dataset

    root = tmp_path_factory.mktemp("predict_run")
    chips = make_chip_dataset(root / "chips", chips_per_scene=8, size=32)
    cfg = compose_config(overrides=[*TINY_MODEL, f"data.root={chips}", "epochs=1"])
    train(cfg, root / "run")
    return root / "run"


def check_on_scene_grid(tif: Path, geojson: Path, scene: Path) -> None:
    import geopandas as gpd
    from rasterio.warp import transform_bounds

    with rasterio.open(tif) as out, rasterio.open(scene / "B04.tif") as band:
        assert (out.crs, out.transform, out.shape) == (band.crs, band.transform, band.shape)
        assert set(np.unique(out.read(1))) <= {0, 1, 255}
        west, south, east, north = transform_bounds(band.crs, "EPSG:4326", *band.bounds, densify_pts=21)
    polygons = gpd.read_file(geojson)
    assert polygons.crs.to_epsg() == 4326 and len(polygons) > 0 and (polygons["area_m2"] > 0).all()
    left, bottom, right, top = polygons.total_bounds
    eps = 1e-6
    assert west - eps <= left and right <= east + eps and south - eps <= bottom and top <= north + eps


@pytest.mark.slow
def test_command_line_end_to_end(run_dir, scene, tmp_path):
    """Train a tiny model, then predict a whole synthetic scene from its run directory in a child process."""
    proc = run_module("apps.burned_area.predict", str(run_dir), str(scene), "--out", str(tmp_path / "pred"),
                      "--chip-size", "64", "--batch-size", "4", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    best = json.loads((run_dir / "metrics.json").read_text())["facts"]["best_checkpoint"]
    assert summary["checkpoint"] == str(run_dir / best) and summary["input_set"] == "normalized"
    assert summary["tif"] == str(tmp_path / "pred.tif") and summary["valid_pixels"] > 0
    check_on_scene_grid(tmp_path / "pred.tif", tmp_path / "pred.geojson", scene)
    assert leftovers(tmp_path) == ["pred.geojson", "pred.tif"]  # the normalized temporary is gone


def test_tci_checkpoint_predicts_from_the_scene_tci(scene, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "tci.ckpt", "tci")
    out = tmp_path / "out" / "pred"
    assert main([str(checkpoint), str(scene), "--out", str(out), "--chip-size", "48", "--overlap", "0.5",
                 "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["input_set"] == "tci" and summary["chip_size"] == 48
    with rasterio.open(out.with_suffix(".tif")) as pred:
        assert pred.tags()["input_set"] == "tci"
    assert leftovers(out.parent) == ["pred.geojson", "pred.tif"]


def test_a_checkpoint_whose_model_names_only_its_arch_loads_and_predicts(scene, tmp_path, capsys):
    """Burned-area checkpoints written before the model configs carried a ``_target_`` hold
    ``model: {arch, encoder, ...}``: they load as the same network and predict."""
    from apps.core.prediction.checkpoint import load_task

    arch_only = {k: v for k, v in TINY_NET.items() if k not in ("_target_", "_partial_")}
    checkpoint = make_checkpoint(tmp_path / "old.ckpt", "tci", saved_model=arch_only)
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["hyper_parameters"]["model"] == arch_only
    task = load_task(checkpoint, "cpu")
    assert type(task.net).__name__ == "Unet" and len(task.net.decoder.blocks) == 3
    assert all(torch.equal(value, saved["state_dict"][key]) for key, value in task.state_dict().items())
    out = tmp_path / "pred"
    assert main([str(checkpoint), str(scene), "--out", str(out), "--chip-size", "48", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["valid_pixels"] > 0
    assert leftovers(tmp_path) == ["old.ckpt", "pred.geojson", "pred.tif"]


def assert_rejected(proc_or_code, stderr: str, *names: str) -> None:
    assert proc_or_code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for name in names:
        assert name in lines[0]


def test_missing_checkpoint_exits_2_with_one_line(scene, tmp_path):
    missing = tmp_path / "no_such.ckpt"
    proc = run_module("apps.burned_area.predict", str(missing), str(scene), "--out", str(tmp_path / "out" / "p"))
    assert_rejected(proc.returncode, proc.stderr, str(missing), "not found")
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_scene_with_a_band_missing_exits_2_with_one_line(scene, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "normalized.ckpt", "normalized")
    broken = tmp_path / "scene"
    shutil.copytree(scene, broken)
    (broken / "B03.tif").unlink()
    proc = run_module("apps.burned_area.predict", str(checkpoint), str(broken), "--out", str(tmp_path / "out" / "p"))
    assert_rejected(proc.returncode, proc.stderr, str(broken), "B03 missing")
    assert leftovers(tmp_path) == ["normalized.ckpt", "scene"]


@pytest.mark.parametrize("case", ["junk checkpoint", "run without checkpoint", "TCI missing", "bad overlap"])
def test_bad_input_exits_2_in_process(scene, tmp_path, capsys, case):
    checkpoint = tmp_path / "model.ckpt"
    scene_arg, extra = scene, []
    if case == "junk checkpoint":
        checkpoint.write_bytes(b"not a checkpoint")
        names = [str(checkpoint), "cannot be loaded"]
    elif case == "run without checkpoint":
        checkpoint = tmp_path / "run"
        (checkpoint / "checkpoints").mkdir(parents=True)
        names = [str(checkpoint), "last.ckpt"]
    elif case == "TCI missing":
        make_checkpoint(checkpoint, "tci")
        scene_arg = tmp_path / "scene"
        shutil.copytree(scene, scene_arg, ignore=shutil.ignore_patterns("TCI.tif"))
        names = [str(scene_arg), "TCI missing"]
    else:
        make_checkpoint(checkpoint, "normalized")
        extra = ["--overlap", "1"]
        names = ["--overlap"]
    before = leftovers(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(checkpoint), str(scene_arg), "--out", str(tmp_path / "out" / "p"), "--device", "cpu", *extra])
    assert_rejected(exit_info.value.code, capsys.readouterr().err, *names)
    assert leftovers(tmp_path) == before


def test_scene_is_normalized_with_the_training_datasets_percentiles(scene, tmp_path, capsys, monkeypatch):
    """The checkpoint carries how its training chips were stretched; predict stretches the scene alike."""
    import data_prep.normalize

    checkpoint = make_checkpoint(tmp_path / "model.ckpt", "normalized",
                                 preparation={"attrs": {"normalize": {"low_percentile": 5, "high_percentile": 95}}})
    used = []
    original = data_prep.normalize.normalize_bands

    def recording(bands, out, settings, *args, **kwargs):
        used.append(settings)
        return original(bands, out, settings, *args, **kwargs)

    monkeypatch.setattr(data_prep.normalize, "normalize_bands", recording)
    assert main([str(checkpoint), str(scene), "--out", str(tmp_path / "p"), "--chip-size", "64", "--device", "cpu"]) == 0
    assert [(s.low_percentile, s.high_percentile) for s in used] == [(5, 95)]


class DifferenceTask(torch.nn.Module):
    """Stand-in pair task: class-1 logit 10 * (after - before) on channel 0, class-0 logit 0."""

    def forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        difference = batch["after"][:, :1] - batch["before"][:, :1]
        return torch.cat([torch.zeros_like(difference), 10 * difference], dim=1)


def test_pairs_of_stacked_rasters_predict_where_both_dates_have_data(tmp_path):
    """Several rasters per sample key are stacked in order; a pixel without data in either date is nodata."""
    rng = np.random.default_rng(5)
    before = rng.integers(1, 256, (3, 70, 90), dtype=np.uint8)
    after = rng.integers(1, 256, (3, 70, 90), dtype=np.uint8)
    before[:, :10] = 0  # the first rows without data in the earlier date only
    inputs = {"before": [write_image(tmp_path / "before_a.tif", before), write_image(tmp_path / "before_b.tif", before)],
              "after": [write_image(tmp_path / "after.tif", after)]}
    summary = predict_scene(DifferenceTask(), inputs, tmp_path / "out", chip_size=32, class_name="change",
                            show_progress=False)
    logits = 10 * (after[0].astype(np.float32) - before[0].astype(np.float32)) / 255
    expected = np.where((before != 0).any(axis=0), (1 / (1 + np.exp(-logits))) >= 0.5, 255)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.descriptions == ("change", "change_probability")
        assert np.array_equal(out.read(1), expected)
    assert summary["change_pixels"] == (expected == 1).sum() and summary["valid_pixels"] == 60 * 90


def test_checkpoint_naming_no_task_class_exits_2_with_one_line(scene, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "model.ckpt", "normalized")
    state = torch.load(checkpoint, weights_only=True)
    del state["task_class"]
    torch.save(state, checkpoint)
    with pytest.raises(SystemExit) as exit_info:
        main([str(checkpoint), str(scene), "--out", str(tmp_path / "out" / "p"), "--device", "cpu"])
    assert_rejected(exit_info.value.code, capsys.readouterr().err, str(checkpoint), "names no task class")
    assert not (tmp_path / "out").exists()
