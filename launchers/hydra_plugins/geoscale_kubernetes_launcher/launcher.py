"""The Kubernetes launcher: each sweep point of a Hydra multirun as one Kubernetes Job."""


import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from apps.foundation.errors import RemoteRunFailed
from apps.foundation.rundir import SWEEP_MANIFEST_DIR

from ._composition import SweepConfigMemo
from ._geoscale import PointAdapter
from .manifests import job_name, render_point, sweep_id

log = logging.getLogger(__name__)

YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
"""libyaml's dumper where PyYAML has it: several times the pure-Python one's speed, for large sweeps."""
LAUNCH_SUMMARY = "Kubernetes launcher:"
"""Starts the log line giving each batch's points and the launcher's own wall time."""
SWEEP_ONLY_HYDRA_KEYS = ("hydra/launcher", "hydra.launcher", "hydra/sweeper", "hydra.sweeper", "hydra.sweep",
                         "hydra.run", "hydra.mode")
"""Hydra settings of the sweep itself, not of its jobs: a pod gets every other Hydra override of the sweep."""


class PointFailed(RemoteRunFailed):
    """A sweep point whose Job failed, was deleted or timed out."""


@dataclass
class SweepPoint:
    """One sweep point: its job number, overrides, composed config, local run dir and manifests;
    ``pod_overrides``: the overrides its pod runs with beyond ``overrides`` (``PointAdapter.pod_overrides``)."""

    num: int
    overrides: list[str]
    config: DictConfig
    run_dir: Path
    name: str
    manifests: list[dict[str, Any]]
    pod_overrides: list[str]


def app_module(settings: dict[str, Any]) -> str:
    """The module the pods run: the setting, else the one this process runs as ``python -m``."""
    if settings["app_module"]:
        return settings["app_module"]
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        raise ValueError("hydra.launcher.app_module is not set and the app was not run with python -m")
    return spec.name.removesuffix(".__main__")


def job_hydra_overrides(config: DictConfig) -> list[str]:
    """The sweep's Hydra overrides that shape each job (``hydra.job.chdir``, ``hydra.job.name``, logging,
    ...), as the pods get them: without those of SWEEP_ONLY_HYDRA_KEYS."""
    def sweep_only(override: str) -> bool:
        key = override.split("=", 1)[0].lstrip("+~")
        return any(key == prefix or key.startswith(f"{prefix}.") for prefix in SWEEP_ONLY_HYDRA_KEYS)

    return [override for override in config.hydra.overrides.hydra if not sweep_only(override)]


def write_manifests(points: Sequence[SweepPoint], manifest_dir: Path) -> None:
    """Each point's manifests as one YAML file ``<manifest_dir>/<job name>.yaml``."""
    manifest_dir.mkdir(parents=True, exist_ok=True)
    for point in points:
        text = yaml.dump_all(point.manifests, Dumper=YAML_DUMPER, sort_keys=False)
        (manifest_dir / f"{point.name}.yaml").write_text(text)


def save_hydra_files(point: SweepPoint) -> None:
    """The point's ``.hydra/`` files in its local run dir, as Hydra writes them (config.yaml,
    hydra.yaml, overrides.yaml), unless there already: with the metrics record that comes back
    from the pod, the local sweep directory reads like a local multirun's (summaries, reproduce).
    They hold what the pod ran: its own overrides (``pod_overrides``) are applied and listed too."""
    from apps.foundation.files import atomic_write_text
    from apps.foundation.rundir import CONFIG_NAME, HYDRA_CONFIG_NAME, OVERRIDES_NAME

    subdir = point.config.hydra.output_subdir
    if subdir is None:
        return
    hydra_dir = point.run_dir / str(subdir)
    hydra_dir.mkdir(parents=True, exist_ok=True)
    config = point.config
    with open_dict(config):
        for override in point.pod_overrides:
            key, value = override.split("=", 1)
            OmegaConf.update(config, key, yaml.safe_load(value), force_add=True)
        config.hydra.overrides.task = [*config.hydra.overrides.task, *point.pod_overrides]
    files = {CONFIG_NAME: lambda: OmegaConf.to_container(task_part(config), enum_to_str=True),
             HYDRA_CONFIG_NAME: lambda: {"hydra": OmegaConf.to_container(config.hydra, enum_to_str=True)},
             OVERRIDES_NAME: lambda: OmegaConf.to_container(config.hydra.overrides.task)}
    for name, content in files.items():
        if not (hydra_dir / name).exists():
            atomic_write_text(hydra_dir / name, yaml.dump(content(), Dumper=YAML_DUMPER, sort_keys=False))


def task_part(config: DictConfig) -> DictConfig:
    """``config`` without its hydra node. The new root takes over config's nodes instead of copying
    them (a deep copy per point was most of a 1,000-point dry run's launcher time); looked up from
    ``config``, they stay the same."""
    task = OmegaConf.create(flags={"no_deepcopy_set_nodes": True})
    for key in config:
        if key != "hydra":
            task[key] = config._get_node(key)
    task._set_flag("no_deepcopy_set_nodes", None)
    OmegaConf.set_struct(task, True)
    return task


class KubernetesLauncher(Launcher):
    """Runs every sweep point as a ``batch/v1`` Job and returns the app's result from its pod log."""

    def __init__(self, **settings: Any) -> None:
        self.settings = {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
                         for key, value in settings.items()}
        self.adapter = PointAdapter(self.settings)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keeps the sweep's context, its config loader wrapped in a :class:`SweepConfigMemo`."""
        if not isinstance(hydra_context.config_loader, SweepConfigMemo):
            hydra_context.config_loader = SweepConfigMemo(hydra_context.config_loader)
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        began = time.perf_counter()
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        sweep = sweep_id(str(sweep_dir))
        points = [self._point(sweep_dir, sweep, initial_job_idx + i, overrides) for i, overrides in enumerate(job_overrides)]

        if points and self.settings["gpus"] and not self.adapter.trains(points[0].config):
            log.info("%s does not train: its pods request no GPU", points[0].config.hydra.job.name)
        returns: dict[int, JobReturn] = {}
        to_run = []
        for point in points:
            done = self.adapter.completed(point.run_dir)
            if done is None:
                to_run.append(point)
            else:
                log.info("#%d %s already completed; not launched again", point.num, point.run_dir)
                returns[point.num] = self._job_return(point, JobStatus.COMPLETED, done.value)

        if self.settings["dry_run"]:
            write_manifests(to_run, sweep_dir / SWEEP_MANIFEST_DIR)
            log.info("Dry run: %d manifests written to %s", len(to_run), sweep_dir / SWEEP_MANIFEST_DIR)
            returns.update({p.num: self._job_return(p, JobStatus.COMPLETED, None) for p in to_run})
        elif to_run:
            from ._cluster import SweepRun
            from ._progress import ProgressView

            for point in to_run:
                save_hydra_files(point)
            log.info("Launching %d Jobs in namespace %s (sweep %s)", len(to_run), self.settings["namespace"], sweep)
            outcomes = SweepRun(self.settings, sweep, to_run, ProgressView()).run()
            for point in to_run:
                outcome = outcomes[point.num]
                if outcome.completed:
                    result = self.adapter.result_of(outcome.log)
                    self.adapter.keep(point.run_dir, result)
                    returns[point.num] = self._job_return(point, JobStatus.COMPLETED, result.value)
                else:
                    log.error("#%d failed: %s", point.num, outcome.reason)
                    returns[point.num] = self._job_return(point, JobStatus.FAILED, PointFailed(outcome.reason))
        log.info("%s %d points (%d launched) in %.2f s", LAUNCH_SUMMARY, len(points), len(to_run),
                 time.perf_counter() - began)
        return [returns[point.num] for point in points]

    def _point(self, sweep_dir: Path, sweep: str, num: int, overrides: Sequence[str]) -> SweepPoint:
        assert self.config is not None and self.hydra_context is not None
        loader = self.hydra_context.config_loader
        assert isinstance(loader, SweepConfigMemo)
        config = loader.take_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = num
        subdir = str(config.hydra.sweep.subdir)
        pod_root = self.settings["output_root_in_pod"] or str(sweep_dir.parent)
        pod_run_dir = f"{pod_root.rstrip('/')}/{sweep_dir.name}/{subdir}"
        app = str(config.hydra.job.name)
        task_overrides = filter_overrides(list(overrides))
        pod_overrides = self.adapter.pod_overrides(config, task_overrides, pod_root)
        arguments = [*job_hydra_overrides(config), *task_overrides, *pod_overrides]
        return SweepPoint(num=num, overrides=list(overrides), config=config, run_dir=sweep_dir / subdir,
                          name=job_name(app, sweep, num),
                          manifests=render_point(self.settings, app, sweep, num, app_module(self.settings), arguments,
                                                 pod_run_dir, trains=self.adapter.trains(config),
                                                 config_name=config.hydra.job.config_name),
                          pod_overrides=pod_overrides)

    def _job_return(self, point: SweepPoint, status: JobStatus, value: Any) -> JobReturn:
        """The point's JobReturn: ``cfg`` its config without the hydra node, ``hydra_cfg`` the whole config."""
        return JobReturn(overrides=point.overrides, cfg=task_part(point.config), hydra_cfg=point.config,
                         working_dir=str(point.run_dir), task_name=str(point.config.hydra.job.name),
                         status=status, _return_value=value)
