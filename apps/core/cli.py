"""Running a geoscale Hydra app with one-line errors and a dedicated exit code for bad input."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import conf

CONF_DIR = str(Path(conf.__file__).resolve().parent)


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def run_hydra_app(task_function: Callable[[Any], Any], config_name: str) -> None:
    """Run ``task_function`` as the Hydra app of primary config ``conf/<config_name>.yaml``.

    Bad input (an ``InputError`` raised by the task) and bad configuration (a misspelled
    override or group choice, a missing value) print one line ``error: ...`` on stderr and exit
    with CONFIG_ERROR_EXIT_CODE; any other exception is a bug and keeps its traceback.
    """
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from apps.core.config import register_resolvers
    from apps.core.errors import CONFIG_ERROR_EXIT_CODE, InputError

    register_resolvers()
    # Let exceptions reach us instead of Hydra's multi-line report.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(task_function)
    try:
        main()
    except (InputError, HydraException, OmegaConfBaseException) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(CONFIG_ERROR_EXIT_CODE)
