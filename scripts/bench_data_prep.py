"""Benchmark the burned-area data prep on one full-size Sentinel-2 tile.

    python scripts/bench_data_prep.py [--size 10980] [--input-compress deflate] [--work-dir DIR]

Generates a synthetic 10980 x 10980 tile (B02, B03, B04 uint16 + TCI) and its burn polygons in a
temporary folder (not timed), then runs normalize, label (rasterize) and chip on it in a child
process and prints one JSON object: wall time per stage and in total, the child's peak resident
memory, chips kept, and whether the targets (total <= 60 s, peak <= 3 GiB) are met. The baseline
beside it is the time to read every input band once, strip by strip: the I/O floor of any pass.
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

from data_prep.burned_area import BurnChipSettings
from data_prep.chipping import chip_scene
from data_prep.geotiff import GeoTiffSettings, strip_windows
from data_prep.label import CLASSES, label_raster
from data_prep.normalize import normalize_bands
from data_prep.scenes import find_scene
from data_prep.synthetic import generate_full_tile

TARGET_TOTAL_S = 60.0
TARGET_PEAK_RSS_MB = 3072.0
RGB_BANDS = ("B04", "B03", "B02")


def run_stages(scene_dir: Path, polygons: Path, out_dir: Path) -> dict:
    """Normalize, label and chip one scene with the default settings; seconds per stage and chips kept."""
    scene = find_scene(scene_dir, (*RGB_BANDS, "TCI"))
    gtiff, chip = GeoTiffSettings(), BurnChipSettings()
    normalized, label = out_dir / "work" / "normalized.tif", out_dir / "work" / "label.tif"
    seconds = {}
    start = time.perf_counter()
    normalize_bands({b: scene.bands[b] for b in RGB_BANDS}, normalized, gtiff=gtiff, show_progress=False)
    seconds["normalize"] = time.perf_counter() - start
    start = time.perf_counter()
    burned = label_raster(polygons, normalized, label, gtiff=gtiff, show_progress=False)
    seconds["label"] = time.perf_counter() - start
    start = time.perf_counter()
    chips = chip_scene(scene.name, label, {"normalized": normalized, "tci": scene.bands["TCI"]}, out_dir,
                       chip, chip.keep, CLASSES, show_progress=False)
    seconds["chip"] = time.perf_counter() - start
    return {"stages_s": seconds, "chips_kept": len(chips.records), "windows": chips.windows_total,
            "burned_fraction": burned}


def read_once(paths: list[Path], strip_rows: int) -> float:
    """Seconds to read every band of ``paths`` once, strip by strip."""
    start = time.perf_counter()
    for path in paths:
        with rasterio.open(path) as src:
            for window in strip_windows(src.width, src.height, strip_rows):
                src.read(window=window)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10980, help="tile side, px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-compress", default="deflate", help="compression of the generated band files, or none")
    parser.add_argument("--work-dir", type=Path, default=None, help="where to generate (default: a temporary folder)")
    parser.add_argument("--child", nargs=3, metavar=("SCENE_DIR", "POLYGONS", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_stages(*map(Path, args.child))))
        return

    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        start = time.perf_counter()
        compress = None if args.input_compress == "none" else args.input_compress
        data = generate_full_tile(Path(tmp) / "input", seed=args.seed, size=args.size, compress=compress)
        generate_s = time.perf_counter() - start
        scene_dir = data.scenes_dir / data.scenes[0]
        start = time.perf_counter()
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(scene_dir), str(data.polygons), str(Path(tmp) / "out")],
            check=True, capture_output=True, text=True,
        )
        child_wall_s = time.perf_counter() - start
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        result = json.loads(child.stdout.strip().splitlines()[-1])
        inputs = [scene_dir / f"{band}.tif" for band in RGB_BANDS] + [scene_dir / "TCI.tif"]
        baseline_s = read_once(inputs, GeoTiffSettings().strip_rows)

    total_s = sum(result["stages_s"].values())
    report = {
        "tile_px": [args.size, args.size],
        "input": {"bands": [*RGB_BANDS, "TCI"], "compress": args.input_compress},
        "stages_s": {k: round(v, 2) for k, v in result["stages_s"].items()},
        "total_s": round(total_s, 2),
        "child_wall_s": round(child_wall_s, 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "chips_kept": result["chips_kept"],
        "windows": result["windows"],
        "burned_fraction": round(result["burned_fraction"], 3),
        "baseline_read_inputs_once_s": round(baseline_s, 2),
        "generate_s_untimed": round(generate_s, 2),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "gdal": rasterio.__gdal_version__,
        "targets": {"total_s": TARGET_TOTAL_S, "peak_rss_mb": TARGET_PEAK_RSS_MB},
        "met": {"time": total_s <= TARGET_TOTAL_S, "memory": peak_rss_mb <= TARGET_PEAK_RSS_MB},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
