"""The Kubernetes API stand-in, driven through the official client only."""

from __future__ import annotations

import time

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from geoscale_standins.kubernetes import KubeStandIn
from helpers.core import LIMIT_S, wait_until

NS = "default"


@pytest.fixture
def standin(tmp_path):
    with KubeStandIn(workdir=tmp_path, secrets={"s3": {"AWS_ACCESS_KEY_ID": "key-id"},
                                                       "extra": {"REGION": "us-west-2"}}) as server:
        yield server


@pytest.fixture
def apis(standin):
    configuration = client.Configuration(host=standin.url)
    configuration.verify_ssl = False
    api_client = client.ApiClient(configuration)
    yield client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    api_client.close()


def make_job(name: str, code: str, labels: dict | None = None, **spec) -> client.V1Job:
    container = client.V1Container(
        name="main", image="geoscale:test", command=["python", "-c"], args=[code],
        env=[client.V1EnvVar(name="GREETING", value="hello"),
             client.V1EnvVar(name="AWS_ACCESS_KEY_ID", value_from=client.V1EnvVarSource(
                 secret_key_ref=client.V1SecretKeySelector(name="s3", key="AWS_ACCESS_KEY_ID"))),
             client.V1EnvVar(name="MISSING", value_from=client.V1EnvVarSource(
                 secret_key_ref=client.V1SecretKeySelector(name="absent", key="x"))),
             client.V1EnvVar(name="RANK", value_from=client.V1EnvVarSource(field_ref=client.V1ObjectFieldSelector(
                 field_path="metadata.annotations['batch.kubernetes.io/job-completion-index']")))],
        env_from=[client.V1EnvFromSource(secret_ref=client.V1SecretEnvSource(name="extra"))])
    pod = client.V1PodSpec(restart_policy="Never", containers=[container])
    labels = {"name-of-job": name, **(labels or {"sweep": "s1"})}
    return client.V1Job(metadata=client.V1ObjectMeta(name=name, labels=labels),
                        spec=client.V1JobSpec(template=client.V1PodTemplateSpec(spec=pod), **spec))


def final_condition(job: client.V1Job) -> client.V1JobCondition | None:
    return next((c for c in job.status.conditions or [] if c.type in ("Complete", "Failed") and c.status == "True"), None)


def wait_for_condition(batch, name: str, timeout_s: float = LIMIT_S) -> client.V1JobCondition:
    """Follow a Job by watch until it is Complete or Failed; its final condition."""
    listed = batch.list_namespaced_job(NS, label_selector=f"name-of-job={name}")
    if listed.items and (condition := final_condition(listed.items[0])):
        return condition
    stream = watch.Watch()
    for event in stream.stream(batch.list_namespaced_job, NS, label_selector=f"name-of-job={name}",
                               resource_version=listed.metadata.resource_version, timeout_seconds=timeout_s):
        if condition := final_condition(event["object"]):
            stream.stop()
            return condition
    raise AssertionError(f"job {name} did not finish within {timeout_s} s")


def pods_of(core, name: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(NS, label_selector=f"batch.kubernetes.io/job-name={name}").items


def test_pod_runs_completes_and_its_log_reads_back(apis):
    batch, core = apis
    created = batch.create_namespaced_job(
        NS, make_job("hi", "import os; print('hi', os.environ['GREETING'], os.environ['AWS_ACCESS_KEY_ID'], "
                           "'MISSING' in os.environ, os.environ['REGION'])"))
    assert created.metadata.uid and created.metadata.resource_version
    condition = wait_for_condition(batch, "hi")
    assert (condition.type, condition.reason) == ("Complete", "CompletionsReached")
    job = batch.read_namespaced_job("hi", NS)
    assert job.status.succeeded == 1 and job.status.completion_time and job.status.start_time
    assert [c.type for c in job.status.conditions] == ["SuccessCriteriaMet", "Complete"]
    [pod] = pods_of(core, "hi")
    assert pod.metadata.name.startswith("hi-") and len(pod.metadata.name) == len("hi-") + 5
    assert pod.metadata.labels["job-name"] == "hi" and pod.spec.node_name == "standin-node-0"
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    log = core.read_namespaced_pod_log(pod.metadata.name, NS, _preload_content=False).data.decode()
    assert log == "hi hello key-id False us-west-2\n"


def test_create_conflict_get_list_and_missing_job(apis):
    batch, _ = apis
    batch.create_namespaced_job(NS, make_job("a", "pass", labels={"sweep": "s1", "n": "0"}))
    batch.create_namespaced_job(NS, make_job("b", "pass", labels={"sweep": "s1", "n": "1"}))
    batch.create_namespaced_job(NS, make_job("c", "pass", labels={"sweep": "s2", "n": "0"}))
    with pytest.raises(ApiException) as conflict:
        batch.create_namespaced_job(NS, make_job("a", "pass"))
    assert conflict.value.status == 409 and '"reason": "AlreadyExists"' in conflict.value.body
    listed = batch.list_namespaced_job(NS, label_selector="sweep=s1")
    assert sorted(j.metadata.name for j in listed.items) == ["a", "b"]
    assert int(listed.metadata.resource_version) >= 3
    assert [j.metadata.name for j in batch.list_namespaced_job(NS, label_selector="sweep=s1,n!=0").items] == ["b"]
    assert batch.read_namespaced_job("c", NS).metadata.labels["sweep"] == "s2"
    with pytest.raises(ApiException) as missing:
        batch.read_namespaced_job("nope", NS)
    assert missing.value.status == 404 and '"kind": "Status"' in missing.value.body
    with pytest.raises(ApiException) as invalid:
        batch.create_namespaced_job(NS, make_job("Not_A_Label", "pass"))
    assert invalid.value.status == 422


@pytest.mark.slow
def test_watch_sends_added_and_modified_and_ends_at_its_timeout(apis):
    batch, _ = apis
    start = batch.list_namespaced_job(NS).metadata.resource_version
    batch.create_namespaced_job(NS, make_job("w", "pass"))
    wait_for_condition(batch, "w")
    began = time.monotonic()
    events = list(watch.Watch().stream(batch.list_namespaced_job, NS, resource_version=start, timeout_seconds=1))
    assert 0.9 < time.monotonic() - began < 5
    assert events[0]["type"] == "ADDED" and events[-1]["type"] == "MODIFIED"
    versions = [int(e["object"].metadata.resource_version) for e in events]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_watch_streams_close_early_when_told(apis, standin):
    batch, _ = apis
    standin.faults.watch_close_after_s = 0.2
    began = time.monotonic()
    assert list(watch.Watch().stream(batch.list_namespaced_job, NS, timeout_seconds=30)) == []
    assert time.monotonic() - began < 3


@pytest.mark.slow
def test_watch_from_a_forgotten_resource_version_is_410_gone(apis, standin):
    batch, _ = apis
    batch.create_namespaced_job(NS, make_job("g", "pass"))
    old = batch.list_namespaced_job(NS).metadata.resource_version
    wait_for_condition(batch, "g")
    standin.compact()
    with pytest.raises(ApiException) as gone:
        list(watch.Watch().stream(batch.list_namespaced_job, NS, resource_version=old, timeout_seconds=5))
    assert gone.value.status == 410
    standin.faults.watch_gone = 1
    current = batch.list_namespaced_job(NS).metadata.resource_version
    with pytest.raises(ApiException) as injected:
        list(watch.Watch().stream(batch.list_namespaced_job, NS, resource_version=current, timeout_seconds=5))
    assert injected.value.status == 410
    assert list(watch.Watch().stream(batch.list_namespaced_job, NS, resource_version=current, timeout_seconds=1)) == []


def test_injected_500_on_create_then_success(apis, standin):
    batch, _ = apis
    standin.faults.fail_creates = 2
    for _ in range(2):
        with pytest.raises(ApiException) as error:
            batch.create_namespaced_job(NS, make_job("flaky", "pass"))
        assert error.value.status == 500 and '"reason": "InternalError"' in error.value.body
    assert batch.create_namespaced_job(NS, make_job("flaky", "pass")).metadata.name == "flaky"
    assert standin.request_counts["create"] == 3


def fail_job_on(code: int) -> client.V1PodFailurePolicy:
    return client.V1PodFailurePolicy(rules=[
        client.V1PodFailurePolicyRule(action="Ignore", on_pod_conditions=[
            client.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")]),
        client.V1PodFailurePolicyRule(action="FailJob", on_exit_codes=client.V1PodFailurePolicyOnExitCodesRequirement(
            operator="In", values=[code]))])


def test_exit_code_matching_fail_job_rule_fails_at_once(apis):
    batch, core = apis
    batch.create_namespaced_job(NS, make_job("cfg", "import sys; print('bad config'); sys.exit(2)",
                                             backoff_limit=3, pod_failure_policy=fail_job_on(2)))
    condition = wait_for_condition(batch, "cfg")
    assert (condition.type, condition.reason) == ("Failed", "PodFailurePolicy")
    assert "exit code 2" in condition.message
    job = batch.read_namespaced_job("cfg", NS)
    assert [c.type for c in job.status.conditions] == ["FailureTarget", "Failed"] and not job.status.completion_time
    [pod] = pods_of(core, "cfg")
    assert pod.status.phase == "Failed"
    assert core.read_namespaced_pod_log(pod.metadata.name, NS, _preload_content=False).data.decode() == "bad config\n"


def test_other_failures_retry_up_to_the_backoff_limit(apis):
    batch, core = apis
    batch.create_namespaced_job(NS, make_job("flap", "import sys; print('line 1'); print('line 2'); sys.exit(1)",
                                             backoff_limit=2, pod_failure_policy=fail_job_on(2)))
    condition = wait_for_condition(batch, "flap")
    assert (condition.type, condition.reason) == ("Failed", "BackoffLimitExceeded")
    assert batch.read_namespaced_job("flap", NS).status.failed == 3
    pods = pods_of(core, "flap")
    assert len(pods) == 3 and {p.status.phase for p in pods} == {"Failed"}
    tail = core.read_namespaced_pod_log(pods[0].metadata.name, NS, tail_lines=1, _preload_content=False)
    assert tail.data.decode() == "line 2\n"


EVICTABLE = "import os, time; first = not os.path.exists('started'); open('started', 'w').close(); time.sleep(60 * first)"
"""Sleeps a minute on its first run (in the pod's working directory), ends at once on later ones."""


def test_evicted_pod_is_retried_under_an_ignore_rule(apis, standin, tmp_path):
    batch, core = apis
    batch.create_namespaced_job(NS, make_job("ev", EVICTABLE, backoff_limit=0, pod_failure_policy=fail_job_on(2)))
    wait_until(lambda: (tmp_path / "started").exists(), LIMIT_S, what="the first pod to start")
    first = pods_of(core, "ev")
    standin.evict(first[0].metadata.name)
    condition = wait_for_condition(batch, "ev")
    assert condition.type == "Complete"
    pods = {p.metadata.name: p for p in pods_of(core, "ev")}
    evicted = pods[first[0].metadata.name]
    assert evicted.status.phase == "Failed"
    assert [c.type for c in evicted.status.conditions] == ["DisruptionTarget"]
    assert len(pods) == 2 and batch.read_namespaced_job("ev", NS).status.failed == 0


@pytest.mark.slow
def test_active_deadline_fails_the_job_and_kills_its_pod(apis, standin):
    batch, core = apis
    batch.create_namespaced_job(NS, make_job("slow", "import time; time.sleep(60)", active_deadline_seconds=1))
    condition = wait_for_condition(batch, "slow")
    assert (condition.type, condition.reason) == ("Failed", "DeadlineExceeded")
    wait_until(lambda: standin.running_processes() == 0, LIMIT_S, what="the pod process to end")
    assert pods_of(core, "slow")[0].status.phase == "Failed"


def test_pending_job_never_starts_a_pod(apis, standin):
    batch, core = apis
    standin.faults.hold_pending = lambda job: job["metadata"]["name"] == "stuck"
    batch.create_namespaced_job(NS, make_job("stuck", "print('never')"))
    [pod] = wait_until(lambda: pods_of(core, "stuck"), LIMIT_S, what="the pending pod")
    time.sleep(0.3)
    pod = core.read_namespaced_pod(pod.metadata.name, NS)
    assert pod.status.phase == "Pending" and pod.status.conditions[0].reason == "Unschedulable"
    assert batch.read_namespaced_job("stuck", NS).status.active == 1


@pytest.mark.slow
def test_delete_with_propagation_kills_the_process_and_removes_pods(apis, standin):
    batch, core = apis
    batch.create_namespaced_job(NS, make_job("long", "import time; print('up', flush=True); time.sleep(60)"))
    wait_until(lambda: standin.running_processes() == 1, LIMIT_S, what="the pod process")
    listed = batch.list_namespaced_job(NS)
    batch.delete_namespaced_job("long", NS, propagation_policy="Background")
    wait_until(lambda: standin.running_processes() == 0, LIMIT_S, what="the pod process to be killed")
    assert pods_of(core, "long") == [] and batch.list_namespaced_job(NS).items == []
    events = list(watch.Watch().stream(batch.list_namespaced_job, NS, resource_version=listed.metadata.resource_version,
                                       timeout_seconds=1))
    assert events[-1]["type"] == "DELETED" and events[-1]["object"].metadata.name == "long"
    with pytest.raises(ApiException) as missing:
        batch.delete_namespaced_job("long", NS)
    assert missing.value.status == 404


def test_delete_collection_by_label_selector(apis, standin):
    batch, _ = apis
    for name, sweep in [("d1", "x"), ("d2", "x"), ("d3", "y")]:
        batch.create_namespaced_job(NS, make_job(name, "import time; time.sleep(60)", labels={"sweep": sweep}))
    batch.delete_collection_namespaced_job(NS, label_selector="sweep=x", propagation_policy="Foreground")
    assert [j.metadata.name for j in batch.list_namespaced_job(NS).items] == ["d3"]
    batch.delete_namespaced_job("d3", NS, propagation_policy="Background")
    wait_until(lambda: standin.running_processes() == 0, LIMIT_S, what="every pod process to be killed")


def test_indexed_job_runs_one_pod_per_index(apis):
    batch, core = apis
    batch.create_namespaced_job(NS, make_job("multi", "import os; print(os.environ['JOB_COMPLETION_INDEX'], os.environ['RANK'])",
                                             completions=2, parallelism=2, completion_mode="Indexed"))
    assert wait_for_condition(batch, "multi").type == "Complete"
    job = batch.read_namespaced_job("multi", NS)
    assert job.status.succeeded == 2 and job.status.completed_indexes == "0-1"
    logs = sorted(core.read_namespaced_pod_log(p.metadata.name, NS, _preload_content=False).data.decode()
                  for p in pods_of(core, "multi"))
    assert logs == ["0 0\n", "1 1\n"]


def test_headless_service_create_and_delete(apis, standin):
    _, core = apis
    service = client.V1Service(metadata=client.V1ObjectMeta(name="multi"), spec=client.V1ServiceSpec(
        cluster_ip="None", selector={"job-name": "multi"}, ports=[client.V1ServicePort(port=29500)]))
    assert core.create_namespaced_service(NS, service).spec.cluster_ip == "None"
    assert "multi" in standin.services
    core.delete_namespaced_service("multi", NS)
    assert standin.services == {}


def test_instant_pods_complete_with_a_canned_result(tmp_path):
    with KubeStandIn(workdir=tmp_path, instant_pods=True,
                     result=lambda job: {"objective": "val_iou", "value": len(job["metadata"]["name"])}) as server:
        configuration = client.Configuration(host=server.url)
        api_client = client.ApiClient(configuration)
        batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
        batch.create_namespaced_job(NS, make_job("quick", "raise SystemExit(1)"))
        assert wait_for_condition(batch, "quick").type == "Complete"
        [pod] = pods_of(core, "quick")
        log = core.read_namespaced_pod_log(pod.metadata.name, NS, _preload_content=False).data.decode()
        assert log == 'geoscale-result: {"objective": "val_iou", "value": 5}\n'
        api_client.close()
