"""The study's tables from run directories: Table III (detectors x datasets), Table V (per application)
and Table I (per prep stage), each with a TOTAL row, as Markdown or CSV, and a figure.

Training runs are the completed ``metrics.json`` records with run facts (parameters, wall time, GPU-hours,
peak memory, epochs, images and bytes of imagery fed); prep Jobs are those of kind ``prep`` (bytes read and
written, wall time). Each run's network and dataset are its Hydra choices (``model=``, ``data=``).
Hours are device-hours: GPU-hours for a GPU run, wall time x devices for a CPU one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from apps.core.runs.report import format_float, pipe_table
from apps.foundation.errors import InputError
from apps.foundation.rundir import HYDRA_CONFIG_FILE, METRICS_FILE, PREP, read_completed

if TYPE_CHECKING:
    import pandas as pd

TOTAL = "TOTAL"
GB = 1e9


@dataclass(frozen=True)
class TrainedModel:
    """One completed training run, as the tables need it."""

    app: str
    network: str
    dataset: str
    parameters: int
    device_hours: float
    peak_memory_bytes: int | None
    peak_memory_kind: str | None
    images: int
    imagery_bytes: int
    epochs: int


@dataclass(frozen=True)
class PrepJob:
    """One completed prep Job (a run of an acquisition or prep stage)."""

    stage: str
    bytes_read: int
    bytes_written: int
    wall_time_s: float


@dataclass
class Study:
    """Every finished training run and prep Job found under some directories."""

    models: list[TrainedModel]
    prep_jobs: list[PrepJob]


def _choices(run_dir: Path) -> dict[str, str]:
    """The run's Hydra group choices (model, data, ...) from ``.hydra/hydra.yaml``; {} when absent."""
    path = run_dir / HYDRA_CONFIG_FILE
    if not path.is_file():
        return {}
    hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
    return {k: str(v) for k, v in ((hydra.get("runtime") or {}).get("choices") or {}).items()}


def _device_hours(facts: dict) -> float:
    if facts.get("gpu_hours") is not None:
        return float(facts["gpu_hours"])
    return float(facts.get("wall_time_s") or 0.0) * int(facts.get("device_count") or 1) / 3600


def load_study(directories: list[str | os.PathLike]) -> Study:
    """The finished runs and prep Jobs anywhere below ``directories``; InputError naming them when
    there is none, or when one of them does not exist."""
    models, jobs = [], []
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise InputError(f"{directory}: no such directory")
        for metrics in sorted(directory.rglob(METRICS_FILE)):
            record = read_completed(metrics.parent)
            if record is None:
                continue
            facts = record.facts
            if record.kind == PREP:
                jobs.append(PrepJob(str(record.stage), int(facts["bytes_read"]), int(facts["bytes_written"]),
                                    float(facts["wall_time_s"])))
            elif "parameters" in facts:
                choices = _choices(metrics.parent)
                models.append(TrainedModel(
                    app=str(record.app), network=choices.get("model", "?"), dataset=choices.get("data", "?"),
                    parameters=int(facts["parameters"]), device_hours=_device_hours(facts),
                    peak_memory_bytes=facts.get("peak_memory_bytes"), peak_memory_kind=facts.get("peak_memory_kind"),
                    images=int(facts.get("images_processed") or 0), imagery_bytes=int(facts.get("imagery_bytes") or 0),
                    epochs=int(facts.get("epochs") or 0)))
    if not models and not jobs:
        raise InputError(f"{', '.join(map(str, directories))}: no finished run or prep Job "
                         f"(no completed {METRICS_FILE}) below")
    return Study(models, jobs)


def _with_total(table: "pd.DataFrame", label_column: str, summed: list[str]) -> "pd.DataFrame":
    """``table`` plus a TOTAL row holding the sum of each ``summed`` column (others left empty)."""
    import pandas as pd

    total = {column: table[column].sum() for column in summed}
    total[label_column] = TOTAL
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def table_iii(study: Study) -> "pd.DataFrame":
    """Detection: one row per detector; per dataset its device-hours and peak memory (GB); its
    parameters (the largest over datasets: heads differ by class count); a TOTAL row of sums."""
    import pandas as pd

    runs = [m for m in study.models if m.app == "detection"]
    if not runs:
        return pd.DataFrame()
    datasets = sorted({m.dataset for m in runs})
    rows = []
    for network in sorted({m.network for m in runs}):
        row: dict = {"detector": network, "parameters": max(m.parameters for m in runs if m.network == network)}
        for dataset in datasets:
            done = [m for m in runs if m.network == network and m.dataset == dataset]
            row[f"{dataset} hours"] = sum(m.device_hours for m in done) if done else None
            memories = [m.peak_memory_bytes for m in done if m.peak_memory_bytes is not None]
            row[f"{dataset} peak memory (GB)"] = max(memories) / GB if memories else None
        row["hours"] = sum(m.device_hours for m in runs if m.network == network)
        rows.append(row)
    table = pd.DataFrame(rows)
    return _with_total(table, "detector", ["parameters", *(f"{d} hours" for d in datasets), "hours"])


def table_v(study: Study) -> "pd.DataFrame":
    """Per application: networks, models, parameters (summed over models), imagery processed (GB),
    images, epochs and device-hours; a TOTAL row of sums."""
    import pandas as pd

    rows = []
    for app in sorted({m.app for m in study.models}):
        runs = [m for m in study.models if m.app == app]
        rows.append({"application": app, "networks": len({m.network for m in runs}), "models": len(runs),
                     "parameters": sum(m.parameters for m in runs),
                     "imagery (GB)": sum(m.imagery_bytes for m in runs) / GB,
                     "images": sum(m.images for m in runs), "epochs": sum(m.epochs for m in runs),
                     "hours": sum(m.device_hours for m in runs)})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    return _with_total(table, "application", [c for c in table.columns if c != "application"])


def table_i(study: Study) -> "pd.DataFrame":
    """Per prep stage: Jobs, data read and written (GB) and hours; a TOTAL row of sums."""
    import pandas as pd

    rows = []
    for stage in sorted({j.stage for j in study.prep_jobs}):
        jobs = [j for j in study.prep_jobs if j.stage == stage]
        rows.append({"stage": stage, "jobs": len(jobs), "read (GB)": sum(j.bytes_read for j in jobs) / GB,
                     "written (GB)": sum(j.bytes_written for j in jobs) / GB,
                     "hours": sum(j.wall_time_s for j in jobs) / 3600})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    return _with_total(table, "stage", [c for c in table.columns if c != "stage"])


TABLES = {"table_iii": ("Table III: detectors x datasets (hours: device-hours, GPU-hours on GPUs)", table_iii),
          "table_v": ("Table V: applications (hours: device-hours, GPU-hours on GPUs)", table_v),
          "table_i": ("Table I: data preparation (hours: the Jobs' wall time)", table_i)}
"""File stem -> (caption, builder) of each study table."""


def to_markdown(caption: str, table: "pd.DataFrame") -> str:
    """A caption line and a pipe table: counts as integers, other numbers to 4 significant digits."""
    import pandas as pd

    def cell(value) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        if isinstance(value, str):
            return value
        return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1 else format_float(float(value))

    columns = [(str(name), [cell(v) for v in table[name]], pd.api.types.is_numeric_dtype(table[name]))
               for name in table.columns]
    return f"{caption}.\n\n{pipe_table(columns)}\n"


def plot_study(study: Study, path: str | os.PathLike) -> Path:
    """A PNG of device-hours per application (Table V) and per detector and dataset (Table III)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from apps.foundation.files import atomic_path

    detection = table_iii(study)
    apps_table = table_v(study)
    panels = [p for p in ("apps", "detection") if not (apps_table if p == "apps" else detection).empty]
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 4), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        if panel == "apps":
            rows = apps_table[apps_table["application"] != TOTAL]
            axis.bar(rows["application"], rows["hours"])
            axis.set_title("device-hours per application")
        else:
            rows = detection[detection["detector"] != TOTAL].set_index("detector")
            hours = [c for c in rows.columns if c.endswith(" hours")]
            rows[hours].rename(columns=lambda c: c.removesuffix(" hours")).plot.bar(ax=axis)
            axis.set_title("device-hours per detector and dataset")
        axis.set_ylabel("device-hours")
        axis.tick_params(axis="x", labelrotation=45)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
    return path
