"""The Kubernetes launcher end to end: ``python -m apps.burned_area -m hydra/launcher=kubernetes ...``
against the local API stand-in, whose pods run the app as local processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers.core import LIMIT_S, REPO, TINY_MODEL, wait_until

from data_prep.synthetic_chips import make_chip_dataset
from geoscale_standins.kubernetes import KubeStandIn

NAMESPACE = "geoscale-test"


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    return make_chip_dataset(tmp_path_factory.mktemp("chips"), chips_per_scene=8, size=32)


@pytest.fixture
def standin():
    with KubeStandIn(workdir=REPO) as server:
        yield server


def launcher_overrides(api_server: str, sweep_dir: Path) -> list[str]:
    return ["hydra/launcher=kubernetes", f"hydra.launcher.api_server={api_server}", "hydra.launcher.verify_ssl=false",
            f"hydra.launcher.namespace={NAMESPACE}", "hydra.launcher.api_backoff_s=0.05", f"hydra.sweep.dir={sweep_dir}"]


def sweep_command(api_server: str, sweep_dir: Path, *overrides: str, model: Sequence[str] = TINY_MODEL) -> list[str]:
    return [sys.executable, "-m", "apps.burned_area", "-m", *launcher_overrides(api_server, sweep_dir), *model,
            "epochs=1", *overrides]


def run_sweep(api_server: str, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(api_server, sweep_dir, *overrides), cwd=REPO, capture_output=True, text=True,
                          timeout=LIMIT_S, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def pods_of_point(server: KubeStandIn, num: int) -> list[dict]:
    return [pod for pod in server.pods.values() if pod["metadata"]["labels"].get("geoscale.io/job") == str(num)]


@pytest.mark.slow
def test_sweep_trains_both_points_through_api_faults_and_an_eviction(standin, chips, tmp_path):
    """500 on the first create, a 410 Gone watch, watches closing every second, the first pod evicted."""
    standin.faults.fail_creates = 1
    standin.faults.watch_gone = 1
    standin.faults.watch_close_after_s = 1.0
    sweep = tmp_path / "sweep"
    process = subprocess.Popen(sweep_command(standin.url, sweep, f"data.root={chips}", "lr=1e-3,1e-2"), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = wait_until(lambda: [p for p in pods_of_point(standin, 0) if p["status"]["phase"] == "Running"],
                           LIMIT_S, "the first pod to run")[0]
        standin.evict(first["metadata"]["name"], NAMESPACE)
        stdout, stderr = process.communicate(timeout=LIMIT_S)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]

    records = [json.loads((sweep / str(num) / "metrics.json").read_text()) for num in (0, 1)]
    assert [r["status"] for r in records] == ["completed", "completed"]
    summary = (sweep / "summary.md").read_text()
    assert summary.startswith("2 runs: 2 completed")
    assert all(f'{r["objective"]["value"]:.4f}' in summary for r in records)
    for num in (0, 1):
        assert "geoscale-result:" in (sweep / str(num) / "pod.log").read_text()
    evicted_job = next(job for job in standin.jobs.values() if job["metadata"]["labels"]["geoscale.io/job"] == "0")
    assert len(pods_of_point(standin, 0)) == 2 and evicted_job["status"]["failed"] == 0
    assert standin.request_counts["create"] == 3 and standin.request_counts["watch"] >= 3

    # A re-run of the finished sweep submits nothing.
    creates = standin.request_counts["create"]
    again = run_sweep(standin.url, sweep, f"data.root={chips}", "lr=1e-3,1e-2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert standin.request_counts["create"] == creates


@pytest.mark.slow
def test_failing_point_comes_back_failed_and_the_other_goes_on(standin, chips, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_sweep(standin.url, sweep, f"data.root={chips},{tmp_path / 'no-such-data'}")
    assert proc.returncode != 0
    assert "PodFailurePolicy" in proc.stderr and "exit code 2" in proc.stderr
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "completed"
    failed_log = (sweep / "1" / "pod.log").read_text()
    assert "error:" in failed_log and "no-such-data" in failed_log
    assert standin.outcomes == {"Complete": 1, "Failed": 1}


@pytest.mark.slow
def test_multi_node_point_trains_on_two_pods_that_meet_through_the_headless_service(standin, chips, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sweep = tmp_path / "sweep"
    # Full-depth encoder: DDP refuses a model whose unused stages (encoder_depth < 5) hold parameters.
    full_depth = ["model.encoder=resnet18", "+model.decoder_channels=[16,16,8,8,8]", "batch_size=2",
                  "num_workers=0", "trainer.enable_progress_bar=false"]
    proc = subprocess.run(sweep_command(standin.url, sweep, f"data.root={chips}", "hydra.launcher.num_nodes=2",
                                        "hydra.launcher.gpus=0", f"hydra.launcher.master_port={port}",
                                        "trainer.accelerator=cpu", "trainer.strategy=ddp", "lr=1e-3",
                                        model=full_depth),
                          cwd=REPO, capture_output=True, text=True, timeout=LIMIT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((sweep / "0" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["facts"]["device_count"] == 2
    assert f'"value": {record["objective"]["value"]}' in (sweep / "0" / "pod.log").read_text()
    pods = pods_of_point(standin, 0)
    assert sorted(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for pod in pods) == ["0", "1"]
    assert all(pod["status"]["phase"] == "Succeeded" for pod in pods)
    assert standin.request_counts["create"] == 2 and standin.services == {}  # the Job and its Service


@pytest.mark.slow
def test_data_prep_stage_fans_out_one_job_per_scene(standin, synthetic_scenes, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "data_prep.burned_area", "-m",
                           *launcher_overrides(standin.url, tmp_path / "sweep"), "stage=normalize",
                           "scene=scene_01,scene_03", f"scenes_dir={synthetic_scenes.scenes_dir}", f"out_dir={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=LIMIT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.parent.name for p in out.glob("work/*/normalized.tif")) == ["scene_01", "scene_03"]
    assert standin.outcomes == {"Complete": 2}
    assert {job["metadata"]["labels"]["geoscale.io/app"] for job in standin.jobs.values()} == {"prep-burned-area"}


@pytest.mark.slow
def test_jobs_pending_past_the_sweep_timeout_are_deleted(standin, tmp_path):
    standin.faults.hold_pending = lambda job: True
    began = time.monotonic()
    proc = run_sweep(standin.url, tmp_path / "sweep", "hydra.launcher.sweep_timeout_s=2", "lr=1e-3,1e-2")
    assert proc.returncode != 0 and "sweep timeout" in proc.stderr
    assert time.monotonic() - began < 60
    assert standin.request_counts["create"] == 2 and standin.jobs == {} and standin.pods == {}


@pytest.mark.slow
def test_job_deleted_by_someone_else_comes_back_failed(tmp_path):
    with KubeStandIn(workdir=tmp_path, instant_pods=True) as server:
        server.faults.hold_pending = lambda job: job["metadata"]["labels"]["geoscale.io/job"] == "0"
        process = subprocess.Popen(sweep_command(server.url, tmp_path / "sweep", "lr=1e-3,1e-2"), cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: server.outcomes["Complete"] == 1 and server.request_counts["watch"], LIMIT_S,
                       "point 1 complete, point 0 pending, followed by watch")
            [held] = [name for name, job in server.jobs.items() if job["metadata"]["labels"]["geoscale.io/job"] == "0"]
            server.delete("jobs", NAMESPACE, held, "Background")  # kubectl delete job, from another terminal
            _, stderr = process.communicate(timeout=LIMIT_S)
        finally:
            process.kill()
    assert process.returncode != 0
    assert f"Job {held} was deleted before it finished" in stderr


@pytest.mark.slow
def test_pod_stuck_on_a_bad_image_fails_its_point_after_the_grace_time(tmp_path):
    with KubeStandIn(workdir=tmp_path, instant_pods=True) as server:
        server.faults.stuck_waiting = lambda job: "ImagePullBackOff" if job["metadata"]["labels"]["geoscale.io/job"] == "0" else None
        proc = subprocess.run(sweep_command(server.url, tmp_path / "sweep", "hydra.launcher.watch_timeout_s=1",
                                            "hydra.launcher.stuck_pod_grace_s=1", "lr=1e-3,1e-2"),
                              cwd=REPO, capture_output=True, text=True, timeout=LIMIT_S)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        [reason] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert "ImagePullBackOff (injected: ImagePullBackOff)" in reason and reason.endswith("deleted")
        assert server.outcomes["Complete"] == 1
        assert [job["metadata"]["labels"]["geoscale.io/job"] for job in server.jobs.values()] == ["1"]


@pytest.mark.slow
def test_create_refused_midway_deletes_the_jobs_already_created(standin, tmp_path):
    standin.faults.hold_pending = lambda job: True
    standin.faults.forbid_creates_after = 2
    proc = run_sweep(standin.url, tmp_path / "sweep", "lr=1e-3,1e-2,1e-4")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: Kubernetes API server at {standin.url}: 403 Forbidden: jobs.batch is forbidden")
    assert proc.stderr.strip().endswith(error)
    # Three deletes: the refused create is deleted too, as a create whose answer was lost may have gone through.
    assert standin.request_counts["create"] == 3 and standin.request_counts["delete"] == 3
    assert standin.jobs == {} and standin.pods == {}


@pytest.mark.slow
def test_ctrl_c_mid_sweep_deletes_every_job(standin, tmp_path):
    standin.faults.hold_pending = lambda job: True
    process = subprocess.Popen(sweep_command(standin.url, tmp_path / "sweep", "lr=1e-3,1e-2,1e-4"), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(standin.pods) == 3 and standin.request_counts["watch"], LIMIT_S,
                   "three pending pods, followed by watch")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=LIMIT_S)
    finally:
        process.kill()
    assert process.returncode == 130 and stderr.strip().endswith("interrupted") and "Traceback" not in stderr
    assert standin.jobs == {} and standin.pods == {}, stderr[-2000:]
    assert standin.request_counts["delete"] == 3


@pytest.mark.slow
def test_ctrl_c_while_a_create_is_unanswered_still_deletes_that_job(standin, tmp_path):
    standin.faults.hold_pending = lambda job: True
    standin.faults.answer_create_after_s = 60
    process = subprocess.Popen(sweep_command(standin.url, tmp_path / "sweep", "lr=1e-3,1e-2"), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(standin.jobs) == 1, LIMIT_S, "the first Job stored, its create not yet answered")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=LIMIT_S)
    finally:
        process.kill()
    assert process.returncode != 0
    assert standin.request_counts["create"] == 1
    assert standin.jobs == {} and standin.pods == {}, stderr[-2000:]


@pytest.mark.slow
def test_unreachable_api_server_is_one_clear_error(tmp_path):
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    proc = run_sweep(f"http://127.0.0.1:{closed_port}", tmp_path / "sweep", "hydra.launcher.api_retries=1",
                     "lr=1e-3,1e-2")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert f"cannot reach the Kubernetes API server at http://127.0.0.1:{closed_port}" in error
