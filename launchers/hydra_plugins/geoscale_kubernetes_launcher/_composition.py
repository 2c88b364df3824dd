"""Composing a large sweep's points in seconds: each point's config is derived from one composition of
its config-group choices, the way Hydra itself derives it.

Hydra composes a point in two steps (``ConfigLoaderImpl._load_configuration_impl``): the overrides that
shape the defaults list (config-group choices, ``hydra.*`` settings, package overrides) pick and merge
the config files, then the others (``key=value``, ``+key=value``, ``~key``) are applied to the result in
their order, and the overrides are recorded in ``hydra.overrides`` and ``hydra.job.override_dirname``.
The first step is nearly all of its ~0.1 s a point, and a grid of plain values repeats it identically
for every point. ``SweepConfigMemo`` does it once per distinct set of shaping overrides, then for each
point copies that composition and applies the point's value overrides with Hydra's own routine. A
point that cannot take this path (an override Hydra would refuse, a value that does not fit) takes
Hydra's full path, which gives Hydra's own result or error. ``tests/launcher/test_launcher_composition.py``
compares every point of a grid that changes values and group choices with Hydra's composition.
"""

from __future__ import annotations

import copy
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.config_loader import ConfigLoader
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict


class SweepConfigMemo(ConfigLoader):
    """A config loader that composes sweep points fast (module doc) and keeps each point's config until
    the launcher takes it.

    Why it wraps the loader: Hydra's sweepers compose every point once to check the batch before
    launching it, and the launcher needs the same configs. Hydra has no hook for either, so
    ``KubernetesLauncher.setup`` puts this loader into the sweep's HydraContext, which the sweeper
    shares: the sweeper's compositions then pass through here. Every other call goes straight to the
    wrapped loader (they are ConfigLoader's abstract methods, so each is spelled out).
    """

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.composed: dict[tuple[str, ...], DictConfig] = {}
        self._bases: dict[tuple[str, ...], DictConfig] = {}
        self._parsed: dict[str, Override] = {}
        self._groups: dict[str, bool] = {}
        self._parser = OverridesParser.create()

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        self.composed[tuple(sweep_overrides)] = config = self._compose(master_config, sweep_overrides)
        return config

    def take_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """The point's config composed earlier (forgotten here once taken), else composed now."""
        config = self.composed.pop(tuple(sweep_overrides), None)
        return config if config is not None else self._compose(master_config, sweep_overrides)

    def _compose(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        derived = self._derived(master_config, sweep_overrides)
        return derived if derived is not None else self.loader.load_sweep_config(master_config, sweep_overrides)

    def _derived(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig | None:
        """The point's config from the composition of its shaping overrides, or None where it must take
        Hydra's full path."""
        try:
            parsed = [self._parse(line) for line in sweep_overrides]
        except Exception:
            return None
        choices = master_config.hydra.runtime.choices
        shapes = [self._shapes_defaults(o, choices) for o in parsed]
        shaping = tuple(o.input_line for o, shaped in zip(parsed, shapes) if shaped)
        values = [o for o, shaped in zip(parsed, shapes) if not shaped]
        try:
            base = self._bases.get(shaping)
            if base is None:
                base = self._bases[shaping] = self.loader.load_sweep_config(master_config, list(shaping))
            config = copy.deepcopy(base)
            ConfigLoaderImpl._apply_overrides_to_config(values, config)
        except Exception:  # Hydra's full path gives its own error, or its own result
            return None
        task = [o for o in parsed if not o.is_hydra_override()]
        names = config.hydra.job.config.override_dirname
        with open_dict(config.hydra):
            config.hydra.overrides.task = [o.input_line for o in task]
            config.hydra.job.override_dirname = get_overrides_dirname(
                overrides=task, kv_sep=names.kv_sep, item_sep=names.item_sep, exclude_keys=names.exclude_keys)
        OmegaConf.copy_cache(from_config=master_config, to_config=config)
        return config

    def _parse(self, line: str) -> Override:
        if line not in self._parsed:
            [self._parsed[line]] = self._parser.parse_overrides([line])
        return self._parsed[line]

    def _shapes_defaults(self, override: Override, choices: DictConfig) -> bool:
        """Whether ``override`` picks or changes the defaults list: a hydra setting, a package override,
        or a config group's choice (a group of the sweep's defaults tree, ``choices``, or one the search
        path holds, for ``+group=option``)."""
        if override.is_hydra_override() or override.package is not None:
            return True
        group = override.key_or_group.replace(".", "/")
        if group not in self._groups:
            parent, _, name = group.rpartition("/")
            self._groups[group] = group in choices or name in self.loader.list_groups(parent)
        return self._groups[group]

    def load_configuration(self, config_name: str | None, overrides: list[str], run_mode: RunMode,
                           from_shell: bool = True, validate_sweep_overrides: bool = True) -> DictConfig:
        return self.loader.load_configuration(config_name, overrides, run_mode, from_shell, validate_sweep_overrides)

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, group_name: str, results_filter: ObjectType | None = ObjectType.CONFIG,
                          config_name: str | None = None, overrides: list[str] | None = None) -> list[str]:
        return self.loader.get_group_options(group_name, results_filter, config_name, overrides)

    def compute_defaults_list(self, config_name: str | None, overrides: list[str], run_mode: RunMode) -> Any:
        return self.loader.compute_defaults_list(config_name, overrides, run_mode)
