"""Benchmark the deforestation data prep on one full-size Sentinel-2 pair.

    python scripts/bench_deforestation_prep.py [--size 10980] [--input-compress deflate] [--work-dir DIR]

Generates (not timed) a synthetic pair of ``size`` x ``size`` px products (B02, B03, B04, B08 uint16 at
10 m, SCL uint8 at 20 m, each date) and its PRODES polygons under ``--work-dir`` (reused when it holds
one of the same size, seed and compression; default: a temporary folder), then in one run:

- the floor: seconds to read every band file of both products once, strip by strip;
- the prep: ``stage=prepare`` then ``stage=chip`` for that one area, in a child process, seconds per
  stage and the child's peak resident memory after each stage.

Prints one JSON object with the figures, the targets (prepare + chip <= 90 s, peak <= 3 GiB) and
whether they are met.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from data_prep.chipping import read_scene_chips
from data_prep.deforestation import DATES, PrepConfig, prepare
from data_prep.geotiff import GeoTiffSettings, strip_windows
from data_prep.synthetic import FULL_TILE_SIZE
from data_prep.synthetic_pairs import TARGET_YEAR, generate_pairs

TARGET_PREP_S = 90.0
TARGET_PEAK_RSS_BYTES = 3 * 2**30
BAND_FILES = ("B02", "B03", "B04", "B08", "SCL")


def ensure_pair(work_dir: Path, size: int, seed: int, compress: str | None) -> tuple[Path, Path, float | None]:
    """(areas folder, polygons, seconds spent generating or None when reused) of a one-area pair in ``work_dir``."""
    marker = work_dir / "input" / "generated.json"
    wanted = {"size": size, "seed": seed, "compress": compress}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return work_dir / "input" / "areas", work_dir / "input" / "prodes.gpkg", None
    start = time.perf_counter()
    areas, polygons = generate_pairs(work_dir / "input", n_areas=1, size=size, seed=seed, compress=compress)
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps(wanted))
    return areas, polygons, seconds


def read_once(paths: list[Path], strip_rows: int) -> float:
    """Seconds to read every band of ``paths`` once, strip by strip."""
    start = time.perf_counter()
    for path in paths:
        with rasterio.open(path) as src:
            for window in strip_windows(src.width, src.height, strip_rows):
                src.read(window=window)
    return time.perf_counter() - start


def run_stages(areas: Path, polygons: Path, out_dir: Path) -> dict:
    """Prepare and chip the one area of ``areas`` with the default settings: seconds and peak RSS (bytes) per stage."""
    config = PrepConfig(out_dir=out_dir, areas_dir=areas, polygons=polygons, target_year=TARGET_YEAR)
    area = next(p.name for p in areas.iterdir() if p.is_dir())
    seconds, peak = {}, {}
    for stage in ("prepare", "chip"):
        start = time.perf_counter()
        prepare(config, stage=stage, area=area)
        seconds[stage] = time.perf_counter() - start
        peak[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    chips = read_scene_chips(out_dir, area)
    prepared = json.loads(config.prepared_path(area).read_text())
    return {"stages_s": seconds, "peak_rss_after_stage_bytes": peak, "chips_kept": len(chips.records),
            "windows": chips.windows_total, "change_fraction": prepared["change_fraction"],
            "percentiles": prepared["percentiles"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=FULL_TILE_SIZE, help="product side, px (10 m)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-compress", default="deflate", help="compression of the generated band files, or none")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where to generate the pair and keep it for later runs (default: a temporary folder)")
    parser.add_argument("--child", nargs=3, metavar=("AREAS", "POLYGONS", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_stages(*map(Path, args.child))))
        return

    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work_dir = args.work_dir or Path(tmp)
        compress = None if args.input_compress == "none" else args.input_compress
        areas, polygons, generate_s = ensure_pair(work_dir, args.size, args.seed, compress)
        inputs = sorted(p for d in DATES for p in (areas / "area_00" / d).glob("*.tif") if p.stem in BAND_FILES)
        input_bytes = sum(p.stat().st_size for p in inputs)
        floor_s = read_once(inputs, GeoTiffSettings().strip_rows)
        start = time.perf_counter()
        child = subprocess.run([sys.executable, __file__, "--child", str(areas), str(polygons), str(Path(tmp) / "out")],
                               check=True, stdout=subprocess.PIPE, text=True)
        child_wall_s = time.perf_counter() - start
        peak_rss_bytes = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        result = json.loads(child.stdout.strip().splitlines()[-1])

    prep_s = sum(result["stages_s"].values())
    report = {
        "size_px": {"10m": [args.size, args.size], "scl_20m": [-(-args.size // 2)] * 2},
        "input": {"files": len(inputs), "bytes": input_bytes,
                  "compress": args.input_compress},
        "floor_read_inputs_once_s": round(floor_s, 2),
        "stages_s": {k: round(v, 2) for k, v in result["stages_s"].items()},
        "prep_s": round(prep_s, 2),
        "prep_over_floor": round(prep_s / floor_s, 2),
        "child_wall_s": round(child_wall_s, 2),
        "peak_rss_bytes": peak_rss_bytes,
        "peak_rss_after_stage_bytes": result["peak_rss_after_stage_bytes"],
        "chips_kept": result["chips_kept"],
        "windows": result["windows"],
        "change_fraction": round(result["change_fraction"], 4),
        "percentiles": result["percentiles"],
        "generate_s_untimed": None if generate_s is None else round(generate_s, 2),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "gdal": rasterio.__gdal_version__,
        "targets": {"prep_s": TARGET_PREP_S, "peak_rss_bytes": TARGET_PEAK_RSS_BYTES},
        "met": {"time": prep_s <= TARGET_PREP_S, "memory": peak_rss_bytes <= TARGET_PEAK_RSS_BYTES},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
