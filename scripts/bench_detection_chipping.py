"""Benchmark the detection chipping on one DOTA-size scene.

    python scripts/bench_detection_chipping.py [--size 4000] [--boxes 2000] [--large 20] [--image-format png]
                                               [--work-dir DIR]

Generates (not timed, in a child process) one ``size`` x ``size`` px RGB uint8 scene (PNG as DOTA ships
them, or GeoTIFF) with ``boxes`` objects of 8-80 px (5 % difficult) and ``large`` of 150-400 px (harbours:
larger than the windows' overlap) in DOTA's layout under ``--work-dir`` (default: a temporary folder),
then in one run:

- the prep: ``stage=labels`` then ``stage=chip`` of ``data_prep.detection`` with its default chip settings
  (512 px, overlap 0.2), in a fresh child process: seconds per stage (chip: the best of ``--repeats`` runs,
  each redoing the scene) and the child's peak resident memory;
- the baseline: seconds to read the whole image once (rasterio, in this process, after the child; the best
  of ``--repeats`` reads).

Prints one JSON object: both times, chip time over the baseline, boxes per second (the scene's objects
over the chip stage's time), chips per second, the chips and boxes written (as objects to detect and as
ignored regions), the scene's objects no chip holds by reason, and the peak memory.
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

import warnings

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from data_prep.detection import PrepConfig, prepare
from data_prep.chipping import read_scene_chips

warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the PNG scene, as DOTA's

SCENE = "P9999"
CLASSES = ("plane", "ship", "small-vehicle", "large-vehicle", "storage-tank")


def make_scene(root: Path, size: int, n_boxes: int, n_large: int, image_format: str, seed: int) -> Path:
    """Write ``root/images/P9999.<png|tif>`` and ``root/labelTxt/P9999.txt``; returns the image path."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    base = np.stack([120 + 60 * np.sin(6 * xx), 110 + 50 * np.cos(5 * yy), 100 + 40 * np.sin(4 * (xx + yy))])
    image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    lines = ["imagesource:GoogleEarth", "gsd:0.3"]
    for i in range(n_boxes + n_large):
        w, h = rng.uniform(8, 80, 2) if i < n_boxes else rng.uniform(150, 400, 2)
        x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
        image[:, int(y):int(y + h), int(x):int(x + w)] = rng.integers(0, 256, (3, 1, 1))
        corners = (x, y, x + w, y, x + w, y + h, x, y + h)
        lines.append(" ".join(f"{v:.1f}" for v in corners) + f" {rng.choice(CLASSES)} {int(rng.random() < 0.05)}")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labelTxt").mkdir(parents=True, exist_ok=True)
    path = root / "images" / f"{SCENE}.{image_format}"
    profile = {"driver": "PNG"} if image_format == "png" else {
        "driver": "GTiff", "crs": "EPSG:32633", "transform": Affine(0.3, 0, 400_000, 0, -0.3, 5_000_000),
        "tiled": True, "blockxsize": 512, "blockysize": 512}
    with rasterio.open(path, "w", width=size, height=size, count=3, dtype="uint8", **profile) as dst:
        dst.write(image)
    (root / "labelTxt" / f"{SCENE}.txt").write_text("\n".join(lines) + "\n")
    return path


def read_once(path: Path) -> float:
    """Seconds to read the whole image once."""
    start = time.perf_counter()
    with rasterio.open(path) as src:
        src.read()
    return time.perf_counter() - start


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def run_stages(root: Path, out_dir: Path, repeats: int) -> dict:
    """labels, then chip ``repeats`` times, of the one scene with the default chip settings: seconds per stage
    (chip: the best run), peak RSS, outputs."""
    config = PrepConfig(out_dir=out_dir, format="dota", images=root / "images", progress=False, force=True)
    seconds = {"labels": timed(prepare, config, stage="labels"),
               "chip": min(timed(prepare, config, stage="chip") for _ in range(repeats))}
    chips = read_scene_chips(out_dir, SCENE)
    boxes = np.load(out_dir / "scenes" / SCENE / "boxes.npy")
    return {"stages_s": seconds, "chips": len(chips.records), "windows": chips.windows_total,
            "boxes_in_chips": {"to_detect": int(np.count_nonzero(boxes[:, 6] == 0)),
                               "ignored": int(np.count_nonzero(boxes[:, 6] > 0))},
            "objects_in_no_chip": chips.dropped,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000, help="scene side, px")
    parser.add_argument("--boxes", type=int, default=2000, help="objects of 8-80 px in the scene")
    parser.add_argument("--large", type=int, default=20, help="objects of 150-400 px in the scene")
    parser.add_argument("--image-format", choices=("png", "tif"), default="png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the chip stage and of the baseline read")
    parser.add_argument("--work-dir", type=Path, default=None, help="where to write the scene and chips")
    parser.add_argument("--make", type=Path, metavar="ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "OUT_DIR", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        print(make_scene(args.make, args.size, args.boxes, args.large, args.image_format, args.seed))
        return
    if args.child:
        print(json.dumps(run_stages(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))))
        return

    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        root = Path(tmp) / "scene"
        start = time.perf_counter()  # each step in its own process: a child inherits its parent's peak RSS
        made = subprocess.run([sys.executable, __file__, "--make", str(root), "--size", str(args.size), "--boxes",
                               str(args.boxes), "--large", str(args.large), "--image-format", args.image_format, "--seed", str(args.seed)],
                              check=True, stdout=subprocess.PIPE, text=True)
        image = Path(made.stdout.strip().splitlines()[-1])
        generate_s = time.perf_counter() - start
        child = subprocess.run([sys.executable, __file__, "--child", str(root), str(Path(tmp) / "out"),
                                str(args.repeats)], check=True, stdout=subprocess.PIPE, text=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        baseline_s = min(read_once(image) for _ in range(args.repeats))
        image_bytes = image.stat().st_size

    chip_s = result["stages_s"]["chip"]
    report = {
        "scene_px": [args.size, args.size], "image_format": args.image_format, "image_bytes": image_bytes,
        "boxes": args.boxes, "large_objects": args.large, "repeats": args.repeats,
        "baseline_read_image_s": round(baseline_s, 3),
        "labels_s": round(result["stages_s"]["labels"], 3),
        "chip_s": round(chip_s, 3),
        "chip_over_baseline": round(chip_s / baseline_s, 2),
        "boxes_per_s": round((args.boxes + args.large) / chip_s, 1),
        "chips_per_s": round(result["chips"] / chip_s, 1),
        "chips": result["chips"], "windows": result["windows"], "boxes_in_chips": result["boxes_in_chips"],
        "objects_in_no_chip": result["objects_in_no_chip"],
        "peak_rss_bytes": result["peak_rss_bytes"],
        "generate_s_untimed": round(generate_s, 2),
        "cpu_count": os.cpu_count(), "numpy": np.__version__, "gdal": rasterio.__gdal_version__,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
