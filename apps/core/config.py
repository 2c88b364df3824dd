"""Config helpers of the training core: instantiating config nodes, composing app configs, and the
names that moved (so that older checkpoints and run directories still load)."""

from __future__ import annotations

from typing import Any

from apps.foundation.errors import input_error_cause


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``, letting an InputError raised by the object's
    constructor through as itself rather than wrapped in Hydra's InstantiationException."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = input_error_cause(exc)
        if cause is not None:
            raise cause from None
        raise


def compose_app_config(config_name: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The composed config of an app (``conf/<config_name>.yaml`` with ``overrides``), as its task
    function receives it but without the ``hydra`` node: for scripts and tests that drive the core."""
    from hydra import compose, initialize_config_dir

    from apps.foundation.cli import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


MOVED_MODULES = {
    "apps.core.detection": "apps.detection.task",
    "apps.core.detection_data": "apps.detection.data",
    "apps.core.detection_callbacks": "apps.detection.callbacks",
    "apps.core.detection_predict": "apps.detection.scene_detection",
    "apps.core.mmdet_optim": "apps.detection.optim",
    "apps.core.mmcv_float32": "apps.detection.mmcv_float32",
    "apps.core.coco": "apps.detection.coco",
    "apps.core.train": "apps.core.training.train",
    "apps.core.callbacks": "apps.core.training.callbacks",
    "apps.core.precision": "apps.core.training.precision",
    "apps.core.runinfo": "apps.core.training.provenance",
    "apps.core.task": "apps.core.tasks.base",
    "apps.core.segmentation": "apps.core.tasks.segmentation",
    "apps.core.losses": "apps.core.tasks.losses",
    "apps.core.data": "apps.core.tasks.data",
    "apps.core.weights": "apps.core.tasks.weights",
    "apps.core.report": "apps.core.runs.report",
    "apps.core.study_tables": "apps.core.runs.study_tables",
    "apps.core.storage": "apps.core.runs.storage",
}
"""Modules that older geoscale versions had (old dotted name -> today's), so that the class names their
checkpoints and saved ``.hydra`` configs hold still load."""


def current_name(dotted: str) -> str:
    """Today's dotted name of a class or function that an older run recorded as ``dotted``."""
    module, _, name = dotted.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else dotted


ARCH_MODEL_BUILDER = "apps.burned_area.model.smp_network"
"""The builder of a top-level ``model`` that names its network by ``arch`` and has no ``_target_``: burned
area's model configs before they chose by ``_target_`` (``{arch: unet, encoder: resnet50, ...}``)."""


def upgrade_targets(node: Any) -> Any:
    """``node`` (a config or checkpoint hyperparameters, or plain dicts and lists) with every ``_target_``
    renamed by ``current_name``, and a top-level ``model`` chosen by ``arch`` alone given the partial
    ``_target_`` ``ARCH_MODEL_BUILDER``; interpolations are kept unresolved. A DictConfig or ListConfig
    comes back as one."""
    from omegaconf import OmegaConf

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: current_name(v) if k == "_target_" and isinstance(v, str) else walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    def upgrade(value: Any) -> Any:
        upgraded = walk(value)
        model = upgraded.get("model") if isinstance(upgraded, dict) else None
        if isinstance(model, dict) and "arch" in model and "_target_" not in model:
            upgraded["model"] = {"_target_": ARCH_MODEL_BUILDER, "_partial_": True, **model}
        return upgraded

    if OmegaConf.is_config(node):
        return OmegaConf.create(upgrade(OmegaConf.to_container(node, resolve=False)))
    return upgrade(node)
