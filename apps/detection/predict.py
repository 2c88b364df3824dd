"""Whole-scene object detection with a trained checkpoint.

    python -m apps.detection.predict CHECKPOINT_OR_RUN_DIR SCENE --out OUT [--chip-size 512]
        [--overlap 0.25] [--batch-size 4] [--score-threshold 0.3] [--iou-threshold 0.5] [--device auto|cpu|cuda]

SCENE is an RGB uint8 GeoTIFF, or a PNG/JPEG without georeference. The core (apps.detection.scene_detection)
slides overlapping windows, merges their boxes by class-wise NMS and writes ``OUT.geojson`` (the
scene's CRS), ``OUT.4326.geojson`` (when georeferenced) and ``OUT.coco.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from apps.detection.scene_detection import detect_scene
from apps.core.prediction.masks import DEVICES, load_task, pick_device
from apps.foundation.errors import InputError, exit_with_error
from apps.foundation.rundir import resolve_checkpoint


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m apps.detection.predict",
                                     description="Detect objects over a whole scene.")
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT_OR_RUN_DIR",
                        help="a .ckpt file, or a run directory (its best checkpoint, else checkpoints/last.ckpt)")
    parser.add_argument("scene", type=Path, metavar="SCENE", help="an RGB uint8 GeoTIFF, PNG or JPEG")
    parser.add_argument("--out", type=Path, required=True,
                        help="output prefix: writes OUT.geojson, OUT.4326.geojson and OUT.coco.json")
    parser.add_argument("--chip-size", type=int, default=512, help="window size, px (default 512)")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap, fraction of a window (default 0.25)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="drop boxes scoring less (default 0.3)")
    parser.add_argument("--iou-threshold", type=float, default=0.5,
                        help="class-wise NMS across windows at this IoU (default 0.5)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda if available, else cpu")
    return parser.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    """InputError naming the option when a numeric option is out of range."""
    if args.chip_size < 32:
        raise InputError(f"--chip-size {args.chip_size}: must be at least 32 px")
    if not 0 <= args.overlap < 1:
        raise InputError(f"--overlap {args.overlap}: must be in [0, 1)")
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be at least 1")
    for name in ("score_threshold", "iou_threshold"):
        if not 0 <= getattr(args, name) <= 1:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be in [0, 1]")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: prints a summary line and a JSON line; bad input prints ``error: ...``, exits 2."""
    args = parse_args(argv)
    try:
        check_arguments(args)
        checkpoint = resolve_checkpoint(args.checkpoint)
        device = pick_device(args.device)
        task = load_task(checkpoint, device)
        if not hasattr(task, "detect"):
            raise InputError(f"checkpoint {checkpoint}: a {type(task).__name__}, not a detector")
        summary = detect_scene(task, args.scene, args.out, args.chip_size, args.overlap, args.batch_size,
                               args.score_threshold, args.iou_threshold, device)
    except InputError as exc:
        exit_with_error(exc)
    summary["checkpoint"] = str(checkpoint)
    counts = ", ".join(f"{n} {name}" for name, n in summary["per_class"].items() if n)
    print(f"{args.scene}: {summary['boxes']} boxes ({counts or 'none'}) in {summary['width']}x{summary['height']} px "
          f"-> {summary['geojson']}, {summary['coco']}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
