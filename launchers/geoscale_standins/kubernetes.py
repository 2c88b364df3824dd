"""A local stand-in for the Kubernetes API server, for tests and benchmarks of the launcher.

It speaks enough of the REST API for the official ``kubernetes`` client: batch/v1 Jobs
(create, get, list, watch, delete, delete-collection), core/v1 Pods (list, get, log) and
Services (create, get, list, delete). A stand-in job controller runs each pod's first
container as a local process and reports Complete or Failed the way Kubernetes 1.31+ does
(backoffLimit, podFailurePolicy, activeDeadlineSeconds, Indexed completions).

    with KubeStandIn(workdir=repo, secrets={"s3": {"key": "..."}}) as server:
        configuration = kubernetes.client.Configuration(host=server.url)

The launcher never imports this module: it lives outside the plugin package, which Hydra's plugin
scan imports whole at each app start.
"""

import copy
import json
import os
import random
import re
import signal
import string
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .serving import ServedStandIn, StandInHandler

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
ROUTES = [
    re.compile(r"^/apis/batch/v1(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>jobs)(?:/(?P<name>[^/]+)(?:/(?P<sub>status))?)?$"),
    re.compile(r"^/api/v1(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>pods|services)(?:/(?P<name>[^/]+)(?:/(?P<sub>log|status))?)?$"),
]
KINDS = {"jobs": ("Job", "batch/v1"), "pods": ("Pod", "v1"), "services": ("Service", "v1")}
CREATABLE = {"jobs", "services"}
DEFAULT_WATCH_TIMEOUT_S = 1800
VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0-standin", "gitCommit": "standin",
           "gitTreeState": "clean", "buildDate": "2024-08-13T00:00:00Z", "goVersion": "go1.22",
           "compiler": "gc", "platform": "linux/amd64"}


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str) -> dict:
    """A failure ``v1 Status`` as the API server returns it with errors."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class ApiError(Exception):
    """An error answered to the client as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.status = status_object(code, reason, message)


def parse_label_selector(selector: str) -> list[tuple[str, str, str | None]]:
    """``a=b,c!=d,e,!f`` -> [(op, key, value)]; set-based selectors are refused with 400."""
    requirements = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if match := re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*([^=!\s]*)", term):
            key, op, value = match.groups()
            requirements.append(("!=" if op == "!=" else "=", key, value))
        elif re.fullmatch(r"!?[^=!\s()]+", term):
            requirements.append(("!exists", term[1:], None) if term.startswith("!") else ("exists", term, None))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    return requirements


def labels_match(labels: dict, requirements: list) -> bool:
    checks = {"=": lambda k, v: labels.get(k) == v, "!=": lambda k, v: labels.get(k) != v,
              "exists": lambda k, v: k in labels, "!exists": lambda k, v: k not in labels}
    return all(checks[op](key, value) for op, key, value in requirements)


def exit_code_of(returncode: int) -> int:
    """A container's exit code as Kubernetes reports it (128 + signal for a killed process)."""
    return 128 - returncode if returncode < 0 else returncode


def failure_policy_action(job: dict, exit_code: int, pod_conditions: list[dict]) -> tuple[str, int] | None:
    """The action and index of the first podFailurePolicy rule that matches a failed pod, or None."""
    true_conditions = {c["type"] for c in pod_conditions if c.get("status") == "True"}
    for index, rule in enumerate((job["spec"].get("podFailurePolicy") or {}).get("rules", [])):
        on_codes, on_conditions = rule.get("onExitCodes"), rule.get("onPodConditions")
        if on_codes:
            values = set(on_codes.get("values", []))
            matched = exit_code in values if on_codes.get("operator") == "In" else exit_code not in values and exit_code != 0
        else:
            matched = any(c["type"] in true_conditions and c.get("status", "True") == "True" for c in on_conditions or [])
        if matched:
            return rule["action"], index
    return None


@dataclass
class Faults:
    """Fault injection: set the fields while the server runs."""

    fail_creates: int = 0  # the next N creates answer 500 InternalError, then creates succeed
    watch_gone: int = 0  # the next N watches answer an ERROR event with a 410 Gone Status
    watch_close_after_s: float | None = None  # every watch stream ends after this many seconds
    hold_pending: Callable[[dict], bool] = lambda job: False  # jobs whose pods stay Pending forever
    # jobs whose pods are scheduled but whose container waits forever with this reason (ErrImagePull, ...)
    stuck_waiting: Callable[[dict], str | None] = lambda job: None
    answer_create_after_s: float = 0.0  # a create's object exists at once, its answer comes this much later
    forbid_creates_after: int | None = None  # creates beyond this many answer 403 Forbidden (RBAC, quota)


@dataclass
class JobRun:
    """The controller's runtime state of one Job."""

    namespace: str
    name: str
    uid: str
    finished: threading.Event = field(default_factory=threading.Event)
    processes: dict = field(default_factory=dict)  # pod name -> Popen
    evicted: set = field(default_factory=set)  # pod names
    failed: int = 0
    succeeded_indexes: set = field(default_factory=set)


MOUNT_SCRIPT = r"""
set -e
image="$1"; workdir="$2"; shift 2
if [ -n "$image" ]; then mkdir -p "$workdir" && mount --bind "$image" "$workdir"; fi
while [ "$1" != "--" ]; do
  kind="$1"; source="$2"; target="$3"; mode="$4"; shift 4
  mkdir -p "$target"
  if [ "$kind" = tmpfs ]; then mount -t tmpfs -o "size=$source" tmpfs "$target"
  else mkdir -p "$source" && mount --bind "$source" "$target"; fi
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "$target"; fi
done
shift
cd "$workdir"
exec "$@"
"""
"""Run in a private mount namespace: binds the image root at the working directory, then each volume at its
mount path (read-only ones remounted so), then runs the container's command there."""


@dataclass
class Kubelet:
    """Runs each pod's container as a kubelet would on its node: in a private mount namespace
    (``unshare``, which needs root), with the image's filesystem (``image_root``, e.g. the repository
    a Docker image would hold) bound at the container's ``workingDir``, each persistentVolumeClaim's
    directory (``claims``: claim name -> host directory) bound at its ``mountPath`` and remounted
    read-only where the mount says ``readOnly``, and each memory emptyDir a private tmpfs; the command
    runs in ``workingDir``. A mount path missing here is made as an empty directory, as a kubelet makes
    it in a container's root. So what would fail on a cluster for a path or a mount fails here too.
    """

    claims: dict
    image_root: Path | None = None

    @staticmethod
    def available() -> bool:
        """Whether this machine lets this process make a private mount namespace with bind mounts."""
        import shutil
        import tempfile

        if shutil.which("unshare") is None:
            return False
        with tempfile.TemporaryDirectory() as target:
            probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                    f"mount --bind {target} {target} && mount -o remount,bind,ro {target}"],
                                   capture_output=True)
        return probe.returncode == 0

    def command(self, pod_spec: dict, container: dict, argv: list[str]) -> list[str]:
        """``argv`` wrapped to run with the pod's mounts; KeyError names a claim that has no directory."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
        mounts = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            mode = "ro" if mount.get("readOnly") else "rw"
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if claim not in self.claims:
                    raise KeyError(f"persistentVolumeClaim {claim!r} has no directory on this node")
                mounts += ["bind", str(self.claims[claim]), mount["mountPath"], mode]
            elif "emptyDir" in volume:
                mounts += ["tmpfs", str(volume["emptyDir"].get("sizeLimit") or "64Mi").replace("i", ""),
                           mount["mountPath"], mode]
        workdir = container.get("workingDir") or "/"
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", MOUNT_SCRIPT, "kubelet",
                str(self.image_root or ""), workdir, *mounts, "--", *argv]


class KubeHandler(StandInHandler):
    """HTTP front of a ``KubeStandIn``: routing, verbs, JSON, chunked watch streams."""

    standin: "KubeStandIn"
    methods = ("GET", "POST", "DELETE", "PUT", "PATCH")

    def internal_error(self, error: Exception) -> dict:
        return status_object(500, "InternalError", f"stand-in error: {error!r}")

    def answer(self, method: str) -> None:
        standin = self.standin
        path, query = self.request_target()
        body = self.read_body()
        try:
            if path == "/version" and method == "GET":
                self.send_json(200, VERSION)
                return
            route = next((m for pattern in ROUTES if (m := pattern.match(path))), None)
            if route is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            resource, namespace, name, sub = route.group("resource", "ns", "name", "sub")
            verb = self._verb(method, name, sub, query)
            with standin._lock:
                standin.request_counts[verb] += 1
            if verb in ("create", "delete", "deletecollection", "get", "log") and namespace is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if verb == "create":
                if resource not in CREATABLE:
                    raise ApiError(405, "MethodNotAllowed", f"create is not supported for {resource} here")
                self.send_json(201, standin.create(resource, namespace, json.loads(body or b"{}")))
            elif verb == "get":
                self.send_json(200, standin.get(resource, namespace, name))
            elif verb == "log":
                self._send_log(namespace, name, query.get("tailLines"))
            elif verb == "list":
                self.send_json(200, standin.list_objects(resource, namespace, query.get("labelSelector", "")))
            elif verb == "watch":
                self._stream_watch(resource, namespace, query)
            elif verb == "delete":
                options = json.loads(body) if body else {}
                propagation = query.get("propagationPolicy") or options.get("propagationPolicy")
                self.send_json(200, standin.delete(resource, namespace, name, propagation))
            elif verb == "deletecollection":
                self._delete_collection(resource, namespace, query, json.loads(body) if body else {})
            else:
                raise ApiError(405, "MethodNotAllowed", f"{method} is not supported by the stand-in")
        except ApiError as error:
            self.send_json(error.status["code"], error.status)

    @staticmethod
    def _verb(method: str, name: str | None, sub: str | None, query: dict) -> str:
        if method == "GET":
            if name is None:
                return "watch" if query.get("watch") in ("true", "1", "True") else "list"
            return "log" if sub == "log" else "get"
        if method == "POST" and name is None:
            return "create"
        if method == "DELETE":
            return "delete" if name else "deletecollection"
        return method.lower()

    def _send_log(self, namespace: str, pod: str, tail_lines: str | None) -> None:
        self.standin.get("pods", namespace, pod)
        text = self.standin.pod_log(namespace, pod)
        if tail_lines is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail_lines):]) if int(tail_lines) > 0 else ""
        self.send_body(200, text.encode(), "text/plain")

    def _stream_watch(self, resource: str, namespace: str | None, query: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(event: dict) -> None:
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        timeout_s = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT_S)
        self.standin.watch(resource, namespace, query.get("labelSelector", ""), query.get("resourceVersion"),
                           timeout_s, send)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _delete_collection(self, resource: str, namespace: str, query: dict, options: dict) -> None:
        propagation = query.get("propagationPolicy") or options.get("propagationPolicy")
        listed = self.standin.list_objects(resource, namespace, query.get("labelSelector", ""))
        for obj in listed["items"]:
            try:
                self.standin.delete(resource, namespace, obj["metadata"]["name"], propagation)
            except ApiError:
                pass  # deleted meanwhile
        self.send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})


class KubeStandIn(ServedStandIn):
    """A Kubernetes API server stand-in with a job controller that runs pods as local processes.

    workdir: working directory of pod processes. secrets: ``{secret: {key: value}}`` for
    ``secretKeyRef`` and ``envFrom.secretRef`` (missing ones are skipped). instant_pods: pods
    do not run; they succeed at once with the log line ``geoscale-result: <result(job)>``.
    A container command ``python``/``python3`` runs with this interpreter. Indexed Job pods get
    their hostnames, and the names cluster DNS would give them behind a headless Service are
    handed to their processes as 127.0.0.1. kubelet: run each pod with its volumes, in its working
    directory, as :class:`Kubelet` says (else in ``workdir``, with no mounts). retry_delay_s: pause
    before a failed pod is replaced. history_limit: watch events kept; a watch from before them gets 410.
    """

    def __init__(self, workdir: str | Path = ".", secrets: dict | None = None, instant_pods: bool = False,
                 result: Callable[[dict], dict] = lambda job: {"objective": "val_iou", "value": 0.5},
                 retry_delay_s: float = 0.0, history_limit: int = 100_000, kubelet: Kubelet | None = None):
        self.workdir = Path(workdir)
        self.kubelet = kubelet
        self.secrets = secrets or {}
        self.instant_pods = instant_pods
        self.result = result
        self.retry_delay_s = retry_delay_s
        self.faults = Faults()
        self.request_counts: Counter = Counter()  # by verb: create, get, list, watch, delete, deletecollection, log
        self.outcomes: Counter = Counter()  # Jobs finished, by final condition: Complete, Failed
        self._lock = threading.Condition()
        self._objects: dict[str, dict[tuple[str, str], dict]] = {resource: {} for resource in KINDS}
        self._logs: dict[tuple[str, str], list[bytes]] = {}
        self._runs: dict[tuple[str, str], JobRun] = {}
        self._events: deque = deque(maxlen=history_limit)  # (rv, resource, type, object)
        self._resource_version = 1  # "0" in a watch means "from now, with the current objects"
        self._forgotten_before = 0  # watches from an older resourceVersion get 410 Gone
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------
    handler, thread_name = KubeHandler, "kube-standin"

    def stop(self) -> None:
        """Stop every pod process, then serving."""
        with self._lock:
            self._stopping = True
            runs = list(self._runs.values())
            self._lock.notify_all()
        for run in runs:
            run.finished.set()
            for process in list(run.processes.values()):
                kill_process_group(process)
        super().stop()

    # -- inspection and faults -----------------------------------------------------------------
    @property
    def jobs(self) -> dict[str, dict]:
        """Current Jobs by name (all namespaces), as copies."""
        return self._snapshot("jobs")

    @property
    def pods(self) -> dict[str, dict]:
        """Current Pods by name (all namespaces), as copies."""
        return self._snapshot("pods")

    @property
    def services(self) -> dict[str, dict]:
        return self._snapshot("services")

    def running_processes(self) -> int:
        """How many pod processes are still alive."""
        with self._lock:
            processes = [p for run in self._runs.values() for p in run.processes.values()]
        return sum(p.poll() is None for p in processes)

    def pod_log(self, namespace: str, pod: str) -> str:
        with self._lock:
            return b"".join(self._logs.get((namespace, pod), [])).decode(errors="replace")

    def compact(self) -> None:
        """Forget the watch history: a watch from any earlier resourceVersion gets 410 Gone."""
        with self._lock:
            self._forgotten_before = self._resource_version
            self._events.clear()

    def evict(self, pod: str, namespace: str = "default") -> None:
        """Evict a pod: condition DisruptionTarget, process killed, pod Failed."""
        with self._lock:
            obj = self._objects["pods"].get((namespace, pod))
            if obj is None:
                raise KeyError(f"no pod {namespace}/{pod}")
            run = self._runs.get((namespace, obj["metadata"]["labels"]["job-name"]))
            obj["status"].setdefault("conditions", []).append(
                {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                 "message": "Eviction API: evicting", "lastTransitionTime": now_rfc3339()})
            self._put("pods", obj, "MODIFIED")
            if run is not None:
                run.evicted.add(pod)
                process = run.processes.get(pod)
        if run is not None and process is not None:
            kill_process_group(process)

    # -- store ---------------------------------------------------------------------------------
    def _snapshot(self, resource: str) -> dict[str, dict]:
        with self._lock:
            return {name: copy.deepcopy(obj) for (_, name), obj in self._objects[resource].items()}

    def _put(self, resource: str, obj: dict, event_type: str) -> dict:
        """Store (or delete, for DELETED) an object under a new resourceVersion; caller holds the lock."""
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if event_type == "DELETED":
            self._objects[resource].pop(key, None)
        else:
            self._objects[resource][key] = obj
        if len(self._events) == self._events.maxlen:
            self._forgotten_before = self._events[0][0]
        self._events.append((self._resource_version, resource, event_type, copy.deepcopy(obj)))
        self._lock.notify_all()
        return obj

    def _update_job_status(self, run: JobRun, **status) -> None:
        with self._lock:
            job = self._objects["jobs"].get((run.namespace, run.name))
            if job is None or job["metadata"]["uid"] != run.uid:
                return
            job["status"].update(status)
            self._put("jobs", job, "MODIFIED")

    def _update_pod(self, namespace: str, name: str, **status) -> None:
        with self._lock:
            pod = self._objects["pods"].get((namespace, name))
            if pod is not None:
                pod["status"].update(status)
                self._put("pods", pod, "MODIFIED")

    # -- API verbs -------------------------------------------------------------------------------
    def create(self, resource: str, namespace: str, body: dict) -> dict:
        with self._lock:
            if self.faults.fail_creates > 0:
                self.faults.fail_creates -= 1
                raise ApiError(500, "InternalError", "Internal error occurred: injected fault")
            if self.faults.forbid_creates_after is not None and self.request_counts["create"] > self.faults.forbid_creates_after:
                raise ApiError(403, "Forbidden", f'{resource}.batch is forbidden: User "system:serviceaccount:'
                               f'{namespace}:geoscale-launcher" cannot create resource "{resource}": injected fault')
            kind, api_version = KINDS[resource]
            metadata = body.setdefault("metadata", {})
            if not metadata.get("name") and metadata.get("generateName"):
                metadata["name"] = metadata["generateName"] + random_suffix()
            name = metadata.get("name") or ""
            if not DNS_1123_LABEL.match(name):
                raise ApiError(422, "Invalid", f'{kind}.{api_version.split("/")[0]} "{name}" is invalid: metadata.name: '
                               "Invalid value: must be a lowercase RFC 1123 label of at most 63 characters")
            if (namespace, name) in self._objects[resource]:
                group = api_version.split("/")[0] if "/" in api_version else ""
                raise ApiError(409, "AlreadyExists", f'{resource}{"." + group if group else ""} "{name}" already exists')
            body.update(kind=kind, apiVersion=api_version)
            metadata.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
            body.setdefault("status", {})
            if resource == "jobs":
                self._default_job(body)
            obj = self._put(resource, body, "ADDED")
            if resource == "jobs":
                run = JobRun(namespace, name, metadata["uid"])
                self._runs[(namespace, name)] = run
                threading.Thread(target=self._control_job, args=(run,), name=f"job-{name}", daemon=True).start()
            created = copy.deepcopy(obj)
        time.sleep(self.faults.answer_create_after_s)
        return created

    @staticmethod
    def _default_job(job: dict) -> None:
        """Defaults the API server fills in for a Job."""
        spec, uid, name = job.setdefault("spec", {}), job["metadata"]["uid"], job["metadata"]["name"]
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("suspend", False)
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        template_labels = spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {})
        template_labels.update({"batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                                "batch.kubernetes.io/job-name": name, "job-name": name})

    def get(self, resource: str, namespace: str, name: str) -> dict:
        with self._lock:
            obj = self._objects[resource].get((namespace, name))
            if obj is None:
                group = "batch" if resource == "jobs" else ""
                raise ApiError(404, "NotFound", f'{resource}{"." + group if group else ""} "{name}" not found')
            return copy.deepcopy(obj)

    def list_objects(self, resource: str, namespace: str | None, selector: str) -> dict:
        requirements = parse_label_selector(selector)
        kind, api_version = KINDS[resource]
        with self._lock:
            items = [copy.deepcopy(obj) for (ns, _), obj in self._objects[resource].items()
                     if namespace in (None, ns) and labels_match(obj["metadata"].get("labels") or {}, requirements)]
            return {"kind": f"{kind}List", "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(self._resource_version)}, "items": items}

    def delete(self, resource: str, namespace: str, name: str, propagation: str | None) -> dict:
        """Delete one object; a Job's pods go too unless propagation is Orphan or unset (the Jobs API default)."""
        obj = self.get(resource, namespace, name)
        with self._lock:
            self._put(resource, obj, "DELETED")
            run = self._runs.pop((namespace, name), None) if resource == "jobs" else None
        if run is not None:
            run.finished.set()
            if propagation in ("Background", "Foreground"):
                self._delete_pods_of(run)
        if resource == "services":
            return obj  # the Services API answers a delete with the deleted object, the Jobs API with a Status
        api_version = KINDS[resource][1]
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": api_version.split("/")[0] if "/" in api_version else "",
                            "kind": resource, "uid": obj["metadata"]["uid"]}}

    def _delete_pods_of(self, run: JobRun) -> None:
        with self._lock:
            pods = [obj for (ns, _), obj in self._objects["pods"].items()
                    if ns == run.namespace and obj["metadata"]["labels"].get("batch.kubernetes.io/controller-uid") == run.uid]
            for pod in pods:
                self._put("pods", pod, "DELETED")
        for process in list(run.processes.values()):
            kill_process_group(process)

    # -- watch -----------------------------------------------------------------------------------
    def watch(self, resource: str, namespace: str | None, selector: str, resource_version: str | None,
              timeout_s: float, send: Callable[[dict], None]) -> None:
        """Send watch events until the timeout, the server stops, or the client goes away."""
        requirements = parse_label_selector(selector)
        close_after = self.faults.watch_close_after_s
        deadline = time.monotonic() + (timeout_s if close_after is None else min(timeout_s, close_after))

        def wanted(event) -> bool:
            _, event_resource, _, obj = event
            return (event_resource == resource and namespace in (None, obj["metadata"]["namespace"])
                    and labels_match(obj["metadata"].get("labels") or {}, requirements))

        with self._lock:
            since = int(resource_version) if resource_version not in (None, "", "0") else None
            if self.faults.watch_gone > 0 or (since is not None and since < self._forgotten_before):
                self.faults.watch_gone = max(0, self.faults.watch_gone - 1)
                send({"type": "ERROR", "object": status_object(
                    410, "Expired", f"too old resource version: {resource_version} ({self._forgotten_before + 1})")})
                return
            if since is None:
                backlog = [{"type": "ADDED", "object": copy.deepcopy(obj)} for (ns, _), obj in self._objects[resource].items()
                           if wanted((0, resource, "", obj))]
            else:
                backlog = [{"type": t, "object": o} for event in self._events if event[0] > since and wanted(event)
                           for _, _, t, o in [event]]
            cursor = self._resource_version
        for event in backlog:
            send(event)
        while True:
            with self._lock:
                while self._resource_version == cursor and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self._lock.wait(remaining)
                if self._stopping:
                    return
                new = [{"type": t, "object": o} for event in reversed(self._events) if event[0] > cursor and wanted(event)
                       for _, _, t, o in [event]]
                cursor = self._resource_version
            for event in reversed(new):
                send(event)

    # -- job controller ----------------------------------------------------------------------------
    def _control_job(self, run: JobRun) -> None:
        """Run a Job's pods to completion or failure and record its conditions."""
        with self._lock:
            job = copy.deepcopy(self._objects["jobs"][(run.namespace, run.name)])
        spec = job["spec"]
        self._update_job_status(run, startTime=now_rfc3339(), active=0, ready=0, succeeded=0, failed=0)
        indexes = list(range(spec["completions"]))
        if self.faults.hold_pending(job) or self.faults.stuck_waiting(job):
            for index in indexes:
                self._create_pod(run, job, index, phase="Pending")
            self._update_job_status(run, active=len(indexes))
        else:
            slots = threading.Semaphore(max(1, spec["parallelism"]))
            for index in indexes:
                threading.Thread(target=self._run_index, args=(run, job, index, slots), daemon=True).start()
        deadline = spec.get("activeDeadlineSeconds")
        if not run.finished.wait(deadline) and deadline is not None:
            self._finish(run, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")

    def _run_index(self, run: JobRun, job: dict, index: int, slots: threading.Semaphore) -> None:
        """Run pods for one completion index until one succeeds or the Job is finished."""
        with slots:
            while not run.finished.is_set():
                pod_name = self._create_pod(run, job, index, phase="Pending")
                if pod_name is None:  # the Job finished meanwhile
                    return
                exit_code = self._run_pod(run, job, pod_name, index)
                if run.finished.is_set():
                    return
                if exit_code == 0:
                    self._record_success(run, job, index)
                    return
                if not self._record_failure(run, job, pod_name, exit_code):
                    return
                time.sleep(self.retry_delay_s)

    def _create_pod(self, run: JobRun, job: dict, index: int, phase: str) -> str | None:
        """Add a pod of ``job`` for ``index`` in ``phase``; its name, or None once the Job has finished."""
        template = copy.deepcopy(job["spec"]["template"])
        indexed = job["spec"]["completionMode"] == "Indexed"
        name = f"{run.name[:50]}-{index}-{random_suffix()}" if indexed else f"{run.name[:57]}-{random_suffix()}"
        metadata = template.get("metadata") or {}
        labels, annotations = dict(metadata.get("labels") or {}), dict(metadata.get("annotations") or {})
        if indexed:
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
            annotations["batch.kubernetes.io/job-completion-index"] = str(index)
        pod_spec = template["spec"]
        pod_spec["nodeName"] = f"standin-node-{index}"
        if indexed:
            pod_spec["hostname"] = f"{run.name}-{index}"
        status = {"phase": phase, "conditions": []}
        if phase == "Pending" and self.faults.hold_pending(job):
            pod_spec.pop("nodeName")
            status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": "0/1 nodes are available: insufficient resources."}]
        elif phase == "Pending" and (reason := self.faults.stuck_waiting(job)):
            container = pod_spec["containers"][0]
            status["containerStatuses"] = [{
                "name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                "restartCount": 0, "state": {"waiting": {"reason": reason, "message": f"injected: {reason}"}}}]
        pod = {"kind": "Pod", "apiVersion": "v1", "spec": pod_spec, "status": status,
               "metadata": {"name": name, "namespace": run.namespace, "uid": str(uuid.uuid4()),
                            "creationTimestamp": now_rfc3339(), "labels": labels, "annotations": annotations,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": run.name,
                                                 "uid": run.uid, "controller": True, "blockOwnerDeletion": True}]}}
        with self._lock:
            if run.finished.is_set():
                return None
            self._logs[(run.namespace, name)] = []
            self._put("pods", pod, "ADDED")
        return name

    def _run_pod(self, run: JobRun, job: dict, pod_name: str, index: int) -> int:
        """Run a pod's first container (or pretend to, with instant pods); its exit code."""
        container = job["spec"]["template"]["spec"]["containers"][0]
        log = self._logs[(run.namespace, pod_name)]
        started = now_rfc3339()
        running = {"name": container["name"], "image": container.get("image", ""), "imageID": "", "ready": True,
                   "restartCount": 0, "started": True, "state": {"running": {"startedAt": started}}}
        self._update_pod(run.namespace, pod_name, phase="Running", podIP="127.0.0.1", startTime=started,
                         containerStatuses=[running])
        self._count_active(run)
        if self.instant_pods:
            log.append(f"geoscale-result: {json.dumps(self.result(job))}\n".encode())
            exit_code = 0
        else:
            exit_code = self._run_process(run, container, pod_name, index, log, job["spec"]["template"]["spec"])
        terminated = dict(running, ready=False, started=False, state={"terminated": {
            "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": started, "finishedAt": now_rfc3339()}})
        self._update_pod(run.namespace, pod_name, phase="Succeeded" if exit_code == 0 else "Failed",
                         containerStatuses=[terminated])
        return exit_code

    def _run_process(self, run: JobRun, container: dict, pod_name: str, index: int, log: list[bytes],
                     job_pod_spec: dict) -> int:
        env = self._container_env(container, run, pod_name, index)
        argv = [expand_env_references(arg, env) for arg in [*container.get("command", []), *container.get("args", [])]]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        if self.kubelet is not None:
            try:
                argv = self.kubelet.command(job_pod_spec, container, argv)
            except KeyError as error:
                log.append(f"failed to mount the volumes of container {container['name']!r}: {error}\n".encode())
                return 128
        try:
            process = subprocess.Popen(argv, cwd=self.workdir, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            log.append(f"failed to start container {container['name']!r}: {error}\n".encode())
            return 128
        with self._lock:
            run.processes[pod_name] = process
            stopped_meanwhile = run.finished.is_set() or pod_name in run.evicted
        if stopped_meanwhile:
            kill_process_group(process)
        for line in process.stdout:
            log.append(line)
        process.stdout.close()
        return exit_code_of(process.wait())

    def _container_env(self, container: dict, run: JobRun, pod_name: str, index: int) -> dict[str, str]:
        """A container's environment: values, secret references (skipped when unknown), field references."""
        fields = {"metadata.name": pod_name, "metadata.namespace": run.namespace, "status.podIP": "127.0.0.1",
                  "spec.nodeName": f"standin-node-{index}",
                  "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(index),
                  "metadata.labels['batch.kubernetes.io/job-completion-index']": str(index)}
        env = {"JOB_COMPLETION_INDEX": str(index), "HOSTNAME": pod_name}
        for source in container.get("envFrom") or []:
            if secret := self.secrets.get((source.get("secretRef") or {}).get("name")):
                env.update({source.get("prefix", "") + key: value for key, value in secret.items()})
        for variable in container.get("env") or []:
            value_from = variable.get("valueFrom") or {}
            if "value" in variable:
                env[variable["name"]] = expand_env_references(variable["value"], env)
            elif ref := value_from.get("secretKeyRef"):
                if (value := self.secrets.get(ref["name"], {}).get(ref["key"])) is not None:
                    env[variable["name"]] = value
            elif ref := value_from.get("fieldRef"):
                if ref["fieldPath"] in fields:
                    env[variable["name"]] = fields[ref["fieldPath"]]
        # Cluster DNS: every pod here is a local process, so the pod names it would resolve are
        # given as the loopback address wherever a variable holds one (MASTER_ADDR of a multi-node Job).
        dns_names = self._cluster_dns_names(run.namespace)
        return {key: "127.0.0.1" if value in dns_names else value for key, value in env.items()}

    def _cluster_dns_names(self, namespace: str) -> set[str]:
        """Names cluster DNS gives Indexed Job pods behind a headless Service: ``<job>-<index>.<service>``,
        also with ``.<namespace>.svc[.cluster.local]``."""
        with self._lock:
            headless = {name for (ns, name), service in self._objects["services"].items()
                        if ns == namespace and service["spec"].get("clusterIP") == "None"}
            jobs = [job for (ns, _), job in self._objects["jobs"].items() if ns == namespace]
        names = set()
        for job in jobs:
            subdomain = job["spec"]["template"]["spec"].get("subdomain")
            if job["spec"]["completionMode"] == "Indexed" and subdomain in headless:
                for index in range(job["spec"]["completions"]):
                    host = f"{job['metadata']['name']}-{index}.{subdomain}"
                    names |= {host, f"{host}.{namespace}.svc", f"{host}.{namespace}.svc.cluster.local"}
        return names

    def _count_active(self, run: JobRun) -> None:
        with self._lock:
            active = sum(1 for (ns, _), pod in self._objects["pods"].items()
                         if ns == run.namespace and pod["status"]["phase"] in ("Pending", "Running")
                         and pod["metadata"]["labels"].get("batch.kubernetes.io/controller-uid") == run.uid)
        self._update_job_status(run, active=active, ready=active)

    def _record_success(self, run: JobRun, job: dict, index: int) -> None:
        with self._lock:
            run.succeeded_indexes.add(index)
            done = len(run.succeeded_indexes)
        status = {"succeeded": done}
        if job["spec"]["completionMode"] == "Indexed":
            status["completedIndexes"] = format_indexes(run.succeeded_indexes)
        self._update_job_status(run, **status)
        self._count_active(run)
        if done == job["spec"]["completions"]:
            self._finish(run, "Complete", "CompletionsReached", "Reached expected number of succeeded pods")

    def _record_failure(self, run: JobRun, job: dict, pod_name: str, exit_code: int) -> bool:
        """Apply podFailurePolicy and backoffLimit to a failed pod; True when the index should retry."""
        with self._lock:
            pod = self._objects["pods"].get((run.namespace, pod_name)) or {"status": {}}
            conditions = pod["status"].get("conditions") or []
        matched = failure_policy_action(job, exit_code, conditions)
        container = job["spec"]["template"]["spec"]["containers"][0]["name"]
        if matched and matched[0] in ("FailJob", "FailIndex"):
            self._finish(run, "Failed", "PodFailurePolicy",
                         f"Container {container} for pod {run.namespace}/{pod_name} failed with exit code {exit_code} "
                         f"matching {matched[0]} rule at index {matched[1]}")
            return False
        if matched and matched[0] == "Ignore":
            self._count_active(run)
            return True
        with self._lock:
            run.failed += 1
            failed = run.failed
        self._update_job_status(run, failed=failed)
        self._count_active(run)
        if failed > job["spec"]["backoffLimit"]:
            self._finish(run, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            return False
        return True

    def _finish(self, run: JobRun, outcome: str, reason: str, message: str) -> None:
        """Record a Job's final conditions (Complete or Failed, after their interim condition) and stop its pods."""
        with self._lock:
            if run.finished.is_set():
                return
            run.finished.set()
            self.outcomes[outcome] += 1
            processes = list(run.processes.values())
        for process in processes:
            kill_process_group(process)
        stamp = now_rfc3339()
        interim = "SuccessCriteriaMet" if outcome == "Complete" else "FailureTarget"
        conditions = [{"type": kind, "status": "True", "reason": reason, "message": message,
                       "lastProbeTime": stamp, "lastTransitionTime": stamp} for kind in (interim, outcome)]
        status = {"conditions": conditions, "active": 0, "ready": 0}
        if outcome == "Complete":
            status["completionTime"] = stamp
        self._update_job_status(run, **status)
        with self._lock:
            for (ns, _), pod in self._objects["pods"].items():
                if (ns == run.namespace and pod["status"]["phase"] in ("Pending", "Running")
                        and pod["metadata"]["labels"].get("batch.kubernetes.io/controller-uid") == run.uid):
                    pod["status"]["phase"] = "Failed"
                    self._put("pods", pod, "MODIFIED")


def random_suffix() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=5))


def format_indexes(indexes: set[int]) -> str:
    """Completed indexes the Kubernetes way: ``1,3-5``."""
    ranges, ordered = [], sorted(indexes)
    for value in ordered:
        if ranges and value == ranges[-1][1] + 1:
            ranges[-1][1] = value
        else:
            ranges.append([value, value])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def expand_env_references(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in commands, args and env values; unknown ones stay as they are."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def kill_process_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
