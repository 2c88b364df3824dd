"""Whole-scene burned-area prediction with a trained checkpoint.

    python -m apps.burned_area.predict CHECKPOINT_OR_RUN_DIR SCENE --out OUT [--chip-size N] [--overlap F]
        [--batch-size 8] [--threshold 0.5] [--device auto|cpu|cuda] [--min-area-m2 0]

The scene is prepared as the network's training chips were (``input_set`` of the checkpoint):
"normalized" stretches B04, B03, B02 between this scene's percentiles (data_prep.normalize) with the
percentiles the training dataset recorded, "tci" takes the scene's TCI as it is. Windows have the training chips' size and overlap unless given. The core (apps.core.prediction)
slides, blends and writes ``OUT.tif`` and ``OUT.geojson`` of the burned class.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from apps.core.prediction.checkpoint import recorded_preparation
from apps.core.prediction.command import run_prediction
from apps.core.prediction.masks import pixelwise_app
from apps.foundation.chips import ChipPreparation
from apps.foundation.errors import InputError

INPUT_BANDS = {"normalized": ("B04", "B03", "B02"), "tci": ("TCI",)}
"""Scene bands each input set is made from (as data_prep.burned_area prepared the training chips)."""


def check_task(task: Any, geometry: ChipPreparation) -> None:
    """InputError unless the checkpoint's input set is known and its network accepts windows of
    ``geometry.chip_size`` px (smp encoders downsample by a fixed stride)."""
    chip_size = geometry.chip_size
    if task.input_set not in INPUT_BANDS:
        raise InputError(f"checkpoint: unknown input_set {task.input_set!r}")
    net = task.net
    if getattr(net, "requires_divisible_input_shape", False) and chip_size % net.encoder.output_stride:
        raise InputError(f"--chip-size {chip_size}: this network needs a multiple of {net.encoder.output_stride} px")


@contextmanager
def prepared_image(task: Any, args: argparse.Namespace, work_dir: Path) -> Iterator[dict[str, Path]]:
    """The scene's image as the training chips were made for the task's input set: a temporary
    normalized RGB in ``work_dir`` (this scene's percentiles, at the training dataset's percentile
    settings), or the scene's TCI file."""
    from data_prep.burned_area import BurnedAreaPreparation
    from data_prep.normalize import NormalizeSettings, normalize_bands
    from data_prep.scenes import find_scene

    bands = INPUT_BANDS[task.input_set]
    scene = find_scene(args.scene, bands)
    if task.input_set == "tci":
        yield {"image": scene.bands["TCI"]}
        return
    settings = recorded_preparation(task, BurnedAreaPreparation).recorded("normalize", NormalizeSettings())
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".predict-", dir=work_dir) as tmp:
        path = Path(tmp) / "normalized.tif"
        normalize_bands({band: scene.bands[band] for band in bands}, path, settings, show_progress=True)
        yield {"image": path}


APP = pixelwise_app("python -m apps.burned_area.predict", "Predict burned area over a whole Sentinel-2 scene.",
                    [("scene", "a Sentinel-2 scene folder (SAFE or band files)")], "burned", prepared_image,
                    lambda args: str(args.scene), check_task, lambda task: {"input_set": task.input_set})


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: prints a summary line and a JSON line; bad input prints ``error: ...``, exits 2."""
    return run_prediction(APP, argv)


if __name__ == "__main__":
    raise SystemExit(main())
