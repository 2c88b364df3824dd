"""Submitting a sweep's Jobs to a Kubernetes API server and following them to the end.

Uses only the official client's plain calls: create/list/watch/delete of Jobs (and Services for
multi-node points), list of pods and their logs.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from hydra.errors import HydraException
from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from kubernetes.config import ConfigException, load_incluster_config, load_kube_config
from urllib3.exceptions import HTTPError as TransportError

from apps.foundation.errors import InputError, one_line
from apps.foundation.rundir import POD_LOG

from .manifests import COMPLETION_INDEX_ANNOTATION, CONTAINER_NAME, JOB_LABEL, SWEEP_LABEL
from ._progress import ProgressView
from ._states import IN_FLIGHT, TRANSITIONS, JobState

if TYPE_CHECKING:
    from .launcher import SweepPoint

log = logging.getLogger(__name__)

TRANSIENT_STATUS = {429, 500, 502, 503, 504}
STUCK_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError"}
"""Reasons a container waits that need a person (a wrong image, a missing secret), not time."""
MAX_RETRY_AFTER_S = 60.0


class ClusterUnreachable(InputError, HydraException):
    """The API server cannot be reached: reported as one line by the app's CLI."""


class ClusterRefused(InputError, HydraException):
    """The API server refused a request that retrying will not fix (403 by RBAC, 422 by validation or
    quota, ...): reported as one line by the app's CLI."""


def describe_api_error(error: ApiException) -> str:
    """``<status> <reason>: <the Status message>`` of an API error, on one line."""
    try:
        message = json.loads(error.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = str(error.body or "")
    return one_line(f"{error.status} {error.reason}" + (f": {message}" if message else ""))


@dataclass
class Outcome:
    """How a point ended: the tail of its (leader) pod's log when it completed, the reason when not."""

    completed: bool
    log: str = ""
    reason: str = ""


def make_api_client(settings: dict[str, Any]) -> client.ApiClient:
    """An API client for ``api_server`` (no auth), else the kubeconfig, else the in-cluster account."""
    configuration = client.Configuration()
    if settings["api_server"]:
        configuration.host = settings["api_server"]
    else:
        try:
            load_kube_config(config_file=settings["kube_config"], context=settings["kube_context"],
                             client_configuration=configuration)
        except (ConfigException, OSError) as kube_config_error:
            try:
                load_incluster_config(client_configuration=configuration)
            except ConfigException:
                raise InputError(f"no Kubernetes cluster configured: {one_line(kube_config_error)} "
                                 "(set hydra.launcher.kube_config or hydra.launcher.api_server)") from None
    configuration.verify_ssl = settings["verify_ssl"] and configuration.verify_ssl
    return client.ApiClient(configuration)


class SweepRun:
    """Submits the points' Jobs, at most ``max_in_flight`` at a time, and follows them by watch; each
    point's Job goes through the states of ``_states.py``."""

    def __init__(self, settings: dict[str, Any], sweep: str, points: list[SweepPoint], progress: ProgressView) -> None:
        self.settings, self.points, self.progress = settings, points, progress
        self.namespace = settings["namespace"]
        self.selector = f"{SWEEP_LABEL}={sweep}"
        self.api = make_api_client(settings)
        self.host = self.api.configuration.host
        self.batch, self.core = client.BatchV1Api(self.api), client.CoreV1Api(self.api)
        self.created: dict[str, SweepPoint] = {}  # Jobs to delete when the sweep stops early
        self.states: dict[str, JobState] = {point.name: JobState.QUEUED for point in points}
        self.active: dict[str, SweepPoint] = {}  # in flight, by name
        self.pending: deque[SweepPoint] = deque(points)  # QUEUED, in submission order
        self.outcomes: dict[int, Outcome] = {}
        self.stuck_since: dict[str, float] = {}  # pod name -> when it was first seen stuck
        self.reached = False

    def run(self) -> dict[int, Outcome]:
        """Every point's outcome, by job number. Ctrl-C or an error deletes every Job created first."""
        timeout = self.settings["sweep_timeout_s"]
        deadline = time.monotonic() + timeout if timeout else None
        try:
            self._delete_earlier_jobs()
            self._refill()
            while self.active:
                self._follow(deadline)
                if self.active:
                    self._check_pods()
                if deadline is not None and time.monotonic() >= deadline and self.active:
                    self._time_out(timeout)
        except ApiException as error:
            self._abandon("stopped by an API error")
            raise ClusterRefused(f"Kubernetes API server at {self.host}: {describe_api_error(error)}") from None
        except BaseException as error:  # Ctrl-C, and bugs: no Job is left running unattended
            self._abandon("interrupted" if isinstance(error, KeyboardInterrupt) else "stopped by an error")
            raise
        finally:
            self._delete_services()
            self.api.close()
        return self.outcomes

    def _call(self, function: Callable, *args: Any, retry_of: str | None = None, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)``, retrying 429, 5xx and connection errors with exponential backoff
        (at least as long as a Retry-After header asks)."""
        for attempt in range(self.settings["api_retries"] + 1):
            delay = self.settings["api_backoff_s"] * 2**attempt
            try:
                result = function(*args, **kwargs)
                self.reached = True
                return result
            except ApiException as error:
                self.reached = True
                if error.status not in TRANSIENT_STATUS or attempt == self.settings["api_retries"]:
                    raise
                delay = max(delay, _retry_after_s(error))
            except (TransportError, ConnectionError) as error:
                if attempt == self.settings["api_retries"]:
                    if not self.reached:
                        raise ClusterUnreachable(f"cannot reach the Kubernetes API server at {self.host}: "
                                                 f"{one_line(error)}") from None
                    raise
            if retry_of:
                self.progress.add_retry(retry_of)
            time.sleep(delay)

    def _advance(self, point: SweepPoint, state: JobState, outcome: Outcome | None = None,
                 retries: int | None = None, node: str | None = None) -> None:
        """Move ``point`` to ``state``, as TRANSITIONS allows (else RuntimeError): keeps ``active``, records
        ``outcome`` and shows the state in the progress view (with ``node`` and ``retries``), except for a
        point that never got a Job. ``pending`` is left to the caller, which takes points from it."""
        before = self.states[point.name]
        if state not in TRANSITIONS.get(before, ()):
            raise RuntimeError(f"Job {point.name}: no transition from {before.value} to {state.value}")
        self.states[point.name] = state
        if state in IN_FLIGHT:
            self.active[point.name] = point
        else:
            self.active.pop(point.name, None)
        if outcome is not None:
            self.outcomes[point.num] = outcome
        if before is not JobState.QUEUED or state is JobState.SUBMITTED:
            self.progress.update(point.name, state.value, node, retries)

    def _delete_earlier_jobs(self) -> None:
        """Delete the Jobs an earlier launch of this sweep left under the names of the points to run (the
        API server keeps a finished Job ttlSecondsAfterFinished): each point runs again instead of its
        create answering 409 and that old Job's end being taken for its own."""
        names = {point.name for point in self.pending}
        listed = self._call(self.batch.list_namespaced_job, self.namespace, label_selector=self.selector)
        for job in listed.items:
            if job.metadata.name in names:
                self._delete(self.batch.delete_namespaced_job, job.metadata.name)

    def _refill(self) -> None:
        while self.pending and len(self.active) < self.settings["max_in_flight"]:
            point = self.pending.popleft()
            # Recorded before the create, so an interrupt while it is in flight still deletes the Job.
            self.created[point.name] = point
            for manifest in point.manifests:
                create = (self.batch.create_namespaced_job if manifest["kind"] == "Job"
                          else self.core.create_namespaced_service)
                try:
                    self._call(create, self.namespace, manifest, retry_of=point.name)
                except ApiException as error:
                    if error.status != 409:  # 409: already there, from an earlier attempt of this create
                        raise
            self._advance(point, JobState.SUBMITTED)

    def _follow(self, deadline: float | None) -> None:
        """List the sweep's Jobs, then watch them until the watch times out, breaks or all are done."""
        expected = set(self.active)  # not those that observing the list submits
        listed = self._call(self.batch.list_namespaced_job, self.namespace, label_selector=self.selector)
        for job in listed.items:
            self._observe(job)
        for name in expected - {job.metadata.name for job in listed.items}:
            self._gone(name)
        if not self.active:
            return
        timeout = self.settings["watch_timeout_s"]
        if deadline is not None:
            timeout = max(1, min(timeout, int(deadline - time.monotonic()) + 1))
        stream = watch.Watch()
        try:
            for event in stream.stream(self.batch.list_namespaced_job, self.namespace, label_selector=self.selector,
                                       resource_version=listed.metadata.resource_version, timeout_seconds=timeout):
                if event["type"] == "DELETED":
                    self._gone(event["object"].metadata.name)
                else:
                    self._observe(event["object"])
                if not self.active or (deadline is not None and time.monotonic() >= deadline):
                    stream.stop()
        except ApiException as error:  # 410 Gone and transient errors: re-list for a fresh resourceVersion
            if error.status != 410 and error.status not in TRANSIENT_STATUS:
                raise
        except (TransportError, ConnectionError):
            pass

    def _observe(self, job: client.V1Job) -> None:
        point = self.active.get(job.metadata.name)
        if point is None:
            return
        status = job.status or client.V1JobStatus()
        conditions = {c.type: c for c in status.conditions or [] if c.status == "True"}
        retries = status.failed or 0
        if "Complete" in conditions:
            self._advance(point, JobState.COMPLETE, self._completed(point), retries)
        elif "Failed" in conditions:
            self._advance(point, JobState.FAILED, self._failed(point, conditions["Failed"]), retries)
        elif status.active:
            self._advance(point, JobState.RUNNING, retries=retries,
                          node=self.progress.rows[point.name].node or self._node_of(point))
            return
        elif self.states[point.name] is JobState.SUBMITTED:
            self._advance(point, JobState.PENDING, retries=retries)
            return
        else:  # no pod active now: the state stays, and so does a waiting reason the view shows
            self.progress.update(point.name, retries=retries)
            return
        self._refill()

    def _check_pods(self) -> None:
        """One list of the sweep's pods: each waiting container's reason goes to the progress view, and a
        point whose pod has waited on a STUCK_REASONS reason for ``stuck_pod_grace_s`` fails (Job deleted)."""
        by_num = {str(point.num): point for point in self.active.values()}
        now = time.monotonic()
        for pod in self._call(self.core.list_namespaced_pod, self.namespace, label_selector=self.selector).items:
            point = by_num.get((pod.metadata.labels or {}).get(JOB_LABEL))
            waiting = _waiting_state(pod)
            if point is None or waiting is None or point.name not in self.active:
                self.stuck_since.pop(pod.metadata.name, None)
                continue
            self.progress.update(point.name, waiting.reason)
            if waiting.reason not in STUCK_REASONS:
                self.stuck_since.pop(pod.metadata.name, None)
                continue
            since = self.stuck_since.setdefault(pod.metadata.name, now)
            if now - since >= self.settings["stuck_pod_grace_s"]:
                self._advance(point, JobState.FAILED, Outcome(completed=False, reason=(
                    f"Job {point.name}: pod {pod.metadata.name} waited {now - since:.0f} s on {waiting.reason} "
                    f"({waiting.message or 'no message'}); deleted")))
                self._delete(self.batch.delete_namespaced_job, point.name)
        self._refill()

    def _gone(self, name: str) -> None:
        """A Job of this sweep that is no longer there: deleted by someone else (or its TTL) before it finished."""
        point = self.active.get(name)
        if point is None:
            return
        self._advance(point, JobState.DELETED, Outcome(completed=False, reason=f"Job {name} was deleted before it finished"))
        self._refill()

    def _pods(self, point: SweepPoint) -> list[client.V1Pod]:
        selector = f"{self.selector},{JOB_LABEL}={point.num}"
        pods = self._call(self.core.list_namespaced_pod, self.namespace, label_selector=selector).items
        return sorted(pods, key=lambda pod: pod.metadata.creation_timestamp or 0)

    def _node_of(self, point: SweepPoint) -> str:
        nodes = [pod.spec.node_name for pod in self._pods(point) if pod.spec and pod.spec.node_name]
        return nodes[-1] if nodes else ""

    def _save_log(self, point: SweepPoint, pod: client.V1Pod | None) -> str:
        """The tail of ``pod``'s log, also saved as <run dir>/pod.log."""
        if pod is None:
            return ""
        response = self._call(self.core.read_namespaced_pod_log, pod.metadata.name, self.namespace,
                              container=CONTAINER_NAME, tail_lines=self.settings["log_tail_lines"],
                              _preload_content=False)
        log = response.data.decode(errors="replace")
        point.run_dir.mkdir(parents=True, exist_ok=True)
        (point.run_dir / POD_LOG).write_text(log)
        return log

    def _completed(self, point: SweepPoint) -> Outcome:
        succeeded = [pod for pod in self._pods(point) if pod.status and pod.status.phase == "Succeeded"]
        leader = [pod for pod in succeeded
                  if (pod.metadata.annotations or {}).get(COMPLETION_INDEX_ANNOTATION, "0") == "0"]
        return Outcome(completed=True, log=self._save_log(point, (leader or succeeded or [None])[-1]))

    def _failed(self, point: SweepPoint, condition: client.V1JobCondition) -> Outcome:
        pods = self._pods(point)
        pod = pods[-1] if pods else None
        self._save_log(point, pod)
        reason = f"Job {point.name} failed: {condition.reason or 'Failed'}"
        if condition.message:
            reason += f" ({condition.message})"
        terminated = _terminated_state(pod)
        if terminated is not None:
            reason += f"; exit code {terminated.exit_code}"
            if terminated.reason and terminated.reason != "Error":  # OOMKilled, DeadlineExceeded, ...
                reason += f" ({terminated.reason})"
        return Outcome(completed=False, reason=f"{reason}; log tail in {point.run_dir / POD_LOG}")

    def _time_out(self, timeout: float) -> None:
        def timed_out(point: SweepPoint) -> Outcome:
            return Outcome(completed=False, reason=f"Job {point.name} not finished within the sweep timeout of "
                                                   f"{timeout:g} s; deleted")

        for point in self.pending:
            self._advance(point, JobState.FAILED, timed_out(point))
        self.pending.clear()
        self.delete_all(timed_out)

    def _abandon(self, why: str) -> None:
        """Delete every Job created so far as the sweep stops early; a failure to delete is logged, so
        that the error that stopped the sweep is the one reported."""
        if not self.created:
            return
        try:
            self.delete_all()
        except Exception as error:  # noqa: BLE001 - reported, and the original error goes on
            log.error("Sweep %s; deleting its Jobs failed: %s (kubectl delete jobs -l %s)", why, one_line(error),
                      self.selector)
        else:
            log.warning("Sweep %s: deleted the %d Jobs it created", why, len(self.created))

    def delete_all(self, outcome: Callable[[SweepPoint], Outcome | None] = lambda point: None) -> None:
        """Delete every Job this sweep created, with its pods; each one in flight becomes DELETED with
        ``outcome(point)``."""
        for name in self.created:
            self._delete(self.batch.delete_namespaced_job, name)
            if name in self.active:
                self._advance(self.active[name], JobState.DELETED, outcome(self.active[name]))

    def _delete_services(self) -> None:
        for name, point in self.created.items():
            if any(manifest["kind"] == "Service" for manifest in point.manifests):
                self._delete(self.core.delete_namespaced_service, name)

    def _delete(self, delete: Callable, name: str) -> None:
        try:
            self._call(delete, name, self.namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise


def _retry_after_s(error: ApiException) -> float:
    """The delay in seconds a Retry-After header asks for (the API server's throttling sends one), else 0."""
    value = (error.headers or {}).get("Retry-After", "")
    try:
        return min(float(value), MAX_RETRY_AFTER_S)
    except ValueError:
        return 0.0


def _waiting_state(pod: client.V1Pod) -> client.V1ContainerStateWaiting | None:
    """The main container's waiting state (reason, message), if it waits."""
    for container in (pod.status.container_statuses or []) if pod.status else []:
        if container.name == CONTAINER_NAME and container.state and container.state.waiting:
            return container.state.waiting
    return None


def _terminated_state(pod: client.V1Pod | None) -> client.V1ContainerStateTerminated | None:
    """The main container's terminated state (exit code, reason), if it ended."""
    statuses = (pod.status.container_statuses or []) if pod is not None and pod.status else []
    for container in statuses:
        if container.name == CONTAINER_NAME and container.state and container.state.terminated:
            return container.state.terminated
    return None
