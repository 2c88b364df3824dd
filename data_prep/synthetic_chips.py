"""Chip datasets made directly in memory (no rasters involved), for tests and benchmarks of the
training core: bright textured chips, each with one dark disc of class 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apps.foundation.chips import ChipRecord, save_scene_arrays, write_dataset_index

SCENE_SPLITS = {"scene_a": "train", "scene_b": "train", "scene_c": "val", "scene_d": "test"}


def make_chip_dataset(root: Path, chips_per_scene: int = 8, size: int = 32, seed: int = 0,
                      splits: dict[str, str] = SCENE_SPLITS) -> Path:
    """Write a complete burned-area-like chip dataset: bright textured chips with a dark disc
    (class 1) in each; arrays ``normalized``, ``tci`` (N, 3, size, size) and ``mask`` (N, size, size)."""
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
        base = rng.normal(170, 25, (chips_per_scene, 3, size, size))
        images = np.clip(base - masks[:, None] * 110, 1, 255).astype(np.uint8)
        arrays = save_scene_arrays(root, scene, {"normalized": images, "tci": images[:, ::-1].copy(), "mask": masks})
        scenes[scene] = {"split": split, "chips": chips_per_scene, "arrays": arrays}
        for i in range(chips_per_scene):
            burned = float(masks[i].mean())
            records.append(ChipRecord(
                chip_id=f"{scene}_{i:04d}", split=split, scene=scene, index=i, sources=(f"{scene}/B04.tif",),
                col_off=i * size, row_off=0, width=size, height=size, crs="EPSG:32610",
                transform=(10.0, 0.0, 500000.0 + i * size * 10, 0.0, -10.0, 4200000.0),
                nodata_fraction=0.0, class_fractions={"unburned": 1 - burned, "burned": burned}))
    arrays = {"normalized": {"kind": "image", "channels": 3, "bands": ["B04", "B03", "B02"]},
              "tci": {"kind": "image", "channels": 3}, "mask": {"kind": "label"}}
    write_dataset_index(root, records, scenes, ["unburned", "burned"], arrays, {"chip_size": size})
    return root
