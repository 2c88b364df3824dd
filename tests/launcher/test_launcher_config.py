"""The Kubernetes launcher through Hydra: config composition, cluster profiles, dry runs of both apps,
skipping finished points, an unreachable API server, and the SLURM launcher with the same apps."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from hydra import compose, initialize_config_dir

from apps.foundation.cli import register_resolvers
from helpers.core import CONF_DIR, LIMIT_S, run_module

KUBERNETES_LAUNCHER = "hydra_plugins.geoscale_kubernetes_launcher.launcher.KubernetesLauncher"


def compose_with_hydra(config_name: str, overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def manifests_in(sweep_dir: Path) -> dict[str, list[dict]]:
    return {path.stem: list(yaml.safe_load_all(path.read_text()))
            for path in sorted((sweep_dir / "manifests").glob("*.yaml"))}


def commands(manifests: dict[str, list[dict]]) -> list[list[str]]:
    return [docs[-1]["spec"]["template"]["spec"]["containers"][0]["command"] for docs in manifests.values()]


@pytest.mark.parametrize("app", ["burned_area", "prep_burned_area"])
def test_nautilus_profile_selects_the_kubernetes_launcher(app):
    cfg = compose_with_hydra(app, ["cluster=nautilus"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == KUBERNETES_LAUNCHER
    assert (launcher.gpus, launcher.cpu_request, launcher.memory_request) == (2, "4", "24Gi")
    assert launcher.gpu_node_label == "nvidia.com/gpu.product" and launcher.gpu_models
    assert all(ref.secret and ref.key for ref in launcher.secret_env.values())
    assert "cluster" not in cfg or cfg.cluster is None


@pytest.mark.parametrize("app", ["burned_area", "prep_burned_area"])
def test_apps_compose_without_a_cluster(app):
    cfg = compose_with_hydra(app, [])
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")
    cfg = compose_with_hydra(app, ["hydra/launcher=kubernetes", "hydra.launcher.gpus=4"])
    assert cfg.hydra.launcher._target_ == KUBERNETES_LAUNCHER and cfg.hydra.launcher.gpus == 4


@pytest.mark.parametrize("app", ["burned_area", "prep_burned_area"])
def test_slurm_launcher_composes_with_each_app(app):
    cfg = compose_with_hydra(app, ["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=2",
                                   "hydra.launcher.timeout_min=600"])
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.launcher.gpus_per_node == 2


def test_dry_run_of_a_training_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = run_module("apps.burned_area", "-m", "hydra/launcher=kubernetes", "cluster=nautilus",
                      "hydra.launcher.dry_run=true", "lr=1e-3,1e-4,1e-5", f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    manifests = manifests_in(sweep_dir)
    assert len(manifests) == 3
    for name, docs in manifests.items():
        (job,) = docs
        assert job["metadata"]["name"] == name
        kubernetes_validate.validate(job, "1.30", strict=True)
    lrs = sorted(float(arg.split("=")[1]) for command in commands(manifests) for arg in command if arg.startswith("lr="))
    assert lrs == [1e-5, 1e-4, 1e-3]
    for num, command in enumerate(sorted(commands(manifests), key=lambda c: c[-1])):
        assert command[:3] == ["python", "-m", "apps.burned_area"]
        assert command[-1] == f"hydra.run.dir=/outputs/sweeps/sweep/{num}"
    assert not list(sweep_dir.glob("[0-9]*"))  # nothing ran
    assert not (sweep_dir / "summary.md").exists() and "summary not written" not in done.stdout + done.stderr


@pytest.mark.slow
def test_dry_run_of_a_data_prep_fan_out(tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = run_module("data_prep.burned_area", "-m", "hydra/launcher=kubernetes", "hydra.launcher.dry_run=true",
                      "hydra.launcher.gpus=2", "hydra.launcher.gpu_models=[NVIDIA-A10]",
                      f"out_dir={tmp_path / 'chips'}", "scene=a,b", "stage=chip",
                      f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    manifests = manifests_in(sweep_dir)
    assert len(manifests) == 2
    for command in commands(manifests):
        assert command[:3] == ["python", "-m", "data_prep.burned_area"]
        assert "stage=chip" in command and ("scene=a" in command or "scene=b" in command)
        assert command[-1].startswith(f"hydra.run.dir={tmp_path}/sweep/")
    for docs in manifests.values():  # data prep trains nothing: no GPU asked for, no GPU node required
        pod = docs[0]["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["requests"] and "affinity" not in pod
        assert not any(arg.startswith("trainer.") for arg in pod["containers"][0]["command"])


def test_dry_run_skips_points_already_completed(tmp_path):
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "1").mkdir(parents=True)
    record = {"status": "completed", "objective": {"name": "test/iou", "value": 0.5}}
    (sweep_dir / "1" / "metrics.json").write_text(json.dumps(record))
    done = run_module("apps.burned_area", "-m", "cluster=nautilus", "hydra.launcher.dry_run=true",
                      "lr=1e-3,1e-4,1e-5", f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    assert sorted(name.rsplit("-", 1)[1] for name in manifests_in(sweep_dir)) == ["0", "2"]


@pytest.mark.slow
def test_unreachable_api_server_is_one_clear_error(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    done = run_module("apps.burned_area", "-m", "hydra/launcher=kubernetes", f"hydra.launcher.api_server={url}",
                      "hydra.launcher.api_retries=1", "hydra.launcher.api_backoff_s=0.01", "lr=1e-3,1e-4",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=LIMIT_S)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "Traceback" not in done.stderr


@pytest.mark.slow
def test_optuna_sweeper_gets_each_pod_result(tmp_path):
    from geoscale_standins.kubernetes import KubeStandIn

    values = iter([0.2, 0.9, 0.4, 0.6])
    with KubeStandIn(workdir=tmp_path, instant_pods=True,
                     result=lambda job: {"objective": "test/iou", "value": next(values)}) as server:
        done = run_module("apps.burned_area", "-m", "hydra/launcher=kubernetes", "hydra/sweeper=optuna",
                          "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra.sweeper.direction=maximize",
                          "lr=interval(1e-5,1e-3)", f"hydra.launcher.api_server={server.url}",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=LIMIT_S)
    assert done.returncode == 0, done.stderr
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_value"] == 0.9
    assert sorted(p.name for p in (tmp_path / "sweep").glob("*/pod.log")) == ["pod.log"] * 4


@pytest.mark.slow
def test_sweep_on_a_volume_not_mounted_here_still_reads_like_a_local_one(tmp_path):
    """The pods write their run dirs elsewhere (output_root_in_pod); the local sweep directory gets each
    point's .hydra/ files and, from its pod's result line, its metrics record."""
    from geoscale_standins.kubernetes import KubeStandIn

    def pod_result(job: dict) -> dict:
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        value = {1e-3: 0.8, 1e-4: 0.6}[float(next(arg for arg in command if arg.startswith("lr="))[3:])]
        record = {"status": "completed", "objective": {"name": "test/iou", "mode": "max", "value": value},
                  "metrics": {"test/iou": value, "test/f1": value + 0.1}, "facts": {"epochs": 3}}
        return {"objective": "test/iou", "value": value, "record": record}

    sweep = tmp_path / "sweep"
    with KubeStandIn(workdir=tmp_path, instant_pods=True, result=pod_result) as server:
        done = run_module("apps.burned_area", "-m", "hydra/launcher=kubernetes", "lr=1e-3,1e-4",
                          "hydra.launcher.output_root_in_pod=/outputs/sweeps", f"hydra.launcher.api_server={server.url}",
                          f"hydra.sweep.dir={sweep}", timeout=LIMIT_S)
    assert done.returncode == 0, done.stderr
    # The pod's whole override list, its own included (runs named below its output root, the trainer fit to its GPU).
    assert yaml.safe_load((sweep / "1" / ".hydra" / "overrides.yaml").read_text()) == [
        "lr=0.0001", "output_root=/outputs/sweeps", "trainer.devices=1"]
    saved = yaml.safe_load((sweep / "0" / ".hydra" / "config.yaml").read_text())
    assert saved["lr"] == 1e-3 and saved["output_root"] == "/outputs/sweeps" and saved["trainer"]["devices"] == 1
    assert json.loads((sweep / "1" / "metrics.json").read_text())["metrics"]["test/f1"] == pytest.approx(0.7)
    summary = (sweep / "summary.md").read_text()
    assert summary.startswith("2 runs: 2 completed") and "0.8000" in summary and "0.6000" in summary


def test_progress_view_writes_a_line_only_when_a_job_changes():
    import io

    from hydra_plugins.geoscale_kubernetes_launcher._progress import ProgressView

    stream = io.StringIO()
    view = ProgressView(stream)
    view.update("job-0", "Pending")
    view.update("job-0", "Pending")
    view.update("job-0", "Running", "node-a")
    view.add_retry("job-0")
    view.update("job-0", "Complete")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[-1].split()[:3] == ["job-0", "Complete", "node-a"] and lines[-1].endswith("retries 1")


def test_pods_get_the_sweeps_hydra_overrides_but_those_of_the_sweep_itself():
    from omegaconf import OmegaConf

    from hydra_plugins.geoscale_kubernetes_launcher.launcher import job_hydra_overrides

    config = OmegaConf.create({"hydra": {"overrides": {"hydra": [
        "hydra/launcher=kubernetes", "hydra.launcher.api_server=http://x", "hydra.sweep.dir=s", "hydra.sweeper.n=2",
        "hydra.run.dir=r", "hydra.mode=MULTIRUN", "hydra.job.chdir=True", "+hydra.job.name=n", "hydra/job_logging=none"]}}})
    assert job_hydra_overrides(config) == ["hydra.job.chdir=True", "+hydra.job.name=n", "hydra/job_logging=none"]


def test_adapter_fits_training_points_to_their_pods_and_leaves_plain_tasks_alone():
    from omegaconf import OmegaConf

    from hydra_plugins.geoscale_kubernetes_launcher._geoscale import PointAdapter
    from hydra_plugins.geoscale_kubernetes_launcher.config import KubernetesLauncherConf

    settings = {**OmegaConf.to_container(OmegaConf.structured(KubernetesLauncherConf)), "gpus": 2}
    adapter = PointAdapter(settings)
    training = OmegaConf.create({"output_root": "outputs", "trainer": {"devices": 1}, "lr": 0.1})
    plain = OmegaConf.create({"foo": 10})
    assert adapter.trains(training) and not adapter.trains(plain)
    assert adapter.pod_overrides(training, ["lr=0.2"], "/pod") == ["output_root=/pod", "trainer.devices=2"]
    assert adapter.pod_overrides(training, ["output_root=/mine", "trainer.devices=1"], "/pod") == []
    assert adapter.pod_overrides(plain, ["foo=3"], "/pod") == []
    assert adapter.result_of("no result line\n").value is None
    log = 'geoscale-result: {"objective": "x", "value": 0.1}\nnoise\ngeoscale-result: {"value": 100}\nbye\n'
    assert adapter.result_of(log).value == 100  # the last result line


def test_sweep_points_are_composed_once_and_returned_whole():
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from hydra_plugins.geoscale_kubernetes_launcher.launcher import SweepConfigMemo, task_part

    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("burned_area", ["hydra/launcher=kubernetes"], RunMode.MULTIRUN)
        memo = SweepConfigMemo(loader)
        checked = memo.load_sweep_config(master, ["lr=0.5", "model=unetplusplus"])  # the sweeper's batch check
        assert memo.take_sweep_config(master, ["lr=0.5", "model=unetplusplus"]) is checked
        composed_again = memo.take_sweep_config(master, ["lr=0.5", "model=unetplusplus"])
        assert composed_again is not checked and composed_again.lr == 0.5 and not memo.composed
        assert memo.get_group_options("model") == loader.get_group_options("model")

        task = task_part(checked)
        expected = OmegaConf.masked_copy(composed_again, [key for key in composed_again if key != "hydra"])
        assert "hydra" not in task and OmegaConf.is_struct(task)
        assert OmegaConf.to_container(task, resolve=True) == OmegaConf.to_container(expected, resolve=True)
        assert task.model.arch == checked.model.arch == "unetplusplus"
        assert checked.hydra.job.name == "burned_area"


def test_throttled_api_calls_wait_as_long_as_retry_after_asks(monkeypatch):
    import io

    from kubernetes.client.rest import ApiException
    from omegaconf import OmegaConf

    from hydra_plugins.geoscale_kubernetes_launcher import _cluster
    from hydra_plugins.geoscale_kubernetes_launcher._progress import ProgressView
    from hydra_plugins.geoscale_kubernetes_launcher.config import KubernetesLauncherConf

    settings = {**OmegaConf.to_container(OmegaConf.structured(KubernetesLauncherConf)),
                "api_server": "http://127.0.0.1:9", "api_backoff_s": 0.1}
    run = _cluster.SweepRun(settings, "sweep", [], ProgressView(io.StringIO()))
    throttled = ApiException(status=429, reason="Too Many Requests")
    throttled.headers = {"Retry-After": "3"}
    answers = iter([throttled, ApiException(status=503, reason="Service Unavailable"), "created"])

    def flaky_create():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    slept = []
    monkeypatch.setattr(_cluster.time, "sleep", slept.append)
    assert run._call(flaky_create) == "created"
    assert slept == [3.0, 0.2]  # Retry-After, then the doubled backoff
    run.api.close()


def test_a_jobs_state_changes_only_as_the_table_allows(tmp_path):
    import io

    from omegaconf import OmegaConf

    from hydra_plugins.geoscale_kubernetes_launcher import _cluster
    from hydra_plugins.geoscale_kubernetes_launcher._progress import ProgressView
    from hydra_plugins.geoscale_kubernetes_launcher._states import FINAL, TRANSITIONS, JobState
    from hydra_plugins.geoscale_kubernetes_launcher.config import KubernetesLauncherConf
    from hydra_plugins.geoscale_kubernetes_launcher.launcher import SweepPoint

    assert not FINAL & set(TRANSITIONS) and set(TRANSITIONS) | FINAL == set(JobState)   # final states go nowhere
    assert all(TRANSITIONS[state] & FINAL for state in TRANSITIONS)                      # every other can end
    settings = {**OmegaConf.to_container(OmegaConf.structured(KubernetesLauncherConf)), "api_server": "http://127.0.0.1:9"}
    point = SweepPoint(0, [], OmegaConf.create(), tmp_path, "job-0", [], [])
    run = _cluster.SweepRun(settings, "sweep", [point], ProgressView(io.StringIO()))
    try:
        with pytest.raises(RuntimeError, match="Job job-0: no transition from Queued to Running"):
            run._advance(point, JobState.RUNNING)
        run._advance(point, JobState.SUBMITTED)
        run._advance(point, JobState.RUNNING)
        assert run.active == {"job-0": point}
        run._advance(point, JobState.COMPLETE, _cluster.Outcome(completed=True, log="done"))
        assert run.active == {} and run.outcomes[0].log == "done"
        with pytest.raises(RuntimeError, match="no transition from Complete to Running"):
            run._advance(point, JobState.RUNNING)
    finally:
        run.api.close()
