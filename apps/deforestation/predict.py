"""Whole-area change prediction from a pair of Sentinel-2 L2A products with a trained checkpoint.

    python -m apps.deforestation.predict CHECKPOINT_OR_RUN_DIR BEFORE AFTER --out OUT [--chip-size N]
        [--overlap F] [--batch-size 8] [--threshold 0.5] [--device auto|cpu|cuda] [--min-area-m2 0]

The pair is prepared as the training chips were, with the settings the training dataset recorded
(cloud mask, BOA offset, band combinations, stretch percentiles): AFTER is read onto BEFORE's grid,
and each band combination the network was trained on is stretched over both dates' valid pixels.
Windows have the training chips' size and overlap unless given. The core
(apps.core.prediction) slides, blends and writes ``OUT.tif`` (change mask and probability on
BEFORE's grid) and ``OUT.geojson`` (change polygons in EPSG:4326 with their area).
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

SIZE_MULTIPLE = 32
"""ChangeFormer and the U-Net baselines downsample by 32: chips must be a multiple of it."""


def check_task(task: Any, geometry: ChipPreparation) -> None:
    """InputError unless the window size is a multiple of the networks' total stride."""
    if geometry.chip_size % SIZE_MULTIPLE:
        raise InputError(f"--chip-size {geometry.chip_size}: change-detection networks need a multiple of {SIZE_MULTIPLE} px")


@contextmanager
def prepared_pair(task: Any, args: argparse.Namespace, work_dir: Path) -> Iterator[dict[str, list[Path]]]:
    """The pair's stretched band combinations (``task.bands``, in order) as temporary uint8 GeoTIFFs in
    ``work_dir``, on BEFORE's grid: {"before": [one file per combination], "after": [...]}."""
    from data_prep.deforestation import DATES, DeforestationPreparation, write_pair_images
    from data_prep.normalize import NormalizeSettings
    from data_prep.sentinel2 import Sentinel2Settings, open_product

    preparation = recorded_preparation(task, DeforestationPreparation)
    sentinel2 = preparation.recorded("sentinel2", Sentinel2Settings())
    stretch = preparation.recorded("stretch", NormalizeSettings())
    # The cloud mask is the training data's: predict has no setting of its own for it.
    without_scl = ("the model's training data was cloud-masked with SCL: give the product its SCL band, or use a "
                   "model trained on data prepared with sentinel2.cloud_mask=none")
    products = {date: open_product(folder, sentinel2, without_scl) for date, folder in zip(DATES, (args.before, args.after))}
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".predict-", dir=work_dir) as tmp:
        paths = {f"{date}_{combo}": Path(tmp) / f"{date}_{combo}.tif" for date in DATES for combo in task.bands}
        write_pair_images(products, task.bands, sentinel2, stretch, paths)
        yield {date: [paths[f"{date}_{combo}"] for combo in task.bands] for date in DATES}


APP = pixelwise_app("python -m apps.deforestation.predict",
                    "Predict deforestation between two Sentinel-2 L2A products of one area.",
                    [("before", "the earlier product (.SAFE or band folder); its grid is the output's"),
                     ("after", "the later product")], "change", prepared_pair,
                    lambda args: f"{args.before} -> {args.after}", check_task,
                    lambda task: {"bands": ",".join(task.bands)})


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: prints a summary line and a JSON line; bad input prints ``error: ...``, exits 2."""
    return run_prediction(APP, argv)


if __name__ == "__main__":
    raise SystemExit(main())
