"""python -m apps.report --study: Tables III, V and I from run directories, each TOTAL the sum of its rows."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from apps.core.runs.study_tables import TOTAL, load_study, table_i, table_iii, table_v
from apps.report.__main__ import main as report

GB = 1e9


def training_run(run_dir: Path, app: str, model: str, data: str, parameters: int, gpu_hours: float | None,
                 wall_time_s: float, memory: int, images: int, epochs: int) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": {"model": model, "data": data}}}}))
    facts = {"parameters": parameters, "wall_time_s": wall_time_s, "gpu_hours": gpu_hours, "device_count": 4,
             "peak_memory_bytes": memory, "peak_memory_kind": "cuda_max_allocated", "images_processed": images,
             "imagery_bytes": images * 3 * 512 * 512 * 4, "epochs": epochs}
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "app": app, "facts": facts,
                                                      "objective": {"name": "test/map", "value": 0.1}}))


def prep_job(run_dir: Path, stage: str, read: int, written: int, wall_time_s: float) -> None:
    run_dir.mkdir(parents=True)
    record = {"status": "completed", "kind": "prep", "stage": stage, "objective": {"name": None, "value": None},
              "facts": {"bytes_read": read, "bytes_written": written, "wall_time_s": wall_time_s}}
    (run_dir / "metrics.json").write_text(json.dumps(record))


@pytest.fixture
def study(tmp_path) -> list[Path]:
    detection, burned, prep = tmp_path / "detection", tmp_path / "burned", tmp_path / "prep"
    for num, (model, data, hours) in enumerate([("detr", "dota", 10.0), ("detr", "xview", 12.5),
                                                ("yolov3", "dota", 4.0), ("yolov3", "xview", 6.0),
                                                ("yolov3", "rareplanes", 1.5)]):
        training_run(detection / str(num), "detection", model, data, 41_000_000 + num, hours, 100, (num + 1) * GB,
                     1000 * (num + 1), 300)
    training_run(burned / "0", "burned_area", "unet", "normalized", 32_500_000, None, 7200, GB, 500, 100)
    training_run(burned / "1", "burned_area", "deeplabv3", "tci", 39_600_000, None, 3600, GB, 400, 100)
    (burned / "2").mkdir()  # an unfinished run: not counted
    (burned / "2" / "metrics.json").write_text(json.dumps({"status": "running"}))
    prep_job(prep / "acquire" / "0", "prep_acquire:all", 5 * GB, 3 * GB, 600)
    prep_job(prep / "acquire" / "1", "prep_acquire:all", 7 * GB, 2 * GB, 1200)
    prep_job(prep / "chips" / "0", "prep_burned_area:chip", 3 * GB, GB, 60)
    return [detection, burned, prep]


def assert_totals_are_sums(table: pd.DataFrame, label: str) -> None:
    rows, total = table[table[label] != TOTAL], table[table[label] == TOTAL].iloc[0]
    summed = [c for c in table.columns if c != label and pd.notna(total[c])]
    assert summed
    for column in summed:
        assert total[column] == pytest.approx(rows[column].sum()), column


def test_each_table_has_its_shape_and_its_totals_are_the_sums_of_its_rows(study):
    loaded = load_study(study)
    assert len(loaded.models) == 7 and len(loaded.prep_jobs) == 3

    iii = table_iii(loaded)
    assert list(iii["detector"]) == ["detr", "yolov3", TOTAL]
    assert {"dota hours", "xview hours", "rareplanes hours", "dota peak memory (GB)", "parameters"} <= set(iii.columns)
    detr = iii.iloc[0]
    assert detr["xview hours"] == 12.5 and detr["xview peak memory (GB)"] == pytest.approx(2.0)
    assert pd.isna(detr["rareplanes hours"])  # never trained
    assert_totals_are_sums(iii, "detector")
    assert iii.iloc[-1]["hours"] == pytest.approx(34.0)

    v = table_v(loaded)
    assert list(v["application"]) == ["burned_area", "detection", TOTAL]
    burned = v.iloc[0]
    assert (burned["networks"], burned["models"], burned["epochs"]) == (2, 2, 200)
    assert burned["hours"] == pytest.approx((7200 + 3600) * 4 / 3600)  # CPU runs: wall time x devices
    assert burned["imagery (GB)"] == pytest.approx(900 * 3 * 512 * 512 * 4 / GB)
    assert_totals_are_sums(v, "application")

    i = table_i(loaded)
    assert list(i["stage"]) == ["prep_acquire:all", "prep_burned_area:chip", TOTAL]
    assert i.iloc[0]["jobs"] == 2 and i.iloc[0]["read (GB)"] == pytest.approx(12)
    assert_totals_are_sums(i, "stage")


def test_the_command_writes_markdown_csv_and_a_figure(study, tmp_path, capsys):
    out = tmp_path / "tables"
    assert report(["--study", *map(str, study), "--out", str(out)]) == 0
    for stem in ("table_iii", "table_v", "table_i"):
        markdown = (out / f"{stem}.md").read_text()
        assert markdown.startswith("Table ") and f"| {TOTAL}" in markdown
        assert pd.read_csv(out / f"{stem}.csv").iloc[-1].iloc[0] == TOTAL
    assert (out / "study.png").stat().st_size > 5000
    assert report(["--study", *map(str, study)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(f"| {TOTAL}") == 3 and "Table III" in printed and "Table I:" in printed


def test_directories_without_a_finished_run_are_one_line(tmp_path, capsys):
    (tmp_path / "empty" / "0").mkdir(parents=True)
    assert report(["--study", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no finished run" in err[0] and str(tmp_path / "empty") in err[0]
    assert report(["--study", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.md"))
