"""Manifests of the Kubernetes launcher: strict schema validation plus the checks the schema misses."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
from omegaconf import OmegaConf

from hydra_plugins.geoscale_kubernetes_launcher._geoscale import trainer_overrides
from hydra_plugins.geoscale_kubernetes_launcher.config import KubernetesLauncherConf
from hydra_plugins.geoscale_kubernetes_launcher.manifests import (
    COMPLETION_INDEX_ANNOTATION, KUEUE_LABEL, job_name, render_point, sweep_id,
)
from helpers import REPO

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i?|[mun]|k)?$")
TOLERATION_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}
TOLERATION_OPERATORS = {"Exists", "Equal"}
NODE_SELECTOR_OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"}
KUBERNETES_VERSIONS = ["1.30", "1.33"]


def settings(**changes) -> dict:
    base = OmegaConf.to_container(OmegaConf.structured(KubernetesLauncherConf))
    base.update(changes)
    return base


SECRETS = dict(env={"PYTHONUNBUFFERED": "1"}, env_from_secrets=["s3-credentials"],
               secret_env={"AWS_SECRET_ACCESS_KEY": {"secret": "s3", "key": "secret_access_key"}})
VARIANTS = {
    "single-gpu": settings(gpus=1, shm_size=None),
    "cpu-only": settings(gpus=0, cpu_limit=None, memory_limit=None, ttl_seconds_after_finished=None),
    "gpu-selection": settings(gpus=2, gpu_models=["NVIDIA-A10", "NVIDIA-A100-SXM4-80GB"], tolerations=[
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "reserved", "operator": "Equal", "value": "geoscale", "effect": "NoExecute"}]),
    "kueue": settings(kueue_queue="team-a", priority_class="low", active_deadline_seconds=3600),
    "secrets": settings(**SECRETS, image_pull_secrets=["registry"], service_account="geoscale-launcher",
                        volumes=[{"claim": "data", "mount_path": "/data", "read_only": True},
                                 {"claim": "outputs", "mount_path": "/outputs"}]),
    "multi-node": settings(num_nodes=3, gpus=4, kueue_queue="team-a", **SECRETS),
}


def render(variant: str, num: int = 0, overrides=("lr=0.001",)) -> list[dict]:
    """A training point's manifests: its overrides and those that fit its trainer to the pod."""
    settings = VARIANTS[variant]
    return render_point(settings, "burned_area", sweep_id("/sweeps/x"), num, "apps.burned_area",
                        [*overrides, *trainer_overrides(settings, overrides)], f"/outputs/x/{num}")


def check_beyond_schema(manifest: dict) -> None:
    """What the OpenAPI schema accepts although Kubernetes would refuse or misread it."""
    assert DNS_1123_LABEL.match(manifest["metadata"]["name"])
    if manifest["kind"] != "Job":
        return
    pod = manifest["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    for toleration in pod.get("tolerations", []):
        assert toleration["effect"] in TOLERATION_EFFECTS
        assert toleration["operator"] in TOLERATION_OPERATORS
    for term in pod.get("affinity", {}).get("nodeAffinity", {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", []):
        for expression in term["matchExpressions"]:
            assert expression["operator"] in NODE_SELECTOR_OPERATORS
            assert expression["values"] and all(isinstance(v, str) for v in expression["values"])
    for container in pod["containers"]:
        for kind in ("requests", "limits"):
            for quantity in container["resources"].get(kind, {}).values():
                assert isinstance(quantity, str) and QUANTITY.match(quantity), quantity
        for env in container["env"]:
            assert ("value" in env) != ("valueFrom" in env)
    for volume in pod["volumes"]:
        if "emptyDir" in volume and "sizeLimit" in volume["emptyDir"]:
            assert QUANTITY.match(volume["emptyDir"]["sizeLimit"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_manifests_validate_strictly(variant, version):
    for manifest in render(variant):
        kubernetes_validate.validate(manifest, version, strict=True)
        check_beyond_schema(manifest)


def test_schema_check_catches_an_unknown_field():
    manifest = render("single-gpu")[0]
    manifest["spec"]["template"]["spec"]["containers"][0]["gpus"] = "1"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, "1.30", strict=True)


def test_job_runs_the_app_with_the_point_overrides_as_a_list():
    overrides = ["lr=0.001", "tags=[a b,'c d']", "note=$HOME; rm -rf /"]
    (job,) = render("single-gpu", num=7, overrides=overrides)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "apps.burned_area", *overrides, "trainer.devices=1",
                                    "hydra.run.dir=/outputs/x/7"]
    assert "args" not in container
    assert job["metadata"]["labels"] == {"geoscale.io/app": "burned-area", "geoscale.io/sweep": sweep_id("/sweeps/x"),
                                         "geoscale.io/job": "7"}
    assert job["spec"]["template"]["metadata"]["labels"] == job["metadata"]["labels"]


def test_pod_runs_the_sweeps_primary_config_in_a_run_dir_hydra_reads_as_one_path():
    [job] = render_point(VARIANTS["cpu-only"], "a_module", sweep_id("/sweeps/x"), 0, "a_module", ["a=1", "b=2"],
                         "/sweeps/x/a=1,b=2", trains=False, config_name="compose")
    assert command_of([job]) == ["python", "-m", "a_module", "--config-name=compose", "a=1", "b=2",
                                 "hydra.run.dir=/sweeps/x/a\\=1\\,b\\=2"]


def test_pods_run_locked_down():
    (job,) = render("secrets")
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}


def test_failure_policy_fails_on_config_errors_and_inputs_not_ready_and_ignores_disruptions():
    rules = render("single-gpu")[0]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In",
                                                              "values": [2, 3]}}
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def test_secrets_only_by_reference():
    (job,) = render("secrets")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {
        "secretKeyRef": {"name": "s3", "key": "secret_access_key"}}}
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert env["PYTHONUNBUFFERED"]["value"] == "1"


def test_resources_gpu_selection_shm_and_volumes():
    (job,) = render("gpu-selection")
    pod = job["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "2"}
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "In",
                                         "values": ["NVIDIA-A10", "NVIDIA-A100-SXM4-80GB"]}]
    shm = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}["/dev/shm"]
    assert {v["name"]: v for v in pod["volumes"]}[shm]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    (job,) = render("secrets")
    mounts = {m["mountPath"]: m for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/data"]["readOnly"] is True and mounts["/outputs"]["readOnly"] is False


def test_kueue_label_only_on_the_job():
    (job,) = render("kueue")
    assert job["metadata"]["labels"][KUEUE_LABEL] == "team-a"
    assert KUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"]
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "low"
    assert KUEUE_LABEL not in render("single-gpu")[0]["metadata"]["labels"]


def test_multi_node_indexed_job_with_headless_service():
    service, job = render("multi-node", num=4)
    name = job["metadata"]["name"]
    assert service["metadata"]["name"] == name
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == job["spec"]["template"]["metadata"]["labels"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == name
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"]["value"] == f"{name}-0.{name}"
    assert env["MASTER_PORT"]["value"] == "29500"
    assert env["WORLD_SIZE"]["value"] == "12"
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"
    assert pod["containers"][0]["command"][-3:-1] == ["trainer.num_nodes=3", "trainer.devices=4"]
    assert len(f"{name}-2") <= 63  # the pod hostname


def command_of(manifests: list[dict]) -> list[str]:
    return manifests[-1]["spec"]["template"]["spec"]["containers"][0]["command"]


def test_trainer_is_fitted_to_the_pods_gpus_unless_the_point_says_otherwise():
    assert command_of(render("gpu-selection"))[-2] == "trainer.devices=2"
    assert command_of(render("single-gpu"))[-2] == "trainer.devices=1"
    assert not any(arg.startswith("trainer.") for arg in command_of(render("cpu-only")))
    assert command_of(render("gpu-selection", overrides=["trainer.devices=1"])).count("trainer.devices=1") == 1
    assert command_of(render("multi-node", overrides=["+trainer.num_nodes=2"]))[-2:-1] == ["trainer.devices=4"]


def test_an_app_that_does_not_train_gets_no_gpu():
    [job] = render_point(VARIANTS["gpu-selection"], "prep_burned_area", sweep_id("/sweeps/x"), 0,
                         "data_prep.burned_area", ["scene=a"], "/outputs/x/0", trains=False)
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["requests"] and "affinity" not in pod
    assert command_of([job])[-1] == "hydra.run.dir=/outputs/x/0"


def test_prep_jobs_write_the_volumes_that_training_jobs_read():
    volumes = [{"claim": "data", "mount_path": "/app/data", "read_only": True, "prep_writes": True},
               {"claim": "reference", "mount_path": "/reference", "read_only": True},
               {"claim": "outputs", "mount_path": "/outputs"}]
    cluster = settings(volumes=volumes, shm_size=None)

    def read_only_mounts(trains: bool) -> set[str]:
        [job] = render_point(cluster, "app", sweep_id("/sweeps/x"), 0, "some.module", [], "/outputs/x/0", trains=trains)
        mounts = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        return {m["mountPath"] for m in mounts if m["readOnly"]}

    assert read_only_mounts(trains=True) == {"/app/data", "/reference"}
    assert read_only_mounts(trains=False) == {"/reference"}


def test_the_cluster_profile_mounts_data_and_weights_for_prep_to_write_and_training_to_read():
    from helpers.core import CONF_DIR
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("burned_area", overrides=["cluster=nautilus"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    by_claim = {v["claim"]: v for v in launcher["volumes"]}
    for claim in ("geoscale-data", "geoscale-weights"):
        assert by_claim[claim]["read_only"] and by_claim[claim]["prep_writes"]
    assert not by_claim["geoscale-outputs"].get("read_only", False)
    assert launcher["env"]["GEOSCALE_WEIGHTS_DIR"] == by_claim["geoscale-weights"]["mount_path"]


def test_job_names_are_unique_dns_labels_over_a_thousand_points():
    sweep = sweep_id("/outputs/burned_area/sweeps/2026-01-01_00-00-00_abcdef12")
    for app in ["burned_area", "Prep_Burned_Area", "a" * 80, "__x__"]:
        names = [job_name(app, sweep, num) for num in range(1000)]
        assert len(set(names)) == 1000
        assert all(DNS_1123_LABEL.match(name) and len(f"{name}-9999") <= 63 for name in names)
    assert job_name("burned_area", sweep, 3) == job_name("burned_area", sweep, 3)
    assert job_name("burned_area", sweep, 3) != job_name("burned_area", sweep_id("/other"), 3)


def calls_of_the_launcher() -> dict[tuple[str, str], list[str]]:
    """(API group, resource) -> verbs, from the client calls in the launcher's cluster code."""
    from collections import defaultdict
    from pathlib import Path

    import hydra_plugins.geoscale_kubernetes_launcher._cluster as cluster

    source = Path(cluster.__file__).read_text()
    verbs: dict[tuple[str, str], set[str]] = defaultdict(set)
    calls = re.findall(r"(stream\()?self\.(batch|core)\.(create|delete|list|read)_namespaced_(job|service|pod)(_log)?\b",
                       source)
    for streamed, api, verb, kind, log in calls:
        resource = ("batch" if api == "batch" else "", f"{kind}s" + ("/log" if log else ""))
        verbs[resource].add("get" if verb == "read" else verb)
        if streamed:
            verbs[resource].add("watch")
    return {resource: sorted(names) for resource, names in verbs.items()}


def test_rbac_grants_only_the_verbs_the_launcher_uses():
    import yaml

    documents = list(yaml.safe_load_all((REPO / "docker" / "rbac.yaml").read_text()))
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)
    (role,) = [d for d in documents if d["kind"] == "Role"]
    grants = {(group, resource): sorted(rule["verbs"]) for rule in role["rules"]
              for group in rule["apiGroups"] for resource in rule["resources"]}
    assert grants == calls_of_the_launcher()
    (binding,) = [d for d in documents if d["kind"] == "RoleBinding"]
    assert all(subject.get("namespace") for subject in binding["subjects"])
