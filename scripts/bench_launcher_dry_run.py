"""Dry-run rendering of Kubernetes manifests: 1,000 sweep points (a 10x10x10 grid) of burned_area
on the nautilus profile, rendered and written as YAML by the launcher's own functions, side by side
with a baseline (YAML-dumping one fixed Job manifest to 1,000 files). Also the launcher's full
dry-run path (Hydra composes each point's config, then render + write) on a sample of points.
Prints JSON; the target is at most 5 s for rendering and writing 1,000 manifests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf, open_dict

from apps.core.cli import CONF_DIR
from apps.core.config import register_resolvers
from hydra_plugins.geoscale_kubernetes_launcher.launcher import KubernetesLauncher, SweepPoint, write_manifests
from hydra_plugins.geoscale_kubernetes_launcher.manifests import job_name, render_point, sweep_id

GRID = {"lr": [f"{v}e-4" for v in range(1, 11)], "batch_size": [str(v) for v in range(8, 18)],
        "seed": [str(v) for v in range(10)]}


def grid_overrides() -> list[list[str]]:
    return [[f"{key}={value}" for key, value in zip(GRID, values)] for values in itertools.product(*GRID.values())]


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--composed-sample", type=int, default=20,
                        help="points sent through the full dry-run path, with Hydra composing each one")
    args = parser.parse_args()
    register_resolvers()
    overrides = grid_overrides()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        config = compose("burned_area", overrides=["cluster=nautilus", "hydra.launcher.dry_run=true"],
                         return_hydra_config=True)
        settings = OmegaConf.to_container(config.hydra.launcher, resolve=True)
        settings["app_module"] = "apps.burned_area"

        with tempfile.TemporaryDirectory() as tmp:
            sweep_dir = Path(tmp) / "sweep"
            sweep = sweep_id(str(sweep_dir))

            def render_and_write() -> None:
                points = [SweepPoint(num=num, overrides=point, config=config, run_dir=sweep_dir / str(num),
                                     name=job_name("burned_area", sweep, num),
                                     manifests=render_point(settings, "burned_area", sweep, num, "apps.burned_area",
                                                            point, f"/outputs/sweeps/sweep/{num}"))
                          for num, point in enumerate(overrides)]
                write_manifests(points, sweep_dir / "manifests")

            launcher_s = timed(render_and_write)
            fixed = yaml.safe_load((sweep_dir / "manifests" / f"{job_name('burned_area', sweep, 0)}.yaml").read_text())
            baseline_dir = Path(tmp) / "baseline"
            baseline_dir.mkdir()
            dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
            baseline_s = timed(lambda: [(baseline_dir / f"{i}.yaml").write_text(yaml.dump(fixed, Dumper=dumper))
                                        for i in range(len(overrides))])

            # The full dry-run path: KubernetesLauncher.launch() composes each point's config first.
            loader = GlobalHydra.instance().config_loader()
            master = loader.load_configuration("burned_area", overrides=[
                "cluster=nautilus", "hydra.launcher.dry_run=true", f"hydra.sweep.dir={Path(tmp) / 'full'}"],
                run_mode=RunMode.MULTIRUN)
            with open_dict(master):
                master.hydra.launcher.app_module = "apps.burned_area"
            launcher = KubernetesLauncher(**{k: v for k, v in master.hydra.launcher.items() if k != "_target_"})
            launcher.setup(hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks()),
                           task_function=lambda cfg: None, config=master)
            sample = [["cluster=nautilus", *point] for point in overrides[: args.composed_sample]]
            returns = []
            full_s = timed(lambda: returns.extend(launcher.launch(sample, initial_job_idx=0)))
            assert all(r.status == JobStatus.COMPLETED for r in returns)
            written = len(list((Path(tmp) / "full" / "manifests").glob("*.yaml")))

    print(json.dumps({
        "manifests": len(overrides),
        "render_and_write_s": round(launcher_s, 3),
        "baseline_yaml_dump_s": round(baseline_s, 3),
        "ratio_to_baseline": round(launcher_s / baseline_s, 2),
        "target_s": 5.0,
        "within_target": launcher_s <= 5.0,
        "full_dry_run_points": written,
        "full_dry_run_s_per_point": round(full_s / len(sample), 4),
        "full_dry_run_extrapolated_1000_s": round(full_s / len(sample) * len(overrides), 1),
        "note": "the full path is dominated by Hydra composing each point's config (its basic sweeper "
                "composes every point once more before launching)",
    }, indent=2))


if __name__ == "__main__":
    main()
