"""Dry-run rendering of Kubernetes manifests: a 1,000-point sweep (a 10x10x10 grid) of burned_area on
the nautilus profile, through the real command line (``python -m apps.burned_area -m cluster=nautilus
hydra.launcher.dry_run=true lr=... batch_size=... seed=...``).

The command's wall time is split into the launcher's own (its ``launch()``: rendering and writing
every manifest, from its summary log line; target <= 5 s), the app's bare start-up (``--help``)
and the rest, Hydra's sweeper composing each point's config. Baseline in the same run: YAML-dumping
one of the written manifests to 1,000 files in this process. Prints JSON.

    python scripts/bench_launcher_dry_run.py
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_launcher import app_startup_s, timed_sweep

from hydra_plugins.geoscale_kubernetes_launcher.launcher import MANIFEST_DIR, YAML_DUMPER

GRID = {"lr": [f"{v}e-4" for v in range(1, 11)], "batch_size": [str(v) for v in range(8, 18)],
        "seed": [str(v) for v in range(10)]}
TARGET_S = 5.0


def main() -> None:
    points = len(list(itertools.product(*GRID.values())))
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = Path(tmp) / "sweep"
        command = [sys.executable, "-m", "apps.burned_area", "-m", "cluster=nautilus", "hydra.launcher.dry_run=true",
                   f"hydra.sweep.dir={sweep_dir}", *(f"{key}={','.join(values)}" for key, values in GRID.items())]
        _, times = timed_sweep(command, app_startup_s())
        written = sorted((sweep_dir / MANIFEST_DIR).glob("*.yaml"))

        fixed = yaml.safe_load(written[0].read_text()) if written else {}
        baseline_dir = Path(tmp) / "baseline"
        baseline_dir.mkdir()
        began = time.perf_counter()
        for num in range(points):
            (baseline_dir / f"{num}.yaml").write_text(yaml.dump(fixed, Dumper=YAML_DUMPER, sort_keys=False))
        baseline_s = time.perf_counter() - began

    launcher = times.get("launcher_s", float("inf"))
    print(json.dumps({"points": points, "manifests_written": len(written), **times,
                      "baseline_yaml_dump_s": round(baseline_s, 3),
                      "launcher_to_baseline": round(launcher / baseline_s, 2),
                      "target_launcher_s": TARGET_S, "within_target": launcher <= TARGET_S}, indent=2))


if __name__ == "__main__":
    main()
