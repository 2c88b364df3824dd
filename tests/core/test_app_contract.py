"""The contract every training app keeps, checked the same way for each: its config composes, its
task and data build, it fits a batch, tests, records its run, and its checkpoint predicts a tiny scene."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from helpers.core import compose_config

from apps.core.training.train import train
from apps.foundation.rundir import read_completed, resolve_checkpoint


@dataclass(frozen=True)
class AppCase:
    """How to exercise one app: tiny overrides, in-memory chips, and a tiny scene for its predict command."""

    name: str
    overrides: tuple[str, ...]
    make_chips: Callable[[Path], Path]
    predict_main: str
    make_scene: Callable[[Path], list[str]]
    check_outputs: Callable[[dict, Path], None]


def burned_area_scene(folder: Path) -> list[str]:
    from data_prep.synthetic import generate_scenes

    data = generate_scenes(folder, n_scenes=1, size=96, seed=3)
    return [str(data.scenes_dir / data.scenes[0])]


def deforestation_pair(folder: Path) -> list[str]:
    from data_prep.synthetic_pairs import generate_pairs

    areas_dir, _ = generate_pairs(folder, n_areas=1, size=96, seed=3)
    area = next(p for p in sorted(areas_dir.iterdir()) if p.is_dir())
    return [str(area / "before"), str(area / "after")]


def object_scene(folder: Path) -> list[str]:
    from data_prep.synthetic_objects import generate_object_scenes

    data = generate_object_scenes(folder, n_scenes=1, size=128, seed=3)
    return [str(data.images / f"{data.scenes[0]}.tif")]


def box_chips(root: Path) -> Path:
    from helpers.detection import make_box_dataset

    return make_box_dataset(root, chips_per_scene=2, size=64)


def class_map(class_name: str) -> Callable[[dict, Path], None]:
    """The pixel-wise apps' outputs: OUT.tif and OUT.geojson of ``class_name``, over valid pixels."""
    def check(summary: dict, out: Path) -> None:
        assert summary["valid_pixels"] > 0 and f"{class_name}_ha" in summary
        assert Path(summary["tif"]).is_file() and Path(summary["geojson"]).is_file()
        assert sorted(p.name for p in out.parent.iterdir()) == ["map.geojson", "map.tif"]
    return check


def boxes(summary: dict, out: Path) -> None:
    """The detection app's outputs: boxes as GeoJSON in the scene's CRS and in EPSG:4326, and COCO results."""
    assert summary["georeferenced"] and summary["windows"] >= 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["map.4326.geojson", "map.coco.json", "map.geojson"]
    assert isinstance(json.loads(Path(summary["coco"]).read_text()), list)


def pair_chips(root: Path) -> Path:
    from data_prep.synthetic_chips import make_pair_chip_dataset

    return make_pair_chip_dataset(root, chips_per_scene=2, size=32)


def segmentation_chips(root: Path) -> Path:
    from data_prep.synthetic_chips import make_chip_dataset

    return make_chip_dataset(root, chips_per_scene=2, size=32)


ONE_BATCH = ("epochs=1", "batch_size=2", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
             "trainer.num_sanity_val_steps=0")
APPS = [
    pytest.param(AppCase("burned_area", ("debug=tiny",), segmentation_chips, "apps.burned_area.predict",
                         burned_area_scene, class_map("burned")), marks=pytest.mark.slow, id="burned_area"),
    pytest.param(AppCase("deforestation", ("debug=tiny",), pair_chips, "apps.deforestation.predict",
                         deforestation_pair, class_map("change")), marks=pytest.mark.slow, id="deforestation"),
    pytest.param(AppCase("deforestation", ("debug=tiny", "model=changeformer_v6"), pair_chips, "apps.deforestation.predict",
                         deforestation_pair, class_map("change")), marks=pytest.mark.slow,
                 id="deforestation-changeformer"),
    pytest.param(AppCase("detection", ("debug=tiny",), box_chips, "apps.detection.predict", object_scene, boxes),
                 marks=pytest.mark.slow, id="detection"),
]


@pytest.mark.parametrize("app", APPS, ids=lambda app: app.name)
def test_app_trains_records_and_predicts(app: AppCase, tmp_path, capsys):
    import importlib

    chips = app.make_chips(tmp_path / "chips")
    cfg = compose_config(app.name, [*ONE_BATCH, *app.overrides, f"data.root={chips}"])
    assert cfg.app == app.name
    value = train(cfg, tmp_path / "run")
    record = read_completed(tmp_path / "run")
    assert (record.kind, record.app, record.value) == ("train", app.name, value)
    assert record.facts["global_step"] == 1 and record.facts["parameters"] > 0
    # Every image fed (a change pair counts two), at 4 bytes a value: at least one batch each of train, val, test.
    images, imagery_bytes = record.facts["images_processed"], record.facts["imagery_bytes"]
    assert images >= 3 and imagery_bytes >= images * 3 * 32 * 32 * 4 and imagery_bytes % 4 == 0

    checkpoint = resolve_checkpoint(tmp_path / "run")
    scene = app.make_scene(tmp_path / "scene")
    out = tmp_path / "pred" / "map"
    code = importlib.import_module(app.predict_main).main(
        [str(tmp_path / "run"), *scene, "--out", str(out), "--chip-size", "64", "--device", "cpu"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["checkpoint"] == str(checkpoint)
    app.check_outputs(summary, out)
