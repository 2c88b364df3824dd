"""The benchmark scripts run at a small size and report their figures as JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from coretools import REPO


def run_script(name: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_changeformer_benchmark_compares_the_default_precision_with_fp32():
    from apps.core.training.precision import resolve_precision

    report = run_script("bench_changeformer.py", "--size", "64", "--repeats", "1", "--warmup", "0")
    assert report["parameters"] == 41_026_674 and report["default_precision"] == resolve_precision("auto", "cpu")
    assert {"32-true", "bf16-mixed"} <= set(report["results"])
    for figures in report["results"].values():
        assert figures["train_step_s"] > 0 and figures["pairs_per_s_inference"] > 0
    assert set(report["default_vs_fp32"]) == {"train_step", "inference"}


@pytest.mark.slow
def test_pair_prep_benchmark_times_the_floor_and_the_prep(tmp_path):
    report = run_script("bench_deforestation_prep.py", "--size", "1024", "--work-dir", str(tmp_path))
    assert report["floor_read_inputs_once_s"] > 0 and set(report["stages_s"]) == {"prepare", "chip"}
    assert report["peak_rss_bytes"] > 0 and report["targets"] == {"prep_s": 90.0, "peak_rss_bytes": 3 * 2**30}
    assert set(report["met"]) == {"time", "memory"} and report["windows"] > 0


@pytest.mark.slow
def test_detection_step_benchmark_times_the_core_against_mmengines_runner():
    pytest.importorskip("mmdet", reason="the detection stack is not installed (scripts/setup.sh --detection)")
    report = run_script("bench_detection_step.py", "--quick")
    assert report["size"] == 128 and report["steps"] == 2 and report["batch_size"] == 2
    figures = report["models"]["fcos_small"]
    assert "error" not in figures, figures
    assert figures["params"] > 0 and figures["runner_step_s"] > 0 and figures["core_step_s"] > 0
    assert figures["core_vs_runner_speed"] == pytest.approx(figures["runner_step_s"] / figures["core_step_s"], rel=0.01)
    assert figures["core_default_precision"] in ("bf16-mixed", "32-true") and figures["core_default_step_s"] > 0
    assert len(figures["steps_s"]["runner"]) == len(figures["steps_s"]["core"]) == 2
    assert figures["round_speeds"] == [pytest.approx(figures["core_vs_runner_speed"], rel=0.01)]  # one round (step_s is rounded)
    assert report["torch_threads"] >= 1 and report["target"].endswith("0.95")


@pytest.mark.slow
def test_acquire_benchmark_reads_fewer_bytes_by_window_than_whole_downloads():
    report = run_script("bench_acquire.py", "--quick")
    assert report["same_pixels"] is True
    assert 0 < report["windowed"]["bytes"] < report["full_download"]["bytes"]
    assert report["windowed"]["seconds"] > 0 and report["full_download"]["seconds"] > 0
