"""Shared helpers for detection tests: a chip dataset of boxes written directly in the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apps.foundation.chips import (
    BOX_COLUMNS, ChipPreparation, ChipRecord, save_scene_boxes, scene_array_paths, scene_array_writer, write_dataset_index,
)

CLASSES = ("red", "green")


def make_box_dataset(root: Path, chips_per_scene: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Three scenes (train, val, test) of ``size`` px chips on a grey ground, each chip with three squares
    12-20 px of class 0 (red) or 1 (green) painted in that colour; every third chip also holds an
    ignored (difficult) square. Returns ``root``."""
    rng = np.random.default_rng(seed)
    records, scenes = [], {}
    for s, split in enumerate(("train", "val", "test")):
        name = f"scene_{s}"
        images = np.full((chips_per_scene, 3, size, size), 60, np.uint8)
        rows = []
        for i in range(chips_per_scene):
            for k in range(3 + (i % 3 == 0)):
                side = int(rng.integers(12, 21))
                x, y = (int(v) for v in rng.integers(0, size - side, 2))
                label = int(rng.integers(0, 2))
                images[i, label, y:y + side, x:x + side] = 230
                rows.append([i, x, y, x + side, y + side, label, int(k == 3)])
        with scene_array_writer(Path(root), name, {"image": images.shape}) as (writers, tmp):
            writers["image"].append(images)
            save_scene_boxes(tmp, "boxes", np.array(rows, dtype=np.float32))
        for i in range(chips_per_scene):
            records.append(ChipRecord(f"{name}_{i}", split, name, i, (name,), i * size, 0, size, size, "",
                                      (1.0, 0.0, float(i * size), 0.0, 1.0, 0.0), 0.0, {}))
        scenes[name] = {"splits": {split: chips_per_scene},
                        "arrays": {**scene_array_paths(name, ["image"]), "boxes": f"scenes/{name}/boxes.npy"}}
    arrays = {"image": {"kind": "image", "channels": 3, "bands": ["R", "G", "B"]},
              "boxes": {"kind": "boxes", "columns": list(BOX_COLUMNS)}}
    write_dataset_index(Path(root), records, scenes, CLASSES, arrays, ChipPreparation(chip_size=size))
    return Path(root)


def tiny_retinanet(num_classes: int) -> dict:
    """A RetinaNet with a ResNet-18 backbone (mmdet's retinanet_r18_fpn_1x_coco, random init): the model
    config the detection task builds, as a network ``_target_`` returns it."""
    import mmdet
    from mmengine.config import Config

    path = Path(mmdet.__file__).parent / ".mim" / "configs" / "retinanet" / "retinanet_r18_fpn_1x_coco.py"
    model = Config.fromfile(str(path)).model.to_dict()
    model["backbone"]["init_cfg"] = None
    model["bbox_head"]["num_classes"] = num_classes
    return model
