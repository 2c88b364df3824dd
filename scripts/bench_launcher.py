"""Launcher overhead: the study's burned-area grid (144 Jobs) submitted to the Kubernetes API stand-in.

Pods are instant (they succeed at once with a canned result line). The whole ``python -m
apps.burned_area -m experiment=burned_area_grid hydra/launcher=kubernetes ...`` command is timed,
and split into the launcher's own wall time (its ``launch()``: rendering, creating and following
every Job, reading every result; from the launcher's summary log line; target <= 10 s), the app's
bare start-up (``--help``) and the rest, which is Hydra's sweeper composing every point's config.
Also the API requests per Job, by verb. Baselines in the same run: the same number of Jobs created
and followed directly with the official client in this process (sequential creates, one watch, one
log read per Job), and the same grid as a dry run (no API server). Prints JSON.

    python scripts/bench_launcher.py [--points 144] [--max-in-flight N] [--baseline-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client, watch

from geoscale_standins.kubernetes import KubeStandIn
from hydra_plugins.geoscale_kubernetes_launcher.launcher import LAUNCH_SUMMARY

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "default"
GRID_POINTS = 144
SWEEP_TIMEOUT_S = 600


def canned_result(job: dict) -> dict:
    """A stable fake test IoU per Job, so results can be told apart."""
    digest = hashlib.sha1(job["metadata"]["name"].encode()).digest()
    return {"objective": "test/iou", "value": round(digest[0] / 255, 4)}


def per_job(counts: dict, jobs: int) -> dict[str, float]:
    return {verb: round(n / jobs, 3) for verb, n in sorted(counts.items())}


def direct_client_baseline(server: KubeStandIn, points: int) -> dict:
    """Create ``points`` Jobs one by one with the official client, follow them by one watch, read each log."""
    configuration = client.Configuration(host=server.url)
    configuration.verify_ssl = False
    api_client = client.ApiClient(configuration)
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    labels = {"bench": "direct"}
    before = dict(server.request_counts)
    began = time.perf_counter()
    start_version = batch.list_namespaced_job(NAMESPACE, label_selector="bench=direct").metadata.resource_version
    for num in range(points):
        container = client.V1Container(name="main", image="geoscale:bench", command=["python", "-m", "apps.burned_area"],
                                       args=[f"lr={num}", f"hydra.run.dir=/out/{num}"])
        batch.create_namespaced_job(NAMESPACE, client.V1Job(
            metadata=client.V1ObjectMeta(name=f"direct-{num}", labels=labels),
            spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(restart_policy="Never", containers=[container])))))
    finished: set[str] = set()
    stream = watch.Watch()
    for event in stream.stream(batch.list_namespaced_job, NAMESPACE, label_selector="bench=direct",
                               resource_version=start_version, timeout_seconds=SWEEP_TIMEOUT_S):
        job = event["object"]
        if any(c.type in ("Complete", "Failed") and c.status == "True" for c in job.status.conditions or []):
            finished.add(job.metadata.name)
        if len(finished) == points:
            stream.stop()
    results = []
    for pod in core.list_namespaced_pod(NAMESPACE, label_selector="bench=direct").items:
        log = core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE, _preload_content=False).data.decode()
        results.append(json.loads(log.strip().splitlines()[-1].split(" ", 1)[1]))
    wall = time.perf_counter() - began
    api_client.close()
    counts = {verb: n - before.get(verb, 0) for verb, n in server.request_counts.items() if n - before.get(verb, 0)}
    return {"jobs": points, "finished": len(finished), "results": len(results), "wall_s": round(wall, 3),
            "requests_per_job": per_job(counts, points), "requests_total": sum(counts.values())}


def app_startup_s() -> float:
    """Wall time of ``python -m apps.burned_area --help``: interpreter, imports and Hydra, no sweep."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "apps.burned_area", "--help"], cwd=REPO, capture_output=True, check=True,
                   timeout=120)
    return round(time.perf_counter() - began, 3)


def grid_command(sweep_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "apps.burned_area", "-m", "experiment=burned_area_grid", "hydra/launcher=kubernetes",
            f"hydra.sweep.dir={sweep_dir}", *overrides]


def launcher_s(output: str) -> float:
    """The launcher's own wall time, summed over the batches of its summary log lines."""
    times = re.findall(re.escape(LAUNCH_SUMMARY) + r".* in ([0-9.]+) s", output)
    if not times:
        raise RuntimeError(f"no '{LAUNCH_SUMMARY}' line in the sweep's output")
    return round(sum(map(float, times)), 3)


def timed_sweep(command: list[str], startup_s: float) -> tuple[subprocess.CompletedProcess, dict]:
    """Run a sweep command; its wall time split into start-up, Hydra's sweep and the launcher."""
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S + 60)
    wall = round(time.perf_counter() - began, 3)
    if proc.returncode != 0:
        return proc, {"exit_code": proc.returncode, "stderr_tail": proc.stderr.strip().splitlines()[-5:]}
    launcher = launcher_s(proc.stdout + proc.stderr)
    return proc, {"command_wall_s": wall, "launcher_s": launcher, "app_startup_s": startup_s,
                  "hydra_sweep_s": round(wall - launcher - startup_s, 3)}


def launcher_sweep(server: KubeStandIn, sweep_dir: Path, max_in_flight: int | None, startup_s: float) -> dict:
    """Run the grid through ``hydra/launcher=kubernetes`` against the stand-in; times and requests per Job."""
    command = grid_command(sweep_dir, f"hydra.launcher.api_server={server.url}", "hydra.launcher.verify_ssl=false",
                           f"hydra.launcher.namespace={NAMESPACE}", f"hydra.launcher.sweep_timeout_s={SWEEP_TIMEOUT_S}")
    if max_in_flight is not None:
        command.append(f"hydra.launcher.max_in_flight={max_in_flight}")
    before, outcomes_before = dict(server.request_counts), dict(server.outcomes)
    _, times = timed_sweep(command, startup_s)
    counts = {verb: n - before.get(verb, 0) for verb, n in server.request_counts.items() if n - before.get(verb, 0)}
    jobs = counts.get("create", 0)
    return {"jobs_created": jobs,
            "jobs_complete": server.outcomes["Complete"] - outcomes_before.get("Complete", 0),
            "results_read_back": sum("geoscale-result:" in log.read_text() for log in sweep_dir.rglob("pod.log")),
            **times, "target_launcher_s": 10.0, "within_target": times.get("launcher_s", float("inf")) <= 10.0,
            "requests_per_job": per_job(counts, max(1, jobs)), "requests_total": sum(counts.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=GRID_POINTS, help="Jobs in the direct-client baseline")
    parser.add_argument("--max-in-flight", type=int, default=None, help="hydra.launcher.max_in_flight (default: the launcher's)")
    parser.add_argument("--baseline-only", action="store_true", help="measure the stand-in with the official client only")
    args = parser.parse_args()
    report: dict = {}
    with tempfile.TemporaryDirectory() as workdir, KubeStandIn(workdir=workdir, instant_pods=True,
                                                               result=canned_result) as server:
        report["baseline_direct_client"] = direct_client_baseline(server, args.points)
        if not args.baseline_only:
            startup_s = app_startup_s()
            report["dry_run"] = timed_sweep(grid_command(Path(workdir) / "dry-run", "hydra.launcher.dry_run=true"),
                                            startup_s)[1]
            report["launcher"] = launcher_sweep(server, Path(workdir) / "sweep", args.max_in_flight, startup_s)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
