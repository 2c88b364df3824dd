"""The detection app end to end: synthetic scenes, prep, training of the small detector, its figures."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mmdet", reason="the detection stack is not installed (scripts/setup.sh --detection)")

from helpers.core import run_module  # noqa: E402


@pytest.mark.slow
def test_small_detector_learns_the_synthetic_scenes(tmp_path):
    """Twelve 512 px scenes, 128 px chips, fcos_small for 15 epochs from random weights (about 20 s on
    2 cores): test AP50 at least 0.5, the figure the quick start reaches at full size."""
    scenes, chips, run = tmp_path / "scenes", tmp_path / "chips", tmp_path / "run"
    steps = [
        ("data_prep.synthetic_objects", f"out_dir={scenes}", "n_scenes=12", "size=512", "seed=1"),
        ("data_prep.detection", "format=dota", f"images={scenes / 'images'}", f"labels={scenes / 'labelTxt'}",
         "classes=[vehicle,storage_tank,building,aircraft]", "chip.size=128", f"out_dir={chips}", "progress=false"),
        ("apps.detection", "model=fcos_small", f"data.root={chips}", "epochs=15", "batch_size=8", "num_workers=0",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"),
    ]
    for module, *args in steps:
        done = run_module(module, *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((run / "metrics.json").read_text())
    assert record["metrics"]["test/map_50"] >= 0.5, record["metrics"]
    assert set(record["metrics"]) >= {"test/map", "test/map_75", "test/map_s", "test/ap_vehicle", "test/ap_aircraft"}
    assert record["facts"]["parameters"] > 1e6 and record["facts"]["batch_size"] == 8
    coco = json.loads((chips / "coco" / "test.json").read_text())
    assert coco["annotations"] and [c["name"] for c in coco["categories"]][0] == "vehicle"


def test_batch_size_auto_on_a_cpu_takes_the_default(tmp_path, caplog):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from apps.core.training.train import resolve_batch_size

    cfg = OmegaConf.create({"batch_size": "auto", "default_batch_size": 3})
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=SimpleNamespace(type="cpu")))
    datamodule = SimpleNamespace(batch_size="auto")
    with caplog.at_level("WARNING"):
        assert resolve_batch_size(cfg, trainer, None, datamodule, tmp_path) == 3
    assert datamodule.batch_size == 3 and "no GPU memory to fit" in caplog.text
