"""The Hydra config tree: every choice composes, the study's presets, one-line config errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra.utils import instantiate

from helpers.core import CONF_DIR, LIMIT_S, REPO, compose_config, run_module, sweep_points


def group_options(group: str, app: str = "burned_area") -> list[str]:
    root = Path(CONF_DIR)
    folders = [root / group, root / app / group, root / "segmentation" / group]
    return sorted(p.stem for folder in folders for p in folder.glob("*.yaml"))


def test_top_level_study_names():
    cfg = compose_config(overrides=["lr=0.01", "batch_size=16", "epochs=7", "seed=3"])
    assert cfg.optimizer.lr == 0.01
    assert cfg.data.batch_size == 16
    assert cfg.trainer.max_epochs == 7
    assert cfg.seed == 3
    assert cfg.task.optimizer.lr == 0.01


@pytest.mark.parametrize("app, spelled_out", [
    ("burned_area", ["model.encoder=resnet18", "+model.encoder_depth=3", "+model.decoder_channels=[32,16,8]"]),
    ("deforestation", ["model=fc_siam_diff"]),
    ("detection", ["model=fcos_small", "batch_size=2"]),
])
def test_debug_tiny_is_the_tiny_network_and_a_model_choice_still_wins(app, spelled_out):
    loader = ["num_workers=0", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
    batch = [] if app == "detection" else ["batch_size=4"]
    assert compose_config(app, ["debug=tiny"]) == compose_config(app, [*spelled_out, *batch, *loader])
    if app != "burned_area":
        other = "changeformer_v6" if app == "deforestation" else "yolov3"
        assert compose_config(app, ["debug=tiny", f"model={other}"]).model == compose_config(app, [f"model={other}"]).model


def test_every_optimizer_and_scheduler_builds():
    import torch

    from apps.core.tasks.base import BaseTask

    class Linear(BaseTask):
        def __init__(self, optimizer, scheduler):
            super().__init__(optimizer, scheduler)
            self.layer = torch.nn.Linear(2, 1)

    expected = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "lamb": "Lamb"}
    # The two groups are independent: each choice is composed once and every pair is built.
    optimizers = {name: compose_config(overrides=[f"optimizer={name}", "lr=0.5"]).optimizer
                  for name in group_options("optimizer")}
    schedulers = {name: compose_config(overrides=[f"scheduler={name}"]).scheduler for name in group_options("scheduler")}
    for optimizer, scheduler in itertools.product(optimizers, schedulers):
        built = Linear(optimizers[optimizer], schedulers[scheduler]).configure_optimizers()
        opt = built["optimizer"] if isinstance(built, dict) else built
        assert type(opt).__name__ == expected[optimizer]
        assert opt.param_groups[0]["lr"] == 0.5
        assert isinstance(built, dict) == (scheduler != "none")


def test_step_schedule_halves_every_50_epochs():
    import torch

    cfg = compose_config(overrides=["scheduler=step", "lr=1.0"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = instantiate(cfg.scheduler)(opt)
    lrs = []
    for _ in range(150):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == lrs[49] == 1.0 and lrs[50] == lrs[99] == 0.5 and lrs[100] == 0.25


def test_study_grid_preset_is_144_runs():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("burned_area", overrides=["experiment=burned_area_grid"], return_hydra_config=True)
    points = sweep_points(cfg)
    assert len(points) == 144
    assert {p["model"] for p in points} == {"unet", "deeplabv3"}
    assert sum(p["model"] == "unet" for p in points) == 72
    assert cfg.epochs == 100
    for point in points[:: 37]:  # every choice in the grid names a real option
        compose_config(overrides=["experiment=burned_area_grid", *(f"{k}={v}" for k, v in point.items())])


def test_study_final_preset():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("burned_area", overrides=["experiment=burned_area_final"], return_hydra_config=True)
    assert [p["model"] for p in sweep_points(cfg)] == ["unet", "unetplusplus", "deeplabv3", "deeplabv3plus"]
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (200, 1e-5, 32)
    assert cfg.optimizer._target_ == "timm.optim.Lamb"
    assert (cfg.scheduler.step_size, cfg.scheduler.gamma) == (50, 0.5)
    assert cfg.init.weights == "imagenet"


@pytest.mark.parametrize("override, needle", [
    ("lrr=0.1", "lrr"),
    ("model=unett", "model/unett"),
    ("optimizer=adamm", "optimizer/adamm"),
])
def test_config_typos_fail_with_one_line(override, needle):
    proc = run_module("apps.burned_area", override)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr


def test_run_directories_never_collide():
    """Two sweeps (separate processes, same second) resolve different directories."""
    code = ("from helpers.core import compose_config\n"
            "from hydra import compose, initialize_config_dir\n"
            "from hydra.core.hydra_config import HydraConfig\n"
            "from omegaconf import OmegaConf\n"
            "from apps.foundation.cli import CONF_DIR\n"
            "from apps.foundation.cli import register_resolvers\n"
            "register_resolvers()\n"
            "with initialize_config_dir(config_dir=CONF_DIR, version_base='1.3'):\n"
            "    cfg = compose('burned_area', return_hydra_config=True)\n"
            "HydraConfig.instance().set_config(cfg)\n"
            "print(cfg.hydra.sweep.dir, cfg.hydra.run.dir, cfg.hydra.sweep.dir)\n")
    import subprocess, sys  # noqa: E401

    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=str(REPO / "tests"), stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=LIMIT_S)[0].split() for p in procs]
    (sweep_a, run_a, sweep_a2), (sweep_b, run_b, _) = outputs
    assert sweep_a == sweep_a2, "a sweep directory must resolve the same every time within one process"
    assert sweep_a != sweep_b and run_a != run_b


def test_focal_loss_is_softmax_cross_entropy_weighted_by_difficulty():
    import torch

    from apps.core.tasks.losses import FocalLoss

    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0] = 255
    labelled = target != 255
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none")[labelled]
    assert torch.allclose(FocalLoss(255, gamma=0.0)(logits, target), ce.mean())
    p_t = torch.exp(-ce)
    assert torch.allclose(FocalLoss(255, gamma=2.0)(logits, target), ((1 - p_t) ** 2 * ce).mean())
    weights = torch.tensor([1.0, 2.0, 3.0])
    weighted = FocalLoss(255, gamma=2.0, class_weights=weights.tolist())(logits, target)
    assert torch.allclose(weighted, ((1 - p_t) ** 2 * ce * weights[target[labelled]]).mean())
