"""Sweep reports over fake sweep directories: table, Markdown, CSV, figure, CLI and Hydra callback."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from apps.foundation.errors import CONFIG_ERROR_EXIT_CODE, InputError
from apps.core.runs.report import SweepSummary, find_run_dirs, load_sweep, plot_sweep, to_csv, to_markdown
from apps.report.__main__ import main
from helpers import LIMIT_S, REPO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir: Path, overrides: list[str], iou: float | None = None, *, mode: str = "max",
              failed: bool = False, memory_kind: str = "cuda_max_allocated") -> None:
    """A run directory as the training core leaves it; metrics.json only when ``iou`` is given."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text("lr: 0.001\n")
    if failed:
        (run_dir / "error.txt").write_text("RuntimeError: CUDA out of memory\n")
    if iou is None:
        return
    metrics = {"val/iou": iou - 0.01, "val/f1": iou + 0.09, "test/iou": iou, "test/f1": iou + 0.1,
               "test/precision": 0.8, "test/recall": 0.86}
    (run_dir / "metrics.json").write_text(json.dumps({
        "status": "completed",
        "app": "burned_area",
        "objective": {"name": "test/iou", "mode": mode, "value": iou},
        "metrics": metrics,
        "facts": {"parameters": 14328066, "wall_time_s": 73.2, "gpu_hours": 0.0203, "epochs": 3, "global_step": 120,
                  "peak_memory_bytes": 1234567890, "peak_memory_kind": memory_kind,
                  "device": "cuda", "device_count": 1, "best_checkpoint": "checkpoints/best.ckpt",
                  "seed": 0},
    }))


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """Six runs: lr x model swept, batch_size fixed, one failed and one incomplete run."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    runs = [
        ("lr=0.001", "model=unet", 0.70),
        ("lr=0.0001", "model=unet", 0.74),
        ("lr=1e-05", "model=unet", 0.61),
        ("lr=0.001", "model=deeplabv3", 0.72),
        ("lr=0.0001", "model=deeplabv3", None),
        ("lr=1e-05", "model=deeplabv3", None),
    ]
    for number, (lr, model, iou) in enumerate(runs):
        write_run(sweep / str(number), [lr, model, "batch_size=8", "hydra.verbose=true"], iou,
                  failed=number == 5)
    return sweep


def test_rows_sorted_by_objective_with_unfinished_runs_last(sweep_dir: Path) -> None:
    report = load_sweep(sweep_dir)

    assert report.sort_metric == "test/iou" and report.ascending is False
    assert list(report.table["run"]) == ["1", "3", "0", "2", "4", "5"]
    assert list(report.table["status"]) == ["completed"] * 4 + ["incomplete", "failed"]
    assert report.table["test/iou"].tolist()[:4] == [0.74, 0.72, 0.70, 0.61]


def test_columns_hold_swept_hyperparameters_metrics_and_facts(sweep_dir: Path) -> None:
    report = load_sweep(sweep_dir)

    assert report.hyperparameters == ["lr", "model"]
    assert report.fixed_overrides == {"batch_size": 8}
    assert report.metrics == ["test/iou", "test/f1", "test/precision", "test/recall"]
    assert list(report.table.columns) == [
        "run", "status", "lr", "model", "batch_size", "test/iou", "test/f1", "test/precision",
        "test/recall", "parameters", "wall_time_s", "gpu_hours", "peak_memory_bytes", "peak_memory_kind",
    ]
    assert report.table["lr"].tolist() == [0.0001, 0.001, 0.001, 1e-05, 0.0001, 1e-05]
    assert str(report.table["batch_size"].dtype) == "Int64"
    assert report.table["parameters"].iloc[0] == 14328066
    assert report.table["parameters"].isna().tolist()[-2:] == [True, True]


def test_chosen_metric_and_direction(sweep_dir: Path) -> None:
    report = load_sweep(sweep_dir, metric="test/f1", metrics=["val/iou"], ascending=True)

    assert report.metrics == ["test/f1", "val/iou"]
    assert list(report.table["run"]) == ["2", "0", "3", "1", "4", "5"]


def test_minimised_objective_sorts_ascending(tmp_path: Path) -> None:
    for number, loss in enumerate([0.3, 0.1, 0.2]):
        write_run(tmp_path / str(number), [f"seed={number}"], loss, mode="min")

    report = load_sweep(tmp_path)

    assert report.ascending is True
    assert list(report.table["run"]) == ["1", "2", "0"]


def test_unknown_metric_is_an_input_error(sweep_dir: Path) -> None:
    with pytest.raises(InputError, match="test/miou.*available: test/iou"):
        load_sweep(sweep_dir, metric="test/miou")


def test_runs_found_two_levels_down_in_natural_order(tmp_path: Path) -> None:
    for name in ["10", "2", "group/1", "group/0/too_deep"]:
        write_run(tmp_path / name, ["seed=0"])
    (tmp_path / "logs").mkdir()

    assert [path.relative_to(tmp_path).as_posix() for path in find_run_dirs(tmp_path)] == [
        "2", "10", "group/1",
    ]


def test_markdown_is_an_aligned_pipe_table(sweep_dir: Path) -> None:
    markdown = to_markdown(load_sweep(sweep_dir))
    caption, fixed, table = markdown.strip().split("\n\n")
    lines = table.splitlines()

    assert caption == "6 runs: 4 completed, 1 incomplete, 1 failed; sorted by test/iou, descending."
    assert fixed == "Fixed overrides: `batch_size=8`."
    assert len({len(line) for line in lines}) == 1
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["run", "status", "lr", "model", "test/iou", "test/f1", "test/precision",
                      "test/recall", "parameters", "wall time (s)", "GPU-hours",
                      "peak memory (cuda_max_allocated)"]
    rule = [cell.strip() for cell in lines[1].strip("|").split("|")]
    assert rule[0].startswith(":") and rule[2].endswith(":") and rule[3].startswith(":")
    best = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert best == ["1", "completed", "0.0001", "unet", "0.7400", "0.8400", "0.8000", "0.8600",
                    "14,328,066", "73.20", "0.02030", "1.15 GiB"]
    assert [cell.strip() for cell in lines[-1].strip("|").split("|")][2:] == ["1e-05", "deeplabv3"] + [""] * 8


def test_markdown_names_each_memory_kind_when_runs_differ(tmp_path: Path) -> None:
    write_run(tmp_path / "0", ["seed=0"], 0.5, memory_kind="process_rss")
    write_run(tmp_path / "1", ["seed=1"], 0.6)

    markdown = to_markdown(load_sweep(tmp_path))

    assert "1.15 GiB (process_rss)" in markdown and "1.15 GiB (cuda_max_allocated)" in markdown


def test_csv_keeps_raw_values(sweep_dir: Path) -> None:
    table = pd.read_csv(io.StringIO(to_csv(load_sweep(sweep_dir))))

    assert table["run"].tolist() == [1, 3, 0, 2, 4, 5]
    assert table["peak_memory_bytes"].iloc[0] == 1234567890
    assert table["wall_time_s"].iloc[0] == 73.2
    assert table["lr"].iloc[0] == 0.0001 and table["batch_size"].tolist() == [8] * 6


def test_plot_writes_a_png_into_the_sweep_dir(sweep_dir: Path) -> None:
    path = plot_sweep(load_sweep(sweep_dir))

    assert path == sweep_dir / "test_iou_by_hyperparameter.png"
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert not list(sweep_dir.glob(".*.tmp-*"))


def test_plot_without_a_swept_hyperparameter_is_an_input_error(tmp_path: Path) -> None:
    write_run(tmp_path / "0", ["seed=0"], 0.5)

    with pytest.raises(InputError, match="no hyperparameter varies"):
        plot_sweep(load_sweep(tmp_path))


def test_cli_writes_csv_and_plot(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "table.csv"

    assert main([str(sweep_dir), "--metrics", "test/iou,test/f1", "--plot", "--out", str(out)]) == 0

    assert out.read_text().splitlines()[0].startswith("run,status,lr,model,batch_size,test/iou,test/f1,")
    plot_path = Path(capsys.readouterr().err.strip())
    assert plot_path.read_bytes().startswith(PNG_SIGNATURE)


def test_cli_prints_markdown_by_default(sweep_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep_dir), "--ascending"]) == 0

    assert "sorted by test/iou, ascending." in capsys.readouterr().out


@pytest.mark.parametrize("make_bad_path", [
    lambda tmp_path: tmp_path / "missing",
    lambda tmp_path: tmp_path,
], ids=["missing", "without runs"])
def test_cli_bad_path_exits_with_one_line_error(make_bad_path, tmp_path: Path) -> None:
    bad_path = make_bad_path(tmp_path)

    result = subprocess.run([sys.executable, "-m", "apps.report", str(bad_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=LIMIT_S)

    assert result.returncode == CONFIG_ERROR_EXIT_CODE
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and str(bad_path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sweep_summary_callback_writes_summary_files(sweep_dir: Path) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})

    SweepSummary().on_multirun_end(config=config)

    assert (sweep_dir / "summary.md").read_text() == to_markdown(load_sweep(sweep_dir))
    assert (sweep_dir / "summary.csv").read_text() == to_csv(load_sweep(sweep_dir))
    assert not list(sweep_dir.glob(".*.tmp-*"))


def test_sweep_summary_callback_warns_instead_of_raising(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "missing")}}})

    with caplog.at_level(logging.WARNING, logger="apps.core.runs.report"):
        SweepSummary(metric="test/iou").on_multirun_end(config=config)

    assert "sweep summary not written" in caplog.text and "missing" in caplog.text
    assert not (tmp_path / "missing").exists()
