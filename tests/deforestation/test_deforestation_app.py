"""The deforestation app on tiny in-memory pair chips: every network trains through the core,
deep supervision, the study's grid, precision=auto, one-line config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.core import CONF_DIR, compose_config, run_module, sweep_points
from data_prep.synthetic_chips import make_pair_chip_dataset

from apps.core.training.precision import resolve_precision
from apps.core.training.train import train
from apps.foundation.errors import InputError

FAST = ["batch_size=4", "num_workers=0", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
NETWORKS = sorted(p.stem for p in (Path(CONF_DIR) / "deforestation" / "model").glob("*.yaml"))
INITS = {"changeformer_v6": ["random", "mit"], "early_fusion_unet": ["random"], "fc_siam_diff": ["random"]}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return make_pair_chip_dataset(tmp_path_factory.mktemp("pairs"), chips_per_scene=4, size=32)


@pytest.fixture(scope="module")
def mit_checkpoint(tmp_path_factory) -> Path:
    """A MiT-style encoder checkpoint (this network's encoder under ``backbone.``), as a local file."""
    from apps.deforestation.changeformer import build_changeformer_v6

    net = build_changeformer_v6()
    path = tmp_path_factory.mktemp("weights") / "mit.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in net.encoder.state_dict().items()}}, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("network, init", [
    (n, i) for n in NETWORKS for i in INITS[n]])
def test_every_network_trains_and_records_the_change_scores(network, init, pairs, mit_checkpoint, tmp_path):
    extra = [f"init.weights_path={mit_checkpoint}"] if init == "mit" else []
    cfg = compose_config("deforestation", [*FAST, f"model={network}", f"init={init}", f"data.root={pairs}",
                                           "epochs=1", "data=stacked", *extra])
    value = train(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["objective"] == {"name": "test/f1", "mode": "max", "value": value}
    for name in ("accuracy", "miou", "f1", "precision", "recall", "iou"):
        assert 0 <= record["metrics"][f"test/{name}"] <= 1
    assert "val/f1" in record["metrics"] and not any(k.startswith("val/") and k != "val/f1" for k in record["metrics"])
    assert record["facts"]["precision"] == resolve_precision("auto")  # as trainer.accelerator=auto resolves it
    assert (tmp_path / "run" / "test_examples.png").stat().st_size > 1000


def test_default_recipe_is_the_studys_best():
    cfg = compose_config("deforestation")
    assert (cfg.lr, cfg.optimizer._target_, cfg.chip_size, list(cfg.data.bands)) == (1e-4, "torch.optim.AdamW", 256, ["nirrg"])
    assert cfg.loss._target_ == "apps.core.tasks.losses.CrossEntropy"
    assert cfg.model.network._target_.endswith("build_changeformer_v6")
    assert list(cfg.task.supervision_weights) == [0.5, 0.5, 0.5, 0.8, 1.0]
    assert cfg.data.root.endswith("/chips_256") and (cfg.monitor, cfg.objective) == ("val/f1", "test/f1")


def test_deep_supervision_weighs_every_output_against_the_resized_mask():
    from apps.deforestation.model import DeforestationTask

    cfg = compose_config("deforestation")
    torch.manual_seed(0)
    task = DeforestationTask(cfg.model.network, cfg.optimizer, supervision_weights=[0.5, 0.5, 0.5, 0.8, 1.0])
    batch = {"before": torch.rand(2, 3, 32, 32), "after": torch.rand(2, 3, 32, 32),
             "mask": torch.randint(0, 2, (2, 32, 32))}
    batch["mask"][:, -4:] = 255  # rows the coarsest (1x1) output does not sample
    task.eval()  # no dropout: the two computations see the same outputs
    with torch.no_grad():
        outputs = task(batch["before"], batch["after"])
        expected = sum(w * torch.nn.functional.cross_entropy(
            o, torch.nn.functional.interpolate(batch["mask"][:, None].float(), o.shape[-2:])[:, 0].long(),
            ignore_index=255) for w, o in zip([0.5, 0.5, 0.5, 0.8, 1.0], outputs))
        assert [o.shape[-1] for o in outputs] == [1, 2, 4, 8, 32]
        assert torch.allclose(task.training_loss(batch), expected)
        task.supervision_weights = [1.0]
        with pytest.raises(InputError, match="1 weight.* 5 output"):
            task.training_loss(batch)


def test_study_grid_has_72_points_that_compose():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("deforestation", overrides=["experiment=deforestation_grid"], return_hydra_config=True)
    points = sweep_points(cfg)
    assert len(points) == 72
    assert {p["chip_size"] for p in points} == {"256", "512"} and {p["data"] for p in points} == {"nirrg", "ndvi", "evi"}
    for point in points[::11]:
        cfg = compose_config("deforestation", ["experiment=deforestation_grid", *(f"{k}={v}" for k, v in point.items())])
        assert cfg.data.root.endswith(f"chips_{point['chip_size']}")


@pytest.mark.slow
@pytest.mark.parametrize("override, needle", [
    ("data.bands=[nir]", "data.bands"),
    ("model=changeformer", "model/changeformer"),
    ("model=fc_siam_diff init=mit init.weights_path=mit.pth", "ChangeFormer only"),
])
def test_bad_settings_fail_with_one_line(override, needle, pairs):
    proc = run_module("apps.deforestation", f"data.root={pairs}", "epochs=1", *FAST, *override.split())
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr


@pytest.mark.slow
def test_reevaluation_needs_no_encoder_checkpoint_and_gives_the_same_scores(pairs, mit_checkpoint, tmp_path, capsys):
    """A run started from a MiT file re-tests from its own checkpoint after that file is gone."""
    from omegaconf import OmegaConf

    from apps.reproduce.__main__ import main as reproduce

    weights = tmp_path / "mit.pth"
    weights.write_bytes(mit_checkpoint.read_bytes())
    cfg = compose_config("deforestation", [*FAST, "init=mit", f"init.weights_path={weights}", f"data.root={pairs}",
                                           "epochs=1", "trainer.deterministic=true"])
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    weights.unlink()
    assert reproduce([str(run_dir), "--evaluate"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["new"] == pytest.approx(result["saved"], abs=1e-6) and "test/f1" in result["new"]


def test_predict_without_scl_says_what_predict_can_do(tmp_path):
    """A model trained on cloud-masked data meets a product without SCL: predict has no cloud-mask setting of
    its own, so its error names what works (the prep's hint, sentinel2.cloud_mask=none, is not an option here)."""
    import argparse
    from types import SimpleNamespace

    from data_prep.synthetic_pairs import generate_pairs

    from apps.deforestation.predict import prepared_pair

    areas, _ = generate_pairs(tmp_path / "input", n_areas=1, size=64, seed=3)
    (areas / "area_00" / "after" / "SCL.tif").unlink()
    task = SimpleNamespace(preparation={"attrs": {"sentinel2": {"cloud_mask": "scl"}}}, bands=["nirrg"])
    args = argparse.Namespace(before=areas / "area_00" / "before", after=areas / "area_00" / "after")
    with pytest.raises(InputError, match=r"product .*area_00/after: no SCL band for the cloud mask \(.*; the model's "
                                         r"training data was cloud-masked with SCL: give the product its SCL band"):
        with prepared_pair(task, args, tmp_path / "work"):
            pass
    assert not any((tmp_path / "work").glob("*"))
