"""Kubernetes manifests of a sweep point, as plain dicts: pure functions, no cluster needed."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping, Sequence

from hydra._internal.grammar.utils import escape_special_characters

from apps.foundation.errors import CONFIG_ERROR_EXIT_CODE, NOT_READY_EXIT_CODE

APP_LABEL = "geoscale.io/app"
SWEEP_LABEL = "geoscale.io/sweep"
JOB_LABEL = "geoscale.io/job"
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
CONTAINER_NAME = "main"
# A DNS-1123 label has at most 63 characters; an Indexed pod's hostname appends "-<index>" to the name.
MAX_NAME_LENGTH = 63 - len("-9999")


def dns_label(text: str) -> str:
    """``text`` as a DNS-1123 label fragment: lowercase alphanumerics and inner dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-") or "app"


def sweep_id(sweep_dir: str) -> str:
    """A short, stable id of a sweep: 10 hex digits of the hash of its directory."""
    return hashlib.sha1(str(sweep_dir).encode()).hexdigest()[:10]


def job_name(app: str, sweep: str, num: int) -> str:
    """``<app>-<sweep id>-<job num>``, the app part shortened so the name fits MAX_NAME_LENGTH."""
    suffix = f"-{sweep}-{num}"
    return dns_label(app)[: MAX_NAME_LENGTH - len(suffix)].rstrip("-") + suffix


def point_labels(app: str, sweep: str, num: int) -> dict[str, str]:
    """The labels of a point's Job, pods and Service: ``kubectl get jobs -l geoscale.io/sweep=<id>``."""
    return {APP_LABEL: dns_label(app), SWEEP_LABEL: sweep, JOB_LABEL: str(num)}


def pod_command(settings: Mapping[str, Any], app_module: str, overrides: Sequence[str], run_dir: str,
                config_name: str | None = None) -> list[str]:
    """The pod's argv: the app with its primary config ``config_name`` (None: the app's default) and
    ``overrides``, writing its run directory to ``run_dir``.

    A list, never a shell line, so override values need no shell quoting; the run dir is escaped
    for Hydra's override grammar (a subdir such as ``a=1,b=2`` is one path, not a sweep).
    """
    config = [f"--config-name={config_name}"] if config_name else []
    return [settings["python"], "-m", app_module, *config, *overrides,
            f"hydra.run.dir={escape_special_characters(run_dir)}"]


def _resources(settings: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    requests = {"cpu": str(settings["cpu_request"]), "memory": str(settings["memory_request"])}
    limits = {key: str(settings[f"{key}_limit"]) for key in ("cpu", "memory") if settings[f"{key}_limit"] is not None}
    if settings["gpus"] > 0:
        requests[settings["gpu_resource"]] = limits[settings["gpu_resource"]] = str(settings["gpus"])
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}


def _env(settings: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    env = [{"name": key, "value": str(value)} for key, value in settings["env"].items()]
    env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": ref["secret"], "key": ref["key"]}}}
            for key, ref in settings["secret_env"].items()]
    if settings["num_nodes"] > 1:
        env += [
            {"name": "MASTER_ADDR", "value": f"{name}-0.{name}"},
            {"name": "MASTER_PORT", "value": str(settings["master_port"])},
            {"name": "WORLD_SIZE", "value": str(settings["num_nodes"] * max(settings["gpus"], 1))},
            {"name": "NODE_RANK", "valueFrom": {"fieldRef": {
                "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}},
        ]
    return env


def _volumes(settings: Mapping[str, Any], trains: bool) -> tuple[list[dict], list[dict]]:
    """The pod's volumes and mounts: ``read_only`` volumes stay read-only, except that a point which
    does not train (acquisition, prep, weights) mounts those marked ``prep_writes`` writable."""
    volumes, mounts = [], []
    for i, volume in enumerate(settings["volumes"]):
        volume_name = f"{dns_label(volume['claim'])[:50]}-{i}"
        read_only = bool(volume.get("read_only", False)) and (trains or not volume.get("prep_writes", False))
        volumes.append({"name": volume_name, "persistentVolumeClaim": {"claimName": volume["claim"]}})
        mounts.append({"name": volume_name, "mountPath": volume["mount_path"], "readOnly": read_only})
    if settings["shm_size"]:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(settings["shm_size"])}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


def _affinity(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    if not settings["gpu_models"] or settings["gpus"] == 0:
        return None
    requirement = {"key": settings["gpu_node_label"], "operator": "In", "values": [str(m) for m in settings["gpu_models"]]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [requirement]}]}}}


def _pod_spec(settings: Mapping[str, Any], name: str, command: list[str], trains: bool) -> dict[str, Any]:
    volumes, mounts = _volumes(settings, trains)
    container = {
        "name": CONTAINER_NAME,
        "image": settings["image"],
        "imagePullPolicy": settings["image_pull_policy"],
        "command": command,
        "workingDir": settings["workdir"],
        "env": _env(settings, name),
        "resources": _resources(settings),
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if settings["env_from_secrets"]:
        container["envFrom"] = [{"secretRef": {"name": secret}} for secret in settings["env_from_secrets"]]
    if settings["num_nodes"] > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": settings["master_port"]}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"runAsNonRoot": True, "runAsUser": settings["run_as_user"],
                            "runAsGroup": settings["run_as_user"], "fsGroup": settings["run_as_user"],
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    optional = {
        "serviceAccountName": settings["service_account"],
        "priorityClassName": settings["priority_class"],
        "imagePullSecrets": [{"name": secret} for secret in settings["image_pull_secrets"]] or None,
        "affinity": _affinity(settings),
        "tolerations": [dict(t) for t in settings["tolerations"]] or None,
        "subdomain": name if settings["num_nodes"] > 1 else None,
    }
    spec.update({key: value for key, value in optional.items() if value is not None})
    return spec


def render_job(settings: Mapping[str, Any], name: str, labels: Mapping[str, str], command: list[str],
               trains: bool = True) -> dict[str, Any]:
    """A ``batch/v1`` Job that runs ``command`` once (on ``num_nodes`` indexed pods when > 1); ``trains``
    as in :func:`render_point`.

    Its podFailurePolicy fails the Job at once on CONFIG_ERROR_EXIT_CODE and NOT_READY_EXIT_CODE (an
    immediate retry cannot succeed) and does not count
    pods disrupted by preemption or eviction against backoffLimit.
    """
    job_labels = dict(labels)
    if settings["kueue_queue"]:
        job_labels[KUEUE_LABEL] = settings["kueue_queue"]
    spec: dict[str, Any] = {
        "backoffLimit": settings["backoff_limit"],
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In",
                                                  "values": [CONFIG_ERROR_EXIT_CODE, NOT_READY_EXIT_CODE]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": {"metadata": {"labels": dict(labels)}, "spec": _pod_spec(settings, name, command, trains)},
    }
    if settings["num_nodes"] > 1:
        spec.update(completionMode="Indexed", completions=settings["num_nodes"], parallelism=settings["num_nodes"])
    if settings["active_deadline_seconds"] is not None:
        spec["activeDeadlineSeconds"] = settings["active_deadline_seconds"]
    if settings["ttl_seconds_after_finished"] is not None:
        spec["ttlSecondsAfterFinished"] = settings["ttl_seconds_after_finished"]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": job_labels}, "spec": spec}


def render_service(settings: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The headless Service that gives an Indexed Job's pods the DNS names ``<name>-<index>.<name>``."""
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": dict(labels),
                 "ports": [{"name": "rendezvous", "port": settings["master_port"]}]},
    }


def render_point(settings: Mapping[str, Any], app: str, sweep: str, num: int, app_module: str,
                 overrides: Sequence[str], run_dir: str, trains: bool = True,
                 config_name: str | None = None) -> list[dict[str, Any]]:
    """The manifests of one sweep point: its Job, preceded by a headless Service when multi-node; its
    pod runs ``app_module`` with ``overrides`` (all of them: the point's and those fitting it to its pod)
    and its primary config ``config_name``.

    trains: the app trains; one that does not (acquisition, prep, weights) gets no GPU, whatever
    ``settings["gpus"]`` says, and writes the volumes marked ``prep_writes``.
    """
    if not trains:
        settings = {**settings, "gpus": 0}
    name, labels = job_name(app, sweep, num), point_labels(app, sweep, num)
    job = render_job(settings, name, labels, pod_command(settings, app_module, overrides, run_dir, config_name), trains)
    return [render_service(settings, name, labels), job] if settings["num_nodes"] > 1 else [job]
