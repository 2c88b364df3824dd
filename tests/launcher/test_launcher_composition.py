"""The launcher's sweep composition: every point it derives is Hydra's own composition of that point, and
Hydra composes the config files only once per set of config-group choices."""

from __future__ import annotations

import itertools

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from helpers.core import CONF_DIR
from hydra_plugins.geoscale_kubernetes_launcher._composition import SweepConfigMemo

GRID = {"model": ["unet", "deeplabv3"], "lr": ["1e-3", "0.5"], "model.encoder": ["resnet18", "resnet34"],
        "loss": ["ce", "dice"], "seed": ["0", "7"], "upload.to": ["null", "'s3://b/p q'"]}
"""Two group choices (model, loss) and plain values of several types, a string needing quotes among them."""
FIXED = ["+model.encoder_depth=3", "~callbacks.lr_monitor"]
"""Overrides every point shares: an added key and a deleted one."""


@pytest.fixture
def loader_and_master():
    """Hydra's config loader and the master config of a burned-area sweep, as a sweeper sees them."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("burned_area", ["hydra.sweep.dir=sweep", "hydra/launcher=kubernetes"],
                                           RunMode.MULTIRUN)
        yield loader, master


class CountingLoader:
    """A loader that counts Hydra's full compositions of sweep points."""

    def __init__(self, loader):
        self.loader, self.compositions = loader, 0

    def load_sweep_config(self, master, overrides):
        self.compositions += 1
        return self.loader.load_sweep_config(master, overrides)

    def __getattr__(self, name):
        return getattr(self.loader, name)


@pytest.mark.slow
def test_every_point_is_hydras_own_composition(loader_and_master):
    loader, master = loader_and_master
    counting = CountingLoader(loader)
    memo = SweepConfigMemo(counting)
    points = [[f"{key}={value}" for key, value in zip(GRID, values)] + FIXED
              for values in itertools.product(*GRID.values())]
    for overrides in points:
        derived = memo.load_sweep_config(master, overrides)
        composed = loader.load_sweep_config(master, overrides)
        assert OmegaConf.to_yaml(derived) == OmegaConf.to_yaml(composed), overrides
        assert OmegaConf.is_struct(derived) and not OmegaConf.is_readonly(derived.hydra)
        assert memo.take_sweep_config(master, overrides) is derived
    assert counting.compositions == 4          # one per (model, loss) choice, for 64 points


def test_an_override_hydra_refuses_gets_hydras_error(loader_and_master):
    loader, master = loader_and_master
    memo = SweepConfigMemo(loader)
    memo.load_sweep_config(master, ["lr=1e-3"])
    with pytest.raises(ConfigCompositionException, match="Could not override 'model.no_such_key'"):
        memo.load_sweep_config(master, ["lr=1e-3", "model.no_such_key=1"])
    with pytest.raises(ConfigCompositionException, match="Could not find 'model/unett'"):
        memo.load_sweep_config(master, ["lr=1e-3", "model.encoder=resnet18", "model=unett"])
