"""The task of Hydra's LauncherTestSuite as a pod runs it: ``python -m a_module --config-name=<the suite's>``,
named as the suite's calling module (``hydra.test_utils.a_module``) so that its job log is ``a_module.log``.
It composes Hydra's test configs and returns its composed config, printed as the run's result line."""

import hydra
from omegaconf import DictConfig, OmegaConf

from apps.foundation.rundir import ResultLine


@hydra.main(version_base=None, config_path="pkg://hydra.test_utils.configs")
def task(cfg: DictConfig) -> None:
    print(ResultLine(objective=None, value=OmegaConf.to_container(cfg), record=None).format())


if __name__ == "__main__":
    task()
