"""OmegaConf resolvers that geoscale configs use."""

from __future__ import annotations

import uuid

from typing import Any

from omegaconf import OmegaConf

from apps.core.errors import InputError


def register_resolvers() -> None:
    """Register ``${uid:}``: a short random id, fixed for the process (cached like Hydra's ``now``).

    Run and sweep directory names end with it, so two runs started in the same second never
    share a directory; Hydra copies the resolver cache into every job of a sweep, so all jobs
    agree on their sweep directory.
    """
    if not OmegaConf.has_resolver("uid"):
        OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:8], use_cache=True)


def input_error_cause(exc: BaseException) -> InputError | None:
    """The InputError behind ``exc`` (itself, or one that a library wrapped), if any."""
    while exc is not None:
        if isinstance(exc, InputError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


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

    from apps.core.cli import CONF_DIR

    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))
