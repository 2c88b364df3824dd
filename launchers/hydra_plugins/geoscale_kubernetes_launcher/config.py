"""Settings of the Kubernetes launcher, registered as ``hydra/launcher=kubernetes``.

A cluster profile (``conf/cluster/<name>.yaml``, selected with ``cluster=<name>``) sets these
under ``hydra.launcher``; any of them can be overridden (``hydra.launcher.gpus=4``).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class KubernetesLauncherConf:
    _target_: str = "hydra_plugins.geoscale_kubernetes_launcher.launcher.KubernetesLauncher"

    # Where and as whom the Jobs run.
    namespace: str = "default"
    image: str = "geoscale:latest"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: List[str] = field(default_factory=list)
    service_account: Optional[str] = None
    run_as_user: int = 1000
    priority_class: Optional[str] = None
    kueue_queue: Optional[str] = None  # sets the label kueue.x-k8s.io/queue-name

    # What the pod runs: <python> -m <app_module> <overrides> hydra.run.dir=<output_root_in_pod>/<sweep>/<num>
    app_module: Optional[str] = None  # null: the module that was run with python -m
    python: str = "python"
    workdir: str = "/app"  # the repository inside the image
    output_root_in_pod: Optional[str] = None  # parent of the sweep dir on the shared volume; null: the local parent

    # Resources per pod (quantities as Kubernetes writes them: "4", "500m", "24Gi").
    gpus: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    cpu_request: str = "4"
    cpu_limit: Optional[str] = "4"
    memory_request: str = "24Gi"
    memory_limit: Optional[str] = "24Gi"
    shm_size: Optional[str] = "8Gi"  # memory-backed emptyDir at /dev/shm; null: none
    # GPU model by node affinity: nodes whose <gpu_node_label> is one of gpu_models (empty: any node).
    gpu_node_label: str = "nvidia.com/gpu.product"
    gpu_models: List[str] = field(default_factory=list)
    # Kubernetes tolerations as written in a pod spec: {key, operator, value, effect}.
    tolerations: List[Any] = field(default_factory=list)

    # Storage and environment; secrets only by reference.
    # {claim, mount_path, read_only: false, prep_writes: false}; prep_writes: writable in Jobs that do not train
    volumes: List[Any] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    env_from_secrets: List[str] = field(default_factory=list)  # every key of these secrets as env
    secret_env: Dict[str, Any] = field(default_factory=dict)  # ENV_NAME: {secret, key}

    # Job behaviour.
    backoff_limit: int = 2
    active_deadline_seconds: Optional[int] = None
    ttl_seconds_after_finished: Optional[int] = 86400
    num_nodes: int = 1  # > 1: an Indexed Job with a headless Service for torch.distributed
    master_port: int = 29500

    # The launcher itself.
    dry_run: bool = False  # render manifests into <sweep_dir>/manifests/, touch no cluster
    max_in_flight: int = 16
    sweep_timeout_s: Optional[float] = None
    watch_timeout_s: int = 60  # a watch is re-opened after this long; the sweep's pods are checked then
    # A pod waiting this long on what does not cure itself (ErrImagePull, ImagePullBackOff, InvalidImageName,
    # CreateContainerConfigError, CreateContainerError) fails its point, and its Job is deleted.
    stuck_pod_grace_s: float = 300
    api_retries: int = 4  # transient API errors (429, 5xx, connection resets) retried this often
    api_backoff_s: float = 0.2  # first retry delay, doubled each time
    log_tail_lines: int = 200  # saved as <run dir>/pod.log
    kube_config: Optional[str] = None  # null: $KUBECONFIG or ~/.kube/config, else in-cluster
    kube_context: Optional[str] = None
    api_server: Optional[str] = None  # explicit URL without auth (a local API server); overrides kube_config
    verify_ssl: bool = True


ConfigStore.instance().store(group="hydra/launcher", name="kubernetes", node=KubernetesLauncherConf, provider="geoscale")
