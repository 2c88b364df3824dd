"""The stand-in's kubelet: a pod runs in its working directory on the image's files, with each volume bound at
its mount path in a private mount namespace and readOnly honoured (skipped where namespaces are not allowed)."""

from __future__ import annotations

import pytest

from helpers.core import LIMIT_S, wait_until
from geoscale_standins.kubernetes import KubeStandIn, Kubelet

pytestmark = pytest.mark.skipif(not Kubelet.available(), reason="mount namespaces are not available here")

READ_AND_WRITE = """
import os, sys
print(open("data/input.txt").read(), open("marker.txt").read(), os.getcwd())
open(sys.argv[1], "w").write("written")
"""


def job(name: str, pod_root, target: str) -> dict:
    return {"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "x", "workingDir": f"{pod_root}/app",
                        "command": ["python", "-c", READ_AND_WRITE, target],
                        "volumeMounts": [{"name": "data", "mountPath": f"{pod_root}/app/data", "readOnly": True},
                                         {"name": "out", "mountPath": f"{pod_root}/outputs"},
                                         {"name": "shm", "mountPath": f"{pod_root}/shm"}]}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "out", "persistentVolumeClaim": {"claimName": "outputs"}},
                    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]}}}}


def finished(server: KubeStandIn, name: str) -> str:
    conditions = server.jobs[name]["status"].get("conditions") or []
    return next((c["type"] for c in conditions if c["type"] in ("Complete", "Failed")), "")


def test_a_pod_sees_its_image_and_volumes_where_its_spec_says_and_cannot_write_a_read_only_one(tmp_path):
    image, data, outputs, pod_root = tmp_path / "image", tmp_path / "data", tmp_path / "outputs", tmp_path / "pod"
    image.mkdir(), data.mkdir()
    (image / "marker.txt").write_text("image")
    (data / "input.txt").write_text("data")
    kubelet = Kubelet(claims={"data": data, "outputs": outputs}, image_root=image)
    with KubeStandIn(workdir=tmp_path, kubelet=kubelet) as server:
        server.create("jobs", "default", job("writes-outputs", pod_root, f"{pod_root}/outputs/result.txt"))
        server.create("jobs", "default", job("writes-data", pod_root, f"{pod_root}/app/data/result.txt"))
        for name in ("writes-outputs", "writes-data"):
            wait_until(lambda: finished(server, name), LIMIT_S, f"Job {name}")
        assert finished(server, "writes-outputs") == "Complete"
        log = server.pod_log("default", next(p for p in server.pods if p.startswith("writes-outputs")))
        assert f"data image {pod_root}/app" in log
        assert (outputs / "result.txt").read_text() == "written"
        assert finished(server, "writes-data") == "Failed"
        log = server.pod_log("default", next(p for p in server.pods if p.startswith("writes-data")))
        assert "Read-only file system" in log and not (data / "result.txt").exists()
    assert not (pod_root / "app" / "marker.txt").exists()  # the image was bound there only inside the pod


def test_a_claim_without_a_directory_fails_the_pod(tmp_path):
    with KubeStandIn(workdir=tmp_path, kubelet=Kubelet(claims={})) as server:
        server.create("jobs", "default", job("no-claim", tmp_path / "pod", "x"))
        wait_until(lambda: finished(server, "no-claim"), LIMIT_S, "the Job")
        assert finished(server, "no-claim") == "Failed"
        log = server.pod_log("default", next(iter(server.pods)))
        assert "persistentVolumeClaim 'data' has no directory" in log
