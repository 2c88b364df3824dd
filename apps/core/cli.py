"""Running a geoscale Hydra app with one-line errors and a dedicated exit code for bad input."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import conf

CONF_DIR = str(Path(conf.__file__).resolve().parent)
INTERRUPTED_EXIT_CODE = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""


def exit_with_error(message: Any) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with CONFIG_ERROR_EXIT_CODE."""
    from apps.core.errors import CONFIG_ERROR_EXIT_CODE, one_line

    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(CONFIG_ERROR_EXIT_CODE)


def run_hydra_app(task_function: Callable[[Any], Any], config_name: str) -> None:
    """Run ``task_function`` as the Hydra app of primary config ``conf/<config_name>.yaml``.

    Bad input (an ``InputError`` raised by the task, even wrapped by a library) and bad configuration
    (a misspelled override or group choice, a missing value) print one line ``error: ...`` on stderr
    and exit with CONFIG_ERROR_EXIT_CODE; a sweep point that failed on a cluster is one line and exit
    code 1; Ctrl-C prints ``interrupted`` and exits with 130; any other exception is a bug and keeps
    its traceback.
    """
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from apps.core.config import input_error_cause, register_resolvers
    from apps.core.errors import RemoteRunFailed, one_line

    @functools.wraps(task_function)
    def guarded_task(cfg: Any) -> Any:
        # Inside the job, so that Hydra does not first report the failure in its own words.
        try:
            return task_function(cfg)
        except Exception as exc:
            cause = input_error_cause(exc)
            if cause is None:
                raise
            exit_with_error(cause)

    register_resolvers()
    # Let composition errors reach us instead of Hydra's multi-line report.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(guarded_task)
    try:
        main()
    except (HydraException, OmegaConfBaseException) as exc:
        exit_with_error(input_error_cause(exc) or exc)
    except RemoteRunFailed as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)
