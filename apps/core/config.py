"""Config helpers of the training core: instantiating config nodes and composing app configs."""

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
