"""Running a geoscale Hydra app with one-line errors and a dedicated exit code for bad input.

Hydra and OmegaConf are imported when an app runs, not when this module is imported.
"""

from __future__ import annotations

import functools
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

from apps.foundation.errors import (
    INTERRUPTED_EXIT_CODE, RemoteRunFailed, exit_with_error, input_error_cause, one_line, read_only_mount_cause,
)


def _find_conf_dir() -> Path:
    """The config tree beside the ``apps`` package that runs: ``apps/conf``, where the wheel installs it,
    else ``conf/`` next to ``apps/`` in a source checkout (where an editable install runs from too)."""
    apps_dir = Path(__file__).resolve().parents[1]
    installed = apps_dir / "conf"
    return installed if installed.is_dir() else apps_dir.parent / "conf"


CONF_DIR = str(_find_conf_dir())
"""The config tree's root folder: the checkout's ``conf/``, or the installed copy ``apps/conf``."""


def register_resolvers() -> None:
    """Register ``${uid:}``: a short random id, fixed for the process (cached like Hydra's ``now``).

    Run and sweep directory names end with it, so two runs started in the same second never
    share a directory; Hydra copies the resolver cache into every job of a sweep, so all jobs
    agree on their sweep directory.
    """
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("uid"):
        OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:8], use_cache=True)


def record_stage(task_function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``task_function`` of a data-prep stage, made to record what it did: once it succeeds, its run
    directory gets a metrics.json of kind ``prep`` (the stage, ``app:stage``; the bytes the process read
    and wrote meanwhile, Linux's rchar and wchar; wall time), and the result line (on stderr) carries it, so a
    launcher that sees only the pod log gets it too and a re-run of a fan-out skips the finished Jobs."""
    import time

    @functools.wraps(task_function)
    def recorded(cfg: Any) -> Any:
        import psutil
        from hydra.core.hydra_config import HydraConfig

        from apps.foundation.rundir import PREP, ResultLine, RunRecord, write_metrics

        process, began = psutil.Process(), time.perf_counter()
        before = process.io_counters()
        value = task_function(cfg)
        after = process.io_counters()
        hydra_cfg = HydraConfig.get()
        record = RunRecord(kind=PREP, stage=f"{hydra_cfg.job.name}:{cfg.get('stage', 'all') or 'all'}",
                           objective={"name": None, "mode": None, "value": None},
                           facts={"bytes_read": after.read_chars - before.read_chars,
                                  "bytes_written": after.write_chars - before.write_chars,
                                  "wall_time_s": round(time.perf_counter() - began, 3)})
        if hydra_cfg.output_subdir is not None:
            write_metrics(hydra_cfg.runtime.output_dir, record)
        print(ResultLine(None, None, record).format(), file=sys.stderr, flush=True)
        return value

    return recorded


def run_hydra_app(task_function: Callable[[Any], Any], config_name: str) -> None:
    """Run ``task_function`` as the Hydra app of primary config ``conf/<config_name>.yaml``.

    Bad input (an ``InputError`` raised by the task, even wrapped by a library) and bad configuration
    (a misspelled override or group choice, a missing value), and a write to a read-only mount, print
    one line ``error: ...`` on stderr
    and exit with CONFIG_ERROR_EXIT_CODE; a sweep point that failed on a cluster is one line and exit
    code 1; Ctrl-C prints ``interrupted`` and exits with 130; any other exception is a bug and keeps
    its traceback.
    """
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    @functools.wraps(task_function)
    def guarded_task(cfg: Any) -> Any:
        # Inside the job, so that Hydra does not first report the failure in its own words.
        try:
            return task_function(cfg)
        except RemoteRunFailed as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            sys.exit(1)
        except Exception as exc:
            cause = input_error_cause(exc) or read_only_mount_cause(exc)
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
    except OSError as exc:  # Hydra writing the run directory's .hydra/ onto a read-only mount
        if (cause := read_only_mount_cause(exc)) is None:
            raise
        exit_with_error(cause)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)
