"""Sweep reports: one row per run directory of a sweep, as a Markdown or CSV table or a figure.

A run directory holds ``.hydra/overrides.yaml`` and, once it has completed, ``metrics.json``
(``status``, ``objective`` {name, mode, value}, ``metrics`` {name: value}, ``facts``); a failed
run may hold ``error.txt``. A sweep directory holds run directories up to two levels down.
A run without a readable, completed metrics.json is reported as failed or incomplete.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from apps.foundation.errors import InputError
from apps.foundation.rundir import (
    COMPLETED, ERROR_FILE, HYDRA_DIR, OVERRIDES_FILE, SWEEP_SUMMARY_CSV, SWEEP_SUMMARY_MARKDOWN, RunRecord,
    read_completed,
)
from apps.foundation.files import atomic_path, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

INCOMPLETE, FAILED = "incomplete", "failed"
"""Statuses of a run without a completed record: with an ``error.txt`` it failed, else it has not finished."""

#: Columns taken from metrics.json "facts", in table order, with their pandas dtypes.
FACT_COLUMNS = {"parameters": "Int64", "wall_time_s": float, "gpu_hours": float, "peak_memory_bytes": "Int64",
                "peak_memory_kind": object}
#: How many directory levels below the sweep directory runs are looked for.
RUN_SEARCH_DEPTH = 2
#: Numeric hyperparameters spanning at least this ratio (max / min) are plotted on a log axis.
LOG_AXIS_MIN_RATIO = 100.0


@dataclass(frozen=True)
class SweepReport:
    """A sweep's table and how it was built.

    ``table`` has one row per run: ``run`` (path relative to the sweep directory), ``status``,
    one column per override key (``hyperparameters`` first, then ``fixed_overrides``), the
    ``metrics`` columns, then ``parameters``, ``wall_time_s`` (seconds), ``gpu_hours`` (wall time x
    GPUs, GPU runs only), ``peak_memory_bytes`` and ``peak_memory_kind``. Rows are sorted by ``sort_metric``; runs not completed come last.
    """

    sweep_dir: Path
    table: pd.DataFrame
    hyperparameters: list[str]
    fixed_overrides: dict[str, Any]
    metrics: list[str]
    sort_metric: str | None
    ascending: bool


@dataclass(frozen=True)
class _Run:
    path: str
    status: str
    overrides: dict[str, Any]
    result: RunRecord | None


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Directories holding ``.hydra/`` up to two levels below ``sweep_dir``, in natural order."""
    runs: list[Path] = []
    level = [sweep_dir]
    for _ in range(RUN_SEARCH_DEPTH):
        children = [
            child
            for parent in level
            for child in parent.iterdir()
            if child.is_dir() and not child.name.startswith(".")
        ]
        runs += [child for child in children if (child / HYDRA_DIR).is_dir()]
        level = [child for child in children if not (child / HYDRA_DIR).is_dir()]
    return sorted(runs, key=lambda run: _natural_key(run.relative_to(sweep_dir).as_posix()))


def load_sweep(
    sweep_dir: str | os.PathLike,
    metric: str | None = None,
    metrics: list[str] | None = None,
    ascending: bool | None = None,
) -> SweepReport:
    """Load every run of ``sweep_dir`` into a ``SweepReport``.

    ``metric`` sorts the rows (default: the objective's name). ``metrics`` are the metric
    columns (default: the objective and every ``test/*`` metric); ``metric`` is added when
    missing. ``ascending`` defaults to the objective's mode for the objective, and for another
    metric to ascending when it is named like a loss or an error, descending otherwise.
    Raises ``InputError`` for a missing directory, one without runs, an unreadable
    overrides.yaml, or a requested metric that no completed run has.
    """
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise InputError(f"sweep directory {sweep_dir} does not exist or is not a directory")
    runs = [_load_run(sweep_dir, run_dir) for run_dir in find_run_dirs(sweep_dir)]
    if not runs:
        raise InputError(f"sweep directory {sweep_dir} holds no run (a directory with .hydra/)")

    completed = [run.result for run in runs if run.status == COMPLETED]
    objective = completed[0].objective if completed else {}
    sort_metric = metric or objective.get("name")
    metric_columns = _metric_columns(completed, objective, metrics, sort_metric, sweep_dir)
    if ascending is None:
        ascending = _lower_is_better(sort_metric, objective)

    override_keys = list(dict.fromkeys(key for run in runs for key in run.overrides))
    hyperparameters = [key for key in override_keys if _varies(runs, key)]
    fixed_overrides = {
        key: runs[0].overrides[key] for key in override_keys if key not in hyperparameters
    }

    values = [{**_objective_metric(run.result), **run.result.metrics} if run.result else {} for run in runs]
    facts = [run.result.facts if run.result else {} for run in runs]
    table = pd.DataFrame(
        {"run": [run.path for run in runs], "status": [run.status for run in runs]}
        | {key: _typed([run.overrides.get(key) for run in runs]) for key in override_keys}
        | {name: pd.Series([row.get(name) for row in values], dtype=float)
           for name in metric_columns}
        | {name: pd.Series([row.get(name) for row in facts], dtype=dtype)
           for name, dtype in FACT_COLUMNS.items()}
    )
    by, order = ["not_completed"], [True]
    if sort_metric:
        by, order = by + [sort_metric], order + [ascending]
    table = (
        table.assign(not_completed=table["status"] != COMPLETED)
        .sort_values(by, ascending=order, na_position="last", kind="stable")
        .drop(columns="not_completed")
        .reset_index(drop=True)
    )
    return SweepReport(sweep_dir, table, hyperparameters, fixed_overrides, metric_columns,
                       sort_metric, ascending)


def to_csv(report: SweepReport) -> str:
    """The table as CSV with raw values (seconds, bytes, full float precision)."""
    return report.table.to_csv(index=False, lineterminator="\n")


def to_markdown(report: SweepReport) -> str:
    """A one-line caption, the fixed overrides, and a GitHub pipe table with aligned columns.

    Only swept hyperparameters get columns; floats show 4 significant digits, parameters
    thousands separators, peak memory binary units (KiB ... TiB) and what was measured.
    """
    import pandas as pd

    table = report.table
    statuses = table["status"].value_counts(sort=False).items()
    caption = f"{len(table)} runs: " + ", ".join(f"{count} {status}" for status, count in statuses)
    if report.sort_metric:
        caption += f"; sorted by {report.sort_metric}, {'ascending' if report.ascending else 'descending'}"
    paragraphs = [caption + "."]
    if report.fixed_overrides:
        fixed = ", ".join(f"`{key}={_format_value(value)}`" for key, value in report.fixed_overrides.items())
        paragraphs.append(f"Fixed overrides: {fixed}.")

    def cells(column: str, formatter) -> list[str]:
        return ["" if pd.isna(value) else formatter(value) for value in table[column]]

    kinds = sorted(set(table["peak_memory_kind"].dropna()))
    memory = cells("peak_memory_bytes", _format_bytes)
    if len(kinds) > 1:
        memory = [f"{size} ({kind})" if size else "" for size, kind in zip(memory, table["peak_memory_kind"])]
    memory_header = f"peak memory ({kinds[0]})" if len(kinds) == 1 else "peak memory"
    columns = [  # (header, cells, right-aligned)
        ("run", list(table["run"]), False),
        ("status", list(table["status"]), False),
        *((key, cells(key, _format_value), pd.api.types.is_numeric_dtype(table[key]))
          for key in report.hyperparameters),
        *((name, cells(name, format_float), True) for name in report.metrics),
        ("parameters", cells("parameters", "{:,}".format), True),
        ("wall time (s)", cells("wall_time_s", format_float), True),
        *([("GPU-hours", cells("gpu_hours", format_float), True)] if table["gpu_hours"].notna().any() else []),
        (memory_header, memory, True),
    ]
    return "\n\n".join(paragraphs + [pipe_table(columns)]) + "\n"


def plot_sweep(report: SweepReport, path: str | os.PathLike | None = None) -> Path:
    """Save a PNG of the sort metric against each swept hyperparameter; return its path.

    One subplot per hyperparameter, one point per completed run, and a line through the best
    value at each setting. Numeric settings spanning two decades or more get a log axis;
    other settings are categories. Default path: ``<sweep>/<metric>_by_hyperparameter.png``.
    Raises ``InputError`` when there is nothing to plot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from pandas.api.types import is_numeric_dtype

    metric = report.sort_metric
    if metric is None:
        raise InputError(f"nothing to plot for {report.sweep_dir}: no metric chosen and no objective")
    if not report.hyperparameters:
        raise InputError(f"nothing to plot for {report.sweep_dir}: no hyperparameter varies")
    done = report.table[(report.table["status"] == COMPLETED) & report.table[metric].notna()]
    if done.empty:
        raise InputError(f"nothing to plot for {report.sweep_dir}: no completed run has {metric}")

    columns = min(3, len(report.hyperparameters))
    rows = math.ceil(len(report.hyperparameters) / columns)
    figure = Figure(figsize=(4.0 * columns, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, key in zip(axes, report.hyperparameters):
        points = done[done[key].notna()]
        if is_numeric_dtype(points[key]):
            x = points[key].astype(float)
            if (x > 0).all() and x.max() / x.min() >= LOG_AXIS_MIN_RATIO:
                axis.set_xscale("log")
        else:
            categories = sorted(points[key].map(_format_value).unique(), key=_natural_key)
            x = points[key].map(_format_value).map(categories.index)
            axis.set_xticks(range(len(categories)), categories,
                            rotation=30 if len(categories) > 4 else 0)
            axis.set_xlim(-0.5, len(categories) - 0.5)
        best = points[metric].groupby(x).min() if report.ascending else points[metric].groupby(x).max()
        axis.scatter(x, points[metric], alpha=0.6, label="run")
        axis.plot(best.index, best.values, color="black", linewidth=1, marker="_", label="best per setting")
        axis.set_xlabel(key)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    for axis in axes[len(report.hyperparameters):]:
        axis.set_visible(False)
    axes[0].legend(fontsize="small")
    figure.suptitle(f"{metric}: {len(done)} completed runs\n{report.sweep_dir.name}", fontsize="medium")

    default_name = f"{metric.replace('/', '_')}_by_hyperparameter.png"
    path = Path(path) if path else report.sweep_dir / default_name
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    return path


class SweepSummary(Callback):
    """Hydra callback: write ``summary.md`` and ``summary.csv`` into the sweep directory.

    Runs at the end of every multirun; enable it with
    ``hydra.callbacks.sweep_summary._target_: apps.core.runs.report.SweepSummary``
    (optional ``metric`` and ``metrics`` as for ``load_sweep``). It never raises: a report
    that cannot be written is logged as a warning, so a finished sweep does not fail.
    """

    def __init__(self, metric: str | None = None, metrics: list[str] | None = None) -> None:
        self.metric = metric
        self.metrics = list(metrics) if metrics else None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.launcher.dry_run", default=False):
            return  # a dry run trains nothing: there is nothing to summarize
        try:
            sweep_dir = Path(config.hydra.sweep.dir)
            report = load_sweep(sweep_dir, metric=self.metric, metrics=self.metrics)
            atomic_write_text(sweep_dir / SWEEP_SUMMARY_MARKDOWN, to_markdown(report))
            atomic_write_text(sweep_dir / SWEEP_SUMMARY_CSV, to_csv(report))
        except Exception as error:  # noqa: BLE001 - a summary must never fail a finished sweep
            log.warning("sweep summary not written: %s: %s", type(error).__name__, error)
        else:
            log.info("sweep summary written to %s", sweep_dir / SWEEP_SUMMARY_MARKDOWN)


def _load_run(sweep_dir: Path, run_dir: Path) -> _Run:
    """Read one run directory's overrides, status and, once completed, its metrics record."""
    result = read_completed(run_dir)
    if result is not None:
        status = COMPLETED
    else:
        status = FAILED if (run_dir / ERROR_FILE).is_file() else INCOMPLETE
    return _Run(run_dir.relative_to(sweep_dir).as_posix(), status, _read_overrides(run_dir), result)


def _read_overrides(run_dir: Path) -> dict[str, Any]:
    """A run's command-line overrides as {key: value}, without ``hydra.*`` and deletions.

    Scalars keep their type (``lr=1e-3`` -> 0.001); lists and dicts stay strings.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides_file = run_dir / OVERRIDES_FILE
    if not overrides_file.is_file():
        return {}
    try:
        lines = yaml.safe_load(overrides_file.read_text()) or []
        parsed = OverridesParser.create().parse_overrides([str(line) for line in lines])
    except Exception as error:  # noqa: BLE001 - YAML and Hydra's grammar raise their own types
        raise InputError(f"{overrides_file}: not a list of Hydra overrides ({error})") from None
    overrides = {}
    for override in parsed:
        key = override.key_or_group + (f"@{override.package}" if override.package else "")
        if override.is_delete() or key == "hydra" or key.startswith("hydra."):
            continue
        value = override.value()
        is_scalar = value is None or isinstance(value, (str, int, float, bool))
        overrides[key] = value if is_scalar else override.get_value_element_as_str()
    return overrides


def _metric_columns(
    completed: list[RunRecord], objective: dict, requested: list[str] | None, sort_metric: str | None,
    sweep_dir: Path,
) -> list[str]:
    """The metric columns, the sort metric first; each must exist in a completed run, if any."""
    available = list(dict.fromkeys(
        name
        for result in completed
        for name in [*_objective_metric(result), *result.metrics]
    ))
    columns = list(requested or [
        name for name in available if name == objective.get("name") or name.startswith("test/")
    ])
    if sort_metric and sort_metric not in columns:
        columns.insert(0, sort_metric)
    unknown = [name for name in columns if name not in available]
    if completed and unknown:
        raise InputError(
            f"metric {unknown[0]} not found in any completed run of {sweep_dir}; "
            f"available: {', '.join(available)}"
        )
    return columns


def _objective_metric(result: RunRecord) -> dict[str, float]:
    """{objective name: value} of a run record, or {} without an objective."""
    name = result.objective.get("name")
    return {name: result.value} if name else {}


def _lower_is_better(metric: str | None, objective: dict) -> bool:
    """True when smaller values of ``metric`` are better."""
    if metric is not None and metric == objective.get("name"):
        return objective.get("mode") == "min"
    return bool(metric and re.search(r"loss|error", metric))


def _varies(runs: list[_Run], key: str) -> bool:
    """Whether override ``key`` differs (or is missing) between runs."""
    missing = object()
    return len({repr(run.overrides.get(key, missing)) for run in runs}) > 1


def _typed(values: list) -> pd.Series:
    """Override values as a column: nullable Int64 for integers, float for other numbers."""
    import pandas as pd

    present = [value for value in values if value is not None]
    if all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in present):
        all_integers = all(isinstance(value, int) for value in present)
        return pd.Series(values, dtype="Int64" if all_integers else float)
    return pd.Series(values, dtype=object)


def _natural_key(text: str) -> list:
    """Sort key that orders embedded numbers by value: 2 before 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _format_value(value: Any) -> str:
    """A hyperparameter as typed: 0.001, 1e-05, 8, unet."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_float(value: float) -> str:
    """4 significant digits (0.7123, 73.20), whole numbers from 10,000 up."""
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:#.4g}".rstrip(".")


def _format_bytes(size: int) -> str:
    """A size in bytes in binary units: 512 B, 1.15 GiB."""
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024:
            break
        amount /= 1024
    else:
        unit = "TiB"
    if unit == "B":
        return f"{size} B"
    return f"{amount:.3g} {unit}" if amount < 1000 else f"{amount:.0f} {unit}"


def pipe_table(columns: list[tuple[str, list[str], bool]]) -> str:
    """A GitHub pipe table from (header, cells, right-aligned) columns, padded to align."""
    escaped = [
        ([header.replace("|", r"\|")] + [cell.replace("|", r"\|") for cell in cells], right)
        for header, cells, right in columns
    ]
    widths = [max(3, *(len(cell) for cell in cells)) for cells, _ in escaped]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    header = line([cells[0].ljust(width) for (cells, _), width in zip(escaped, widths)])
    rule = line(["-" * (width - 1) + ":" if right else ":" + "-" * (width - 1)
                 for (_, right), width in zip(escaped, widths)])
    body = [
        line([cells[row].rjust(width) if right else cells[row].ljust(width)
              for (cells, right), width in zip(escaped, widths)])
        for row in range(1, len(escaped[0][0]))
    ]
    return "\n".join([header, rule, *body])
