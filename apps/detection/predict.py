"""Whole-scene object detection with a trained checkpoint.

    python -m apps.detection.predict CHECKPOINT_OR_RUN_DIR SCENE --out OUT [--chip-size N] [--overlap F]
        [--batch-size 4] [--score-threshold 0.3] [--iou-threshold 0.5] [--device auto|cpu|cuda]

SCENE is a GeoTIFF, or a PNG/JPEG without georeference; its pixels are made as the training chips
were (the bands and stretch the prep recorded). Windows have the training chips' size and overlap
unless given; apps.detection.scene_detection slides them, merges their boxes by
class-wise NMS and writes ``OUT.geojson`` (the scene's CRS), ``OUT.4326.geojson`` (when georeferenced)
and ``OUT.coco.json``. The command's arguments, checks and run flow are the core's (apps.core.prediction).
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from typing import Any, Sequence

from apps.core.prediction.checkpoint import recorded_preparation
from apps.core.prediction.command import Option, PredictionApp, in_unit_interval, run_prediction
from apps.detection.scene_detection import detect_scene
from apps.foundation.chips import ChipPreparation
from apps.foundation.errors import InputError
from data_prep.detection import DetectionPreparation
from data_prep.normalize import NormalizeSettings


def check_task(task: Any, geometry: ChipPreparation) -> None:
    """InputError unless the checkpoint holds a detector."""
    if not hasattr(task, "detect"):
        raise InputError(f"checkpoint: a {type(task).__name__}, not a detector")


def predict(task: Any, scene: Any, args: argparse.Namespace, geometry: ChipPreparation, device: str,
            facts: dict) -> dict:
    preparation = recorded_preparation(task, DetectionPreparation)
    return detect_scene(task, scene, args.out, geometry.chip_size, geometry.overlap, args.batch_size,
                        args.score_threshold, args.iou_threshold, device, bands=preparation.bands,
                        stretch=preparation.recorded("stretch", NormalizeSettings()))


def summary_line(args: argparse.Namespace, summary: dict) -> str:
    counts = ", ".join(f"{n} {name}" for name, n in summary["per_class"].items() if n)
    return (f"{args.scene}: {summary['boxes']} boxes ({counts or 'none'}) in {summary['width']}x{summary['height']} px "
            f"-> {summary['geojson']}, {summary['coco']}")


APP = PredictionApp(
    prog="python -m apps.detection.predict", description="Detect objects over a whole scene.",
    inputs=[("scene", "a GeoTIFF, PNG or JPEG (bands and stretch as the training chips were made)")],
    outputs="OUT.geojson, OUT.4326.geojson and OUT.coco.json",
    prepare=lambda task, args, work_dir: nullcontext(args.scene), predict=predict, summary_line=summary_line,
    describe_inputs=lambda args: str(args.scene),
    options=(
        Option("--score-threshold", {"type": float, "default": 0.3, "help": "drop boxes scoring less (default 0.3)"},
               in_unit_interval, "must be in [0, 1]"),
        Option("--iou-threshold", {"type": float, "default": 0.5,
                                   "help": "class-wise NMS across windows at this IoU (default 0.5)"},
               in_unit_interval, "must be in [0, 1]"),
    ),
    batch_size=4, default_geometry=ChipPreparation(chip_size=512, overlap=0.25), min_chip_size=32, check_task=check_task,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: prints a summary line and a JSON line; bad input prints ``error: ...``, exits 2."""
    return run_prediction(APP, argv)


if __name__ == "__main__":
    raise SystemExit(main())
