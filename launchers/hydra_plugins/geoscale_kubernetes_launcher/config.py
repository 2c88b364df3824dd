"""Settings of the Kubernetes launcher, registered as ``hydra/launcher=kubernetes``."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class KubernetesLauncherConf:
    _target_: str = "hydra_plugins.geoscale_kubernetes_launcher.launcher.KubernetesLauncher"
    dry_run: bool = False


ConfigStore.instance().store(group="hydra/launcher", name="kubernetes", node=KubernetesLauncherConf, provider="geoscale")
