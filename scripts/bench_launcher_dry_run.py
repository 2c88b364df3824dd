"""Dry-run rendering of Kubernetes manifests: a 1,000-point sweep (a 10x10x10 grid; NxNxN with
``--values N``) of burned_area on the nautilus profile, through the real command line
(``python -m apps.burned_area -m cluster=nautilus hydra.launcher.dry_run=true lr=... batch_size=... seed=...``).

The command's wall time is split into the launcher's own (its ``launch()``: rendering and writing
every manifest, from its summary log line; target <= 5 s), the app's bare start-up (``--help``)
and the rest, Hydra's sweeper composing each point's config (target: the whole command <= 15 s).
Baselines in the same run: YAML-dumping one of the written manifests to 1,000 files in this process,
and Hydra's own composition of a sample of the points (``SAMPLE``, per point, times the points)
against the launcher's derived composition of all of them. Prints JSON.

    python scripts/bench_launcher_dry_run.py [--values 10]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_launcher import app_startup_s, timed_sweep

from apps.foundation.rundir import SWEEP_MANIFEST_DIR
from hydra_plugins.geoscale_kubernetes_launcher.launcher import YAML_DUMPER

TARGET_S = 5.0
TARGET_COMMAND_S = 15.0
SAMPLE = 50
"""Points Hydra composes its own way for the composition baseline (all 1,000 would take minutes)."""


def grid(values: int) -> dict[str, list[str]]:
    """The swept overrides: ``values`` learning rates, batch sizes and seeds."""
    return {"lr": [f"{v}e-4" for v in range(1, values + 1)], "batch_size": [str(v) for v in range(8, 8 + values)],
            "seed": [str(v) for v in range(values)]}


def composition_times(points: list[list[str]]) -> dict:
    """Seconds to compose ``points`` through the launcher's SweepConfigMemo, and Hydra's own composition of
    the first ``SAMPLE`` of them scaled to all, in this process."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from apps.foundation.cli import CONF_DIR, register_resolvers
    from hydra_plugins.geoscale_kubernetes_launcher._composition import SweepConfigMemo

    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("burned_area", ["cluster=nautilus"], RunMode.MULTIRUN)
        began = time.perf_counter()
        sample = points[:SAMPLE]
        for overrides in sample:
            loader.load_sweep_config(master, overrides)
        hydra_s = (time.perf_counter() - began) / len(sample) * len(points)
        memo, began = SweepConfigMemo(loader), time.perf_counter()
        for overrides in points:
            memo.load_sweep_config(master, overrides)
        derived_s = time.perf_counter() - began
    return {"hydra_compose_all_s_estimated": round(hydra_s, 2), "derived_compose_all_s": round(derived_s, 2),
            "hydra_to_derived": round(hydra_s / derived_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=int, default=10, help="values per swept key (default 10: 1,000 points)")
    args = parser.parse_args()
    if args.values < 1:
        raise SystemExit(f"error: --values {args.values}: give at least 1")
    sweep = grid(args.values)
    point_overrides = [[f"{key}={value}" for key, value in zip(sweep, values)]
                       for values in itertools.product(*sweep.values())]
    points = len(point_overrides)
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = Path(tmp) / "sweep"
        command = [sys.executable, "-m", "apps.burned_area", "-m", "cluster=nautilus", "hydra.launcher.dry_run=true",
                   f"hydra.sweep.dir={sweep_dir}", *(f"{key}={','.join(values)}" for key, values in sweep.items())]
        _, times = timed_sweep(command, app_startup_s())
        written = sorted((sweep_dir / SWEEP_MANIFEST_DIR).glob("*.yaml"))

        fixed = yaml.safe_load(written[0].read_text()) if written else {}
        baseline_dir = Path(tmp) / "baseline"
        baseline_dir.mkdir()
        began = time.perf_counter()
        for num in range(points):
            (baseline_dir / f"{num}.yaml").write_text(yaml.dump(fixed, Dumper=YAML_DUMPER, sort_keys=False))
        baseline_s = time.perf_counter() - began

    launcher = times.get("launcher_s", float("inf"))
    composition = composition_times(point_overrides)
    command = times.get("command_wall_s", float("inf"))
    print(json.dumps({"points": points, "manifests_written": len(written), **times,
                      "baseline_yaml_dump_s": round(baseline_s, 3),
                      "launcher_to_baseline": round(launcher / baseline_s, 2), **composition,
                      "target_launcher_s": TARGET_S, "within_target": launcher <= TARGET_S,
                      "target_command_s": TARGET_COMMAND_S, "command_within_target": command <= TARGET_COMMAND_S},
                     indent=2))


if __name__ == "__main__":
    main()
