"""OmegaConf resolvers that geoscale configs use."""

from __future__ import annotations

import uuid

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """Register ``${uid:}``: a short random id, fixed for the process (cached like Hydra's ``now``).

    Run and sweep directory names end with it, so two runs started in the same second never
    share a directory; Hydra copies the resolver cache into every job of a sweep, so all jobs
    agree on their sweep directory.
    """
    if not OmegaConf.has_resolver("uid"):
        OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:8], use_cache=True)
