"""The study rehearsed end to end on this machine (scripts/rehearse_study.sh): every stage's Jobs ran through the
real launcher and manifests, in pods with their volumes mounted as on the cluster."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers.core import LIMIT_S, REPO

SKIPPED = 77


@pytest.mark.slow
def test_the_whole_study_runs_as_one_piece(tmp_path):
    proc = subprocess.run(["bash", "scripts/rehearse_study.sh", "--workspace", str(tmp_path / "rehearsal")], cwd=REPO,
                          capture_output=True, text=True, timeout=LIMIT_S)
    if proc.returncode == SKIPPED:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr[-5000:]
    figures = json.loads(proc.stdout[proc.stdout.index("{"):])
    stages = figures["stages"]
    assert {"weights", "acquisition", "prep", "training", "reproduce", "tables"} <= set(stages)
    for name in ("weights", "acquisition", "prep", "training"):
        assert stages[name]["jobs"] > 0 and stages[name]["wall_s"] > 0, name
    assert figures["two_pod_run"]["device_count"] == 2
    reproduced = figures["reproduce"]
    assert reproduced["url"].startswith("s3://") and reproduced["new_test_iou"] == pytest.approx(
        reproduced["saved_test_iou"], abs=1e-6)
    assert set(figures["tables"]) == {"table_i", "table_iii", "table_v"}
    for table in figures["tables"].values():
        assert "| TOTAL" in table
    assert "prep_burned_area:all" in figures["tables"]["table_i"]
    assert all(app in figures["tables"]["table_v"] for app in ("burned_area", "deforestation", "detection"))
