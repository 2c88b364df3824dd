"""Hydra's own launcher test suites (LauncherTestSuite, IntegrationTestSuite) run with the Kubernetes launcher,
against the local API stand-in whose pods are local processes. The suites' apps are plain Hydra apps, not
geoscale's: their points do not train, get no overrides beyond their own, and what their pods return comes
back from the pod log's result line."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

from geoscale_standins.kubernetes import KubeStandIn
from helpers import LIMIT_S

POD_APP_DIR = Path(__file__).resolve().parent / "launcher_suite_pod"
"""Where LauncherTestSuite's pods run ``python -m a_module``."""


def launcher_flags(server: KubeStandIn) -> list[str]:
    return [f"hydra.launcher.api_server={server.url}", "hydra.launcher.verify_ssl=false",
            "hydra.launcher.api_backoff_s=0.05", f"hydra.launcher.sweep_timeout_s={LIMIT_S}"]


@pytest.fixture
def launcher_name() -> str:
    return "kubernetes"


@pytest.mark.slow
class TestKubernetesLauncher(LauncherTestSuite):
    """Sweeps composed in this process, each point a Job whose pod runs ``a_module``."""

    @pytest.fixture
    def overrides(self):
        with KubeStandIn(workdir=POD_APP_DIR) as server:
            yield [*launcher_flags(server), "hydra.launcher.app_module=a_module"]

    @pytest.mark.skip(reason="its task function is a closure of the test (returning c.x, which a resolver "
                             "registered only in the test process resolves); a pod runs an app module instead")
    def test_sweep_with_custom_resolver(self) -> None:
        """Not run: see the skip reason."""

    def test_what_the_pods_return_comes_back(self, hydra_sweep_runner, launcher_name, overrides, tmpdir) -> None:
        sweep = hydra_sweep_runner(calling_file=None, calling_module="hydra.test_utils.a_module", task_function=None,
                                   config_path="configs", config_name="compose",
                                   overrides=[f"hydra/launcher={launcher_name}", *overrides, "+a=0,1"],
                                   temp_dir=tmpdir)
        with sweep:
            [returns] = sweep.returns
            assert [job.return_value for job in returns] == [{"foo": 10, "bar": 100, "a": 0},
                                                             {"foo": 10, "bar": 100, "a": 1}]


@pytest.mark.slow
class TestKubernetesLauncherIntegration(IntegrationTestSuite):
    """The suite's task files run as ``python -m <task>`` (the launcher's pods run the module the sweep
    runs), in the scratch dir, where the stand-in's pods run too."""

    @pytest.fixture
    def task_launcher_cfg(self) -> dict:
        return {}

    @pytest.fixture
    def extra_flags(self, tmpdir):
        with KubeStandIn(workdir=self.get_test_scratch_dir(tmpdir)) as server:
            yield ["-m", "hydra/launcher=kubernetes", *launcher_flags(server)]

    def generate_custom_cmd(self) -> Callable[..., list[str]]:
        def as_module(cmd: list[str], filename: str) -> list[str]:
            return [cmd[0], "-m", Path(filename).stem]

        return as_module

