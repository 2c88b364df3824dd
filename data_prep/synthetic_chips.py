"""Chip datasets made directly in memory (no rasters involved), for tests and benchmarks of the
training core: textured chips, each with one disc of class 1 (burned, or changed between dates)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from apps.foundation.chips import ChipPreparation, ChipRecord, save_scene_arrays, write_dataset_index

SCENE_SPLITS = {"scene_a": "train", "scene_b": "train", "scene_c": "val", "scene_d": "test"}
PAIR_COMBINATIONS = {"nirrg": 3, "ndvi": 1, "evi": 1}
"""Band combinations of the pair datasets, as data_prep.deforestation names them, and their channels."""


def _write_disc_dataset(root: Path, chips_per_scene: int, size: int, seed: int, splits: Mapping[str, str],
                        classes: tuple[str, str], descriptions: Mapping[str, dict],
                        make_arrays: Callable[[np.random.Generator, np.ndarray], dict[str, np.ndarray]]) -> Path:
    """Per scene, (N, size, size) disc masks and the image arrays ``make_arrays(rng, masks)`` makes of
    them, written as a complete chip dataset with ``descriptions`` of the image arrays."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    records, scenes = [], {}
    yy, xx = np.mgrid[:size, :size]
    for scene, split in splits.items():
        masks = np.zeros((chips_per_scene, size, size), np.uint8)
        for i in range(chips_per_scene):
            cy, cx = rng.uniform(size * 0.25, size * 0.75, 2)
            radius = rng.uniform(size * 0.2, size * 0.35)
            masks[i] = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius ** 2
        arrays = save_scene_arrays(root, scene, {**make_arrays(rng, masks), "mask": masks})
        scenes[scene] = {"splits": {split: chips_per_scene}, "arrays": arrays}
        for i in range(chips_per_scene):
            positive = float(masks[i].mean())
            records.append(ChipRecord(
                chip_id=f"{scene}_{i:04d}", split=split, scene=scene, index=i, sources=(f"{scene}/B04.tif",),
                col_off=i * size, row_off=0, width=size, height=size, crs="EPSG:32610",
                transform=(10.0, 0.0, 500000.0 + i * size * 10, 0.0, -10.0, 4200000.0),
                nodata_fraction=0.0, class_fractions={classes[0]: 1 - positive, classes[1]: positive}))
    write_dataset_index(root, records, scenes, list(classes), {**descriptions, "mask": {"kind": "label"}},
                        ChipPreparation(chip_size=size))
    return root


def make_chip_dataset(root: Path, chips_per_scene: int = 8, size: int = 32, seed: int = 0,
                      splits: dict[str, str] = SCENE_SPLITS) -> Path:
    """Write a complete burned-area-like chip dataset: bright textured chips with a dark disc
    (class 1) in each; arrays ``normalized``, ``tci`` (N, 3, size, size) and ``mask`` (N, size, size)."""
    def burned_images(rng: np.random.Generator, masks: np.ndarray) -> dict[str, np.ndarray]:
        base = rng.normal(170, 25, (len(masks), 3, size, size))
        images = np.clip(base - masks[:, None] * 110, 1, 255).astype(np.uint8)
        return {"normalized": images, "tci": images[:, ::-1].copy()}

    descriptions = {"normalized": {"kind": "image", "channels": 3, "bands": ["B04", "B03", "B02"]},
                    "tci": {"kind": "image", "channels": 3}}
    return _write_disc_dataset(root, chips_per_scene, size, seed, splits, ("unburned", "burned"), descriptions,
                               burned_images)


def make_pair_chip_dataset(root: Path, chips_per_scene: int = 8, size: int = 32, seed: int = 0,
                           splits: dict[str, str] = SCENE_SPLITS) -> Path:
    """Write a complete change-detection chip dataset: textured before/after pairs whose after image
    is darker inside a disc (class 1, change); arrays ``before_<combo>``, ``after_<combo>``
    (N, C, size, size) for each of PAIR_COMBINATIONS and ``mask`` (N, size, size)."""
    def pair_images(rng: np.random.Generator, masks: np.ndarray) -> dict[str, np.ndarray]:
        arrays = {}
        for combo, channels in PAIR_COMBINATIONS.items():
            before = rng.normal(170, 20, (len(masks), channels, size, size))
            after = before + rng.normal(0, 10, before.shape) - masks[:, None] * 100
            arrays[f"before_{combo}"] = np.clip(before, 1, 255).astype(np.uint8)
            arrays[f"after_{combo}"] = np.clip(after, 1, 255).astype(np.uint8)
        return arrays

    descriptions = {f"{date}_{combo}": {"kind": "image", "channels": channels, "date": date, "combination": combo}
                    for combo, channels in PAIR_COMBINATIONS.items() for date in ("before", "after")}
    return _write_disc_dataset(root, chips_per_scene, size, seed, splits, ("no_change", "change"), descriptions,
                               pair_images)
