"""The weights catalogue (conf/weights_catalogue.yaml): the pretrained checkpoints the study starts from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from apps.foundation.cli import CONF_DIR
from apps.foundation.errors import InputError

CATALOGUE_FILE = Path(os.environ.get("GEOSCALE_WEIGHTS_CATALOGUE") or Path(CONF_DIR) / "weights_catalogue.yaml")
"""Name -> url, file, sha256, trained_on, part of each checkpoint: conf/weights_catalogue.yaml, or the file
that ``$GEOSCALE_WEIGHTS_CATALOGUE`` names (a site's own mirror of the checkpoints)."""


@dataclass(frozen=True)
class Checkpoint:
    """One pretrained checkpoint of the weights catalogue (conf/weights_catalogue.yaml).

    ``sha256``: its digest, or the leading part of it that the official file name carries (the
    OpenMMLab and torchvision convention, which torch.hub checks the same way); ``trained_on``: coco
    or imagenet-1k; ``part``: the submodule its tensors fit ("" a whole detector, "backbone", "encoder").
    """

    name: str
    url: str
    file: str
    sha256: str
    trained_on: str
    part: str = ""

    def matches(self, digest: str) -> bool:
        """Whether a file of hex SHA-256 ``digest`` is this checkpoint."""
        return digest.lower().startswith(self.sha256.lower())


def read_catalogue(path: str | Path = CATALOGUE_FILE) -> dict[str, Checkpoint]:
    """The weights catalogue, name -> Checkpoint; InputError naming the file when it is unreadable."""
    import yaml

    try:
        entries = yaml.safe_load(Path(path).read_text())
        catalogue = {name: Checkpoint(name=name, **entry) for name, entry in entries.items()}
    except (OSError, yaml.YAMLError, AttributeError, TypeError) as exc:
        raise InputError(f"weights catalogue {path}: unreadable ({type(exc).__name__}: {exc})") from None
    for checkpoint in catalogue.values():
        digest = checkpoint.sha256
        if not isinstance(digest, str) or len(digest) < 8 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise InputError(f"weights catalogue {path}: {checkpoint.name}.sha256 must be a quoted string of at "
                             f"least 8 hex digits, not {digest!r}")
    return catalogue


def fetch_hint(name: str, weights_dir: str | Path) -> str:
    """The command that puts checkpoint ``name`` of the catalogue into ``weights_dir``."""
    return f"python -m apps.weights fetch names=[{name}] weights_dir={weights_dir}"


