"""Detection chips as samples of boxes, augmented with MMDetection's box-aware transforms."""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from apps.core.tasks.data import ChipDataModule, SplitArrays
from apps.core.tasks.base import plain
from apps.foundation.chips import ChipDataset, chip_boxes
from apps.foundation.errors import InputError

#: The default training augmentation: the eight flips and 90-degree turns of the square, uniformly.
DIHEDRAL = ({"type": "RandomFlip", "prob": [0.25, 0.25, 0.25], "direction": ["horizontal", "vertical", "diagonal"]},)


def _tuples(value: Any, key: str = "") -> Any:
    """YAML lists as the tuples mmdet's transforms assert (sizes, ranges, pad values); RandomFlip's
    ``prob`` and ``direction`` stay lists, as it requires."""
    if isinstance(value, Mapping):
        return {k: _tuples(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and key not in ("prob", "direction"):
        return tuple(_tuples(v) for v in value)
    return value


def build_transforms(configs: Sequence[Mapping[str, Any]]) -> list:
    """mmdet transform objects from their configs (``{"type": "RandomFlip", ...}``, as in mmdet's
    ``train_pipeline`` without the loading and packing steps)."""
    if not configs:
        return []
    from mmdet.registry import TRANSFORMS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    built = []
    for config in configs:
        try:
            built.append(TRANSFORMS.build(_tuples(dict(config))))
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise InputError(f"data.train_transforms: cannot build {dict(config)} ({exc})") from None
    return built


def collate_detection(samples: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Samples -> a batch of lists, one entry per sample (images may differ in size)."""
    return {key: [sample[key] for sample in samples] for key in samples[0]}


class BoxChipSplit(SplitArrays):
    """One split of a detection chip dataset as samples ``{"image": float (C, H, W) in [0, 1],
    "boxes": float (N, 4) xyxy px, "labels": int64 (N,), "ignore": bool (N,), "index": int}``.

    ``transforms`` are mmdet transform objects applied in order to mmdet's results dict (``img``
    (H, W, C) uint8, ``gt_bboxes``, ``gt_bboxes_labels``, ``gt_ignore_flags``); a transform that mixes
    images (Mosaic, MixUp) gets the other samples it asks for in ``mix_results``, as mmdet's
    MultiImageMixDataset does. Assigning ``transforms`` changes the augmentation from the next
    epoch on (the data module does not keep loader workers between epochs).
    """

    def __init__(self, chips: ChipDataset, split: str, image: str = "image", boxes: str = "boxes",
                 transforms: Sequence = ()) -> None:
        chips.require_array(image)
        if chips.require_array(boxes).get("kind") != "boxes":
            raise InputError(f"chip dataset {chips.root}: array '{boxes}' is not of kind 'boxes'")
        super().__init__(chips, split)
        self.image, self.boxes = image, boxes
        self.transforms = list(transforms)

    def objects(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Chip ``i``'s boxes (N, 4) xyxy px, labels (N,) and ignore flags (N,)."""
        record = self.records[i]
        return chip_boxes(self._array(record.scene, self.boxes), record.index)

    def results(self, i: int) -> dict[str, Any]:
        """Chip ``i`` as mmdet's results dict, before any transform."""
        from mmdet.structures.bbox import HorizontalBoxes

        record = self.records[i]
        image = np.ascontiguousarray(self._array(record.scene, self.image)[record.index].transpose(1, 2, 0))
        boxes, labels, ignore = self.objects(i)
        shape = image.shape[:2]
        return {"img": image, "img_shape": shape, "ori_shape": shape, "img_id": i,
                "gt_bboxes": HorizontalBoxes(boxes.reshape(-1, 4)), "gt_bboxes_labels": labels, "gt_ignore_flags": ignore}

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not self.transforms:
            return self._sample(i, self.results(i))
        for _ in range(100):  # a transform may reject a sample (no box left): mmdet draws another
            results = self.results(i)
            for transform in self.transforms:
                if hasattr(transform, "get_indexes"):
                    unmixed = _Untransformed(self)
                    indexes = transform.get_indexes(unmixed)
                    indexes = indexes if isinstance(indexes, (list, tuple)) else [indexes]
                    results["mix_results"] = [unmixed[j] for j in indexes]
                results = transform(results)
                if results is None:
                    break
            if results is not None:
                results.pop("mix_results", None)
                return self._sample(i, results)
            i = random.randrange(len(self))
        raise InputError(f"data.train_transforms: rejected 100 samples in a row ({self.chips.root})")

    @staticmethod
    def _sample(i: int, results: Mapping[str, Any]) -> dict[str, Any]:
        image = np.ascontiguousarray(np.asarray(results["img"]).transpose(2, 0, 1))
        boxes = results["gt_bboxes"]
        boxes = boxes.tensor if hasattr(boxes, "tensor") else torch.as_tensor(np.asarray(boxes))
        return {
            "image": torch.from_numpy(image).float().div_(255.0),
            "boxes": boxes.float().reshape(-1, 4),
            "labels": torch.as_tensor(np.asarray(results["gt_bboxes_labels"]), dtype=torch.int64),
            "ignore": torch.as_tensor(np.asarray(results["gt_ignore_flags"]), dtype=torch.bool),
            "index": i,
        }


class _Untransformed:
    """A split's chips before any transform, where a mixing transform's ``get_indexes`` draws them from
    (mmdet's MultiImageMixDataset hands it its inner dataset; the split itself would mix again, without
    end). Indexes wrap around: mmdet's Mosaic and MixUp draw ``random.randint(0, len)``, one past the end."""

    def __init__(self, split: BoxChipSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.split.results(i % len(self.split))


class DetectionDataModule(ChipDataModule):
    """Batches of lists (``collate_detection``) from a chip dataset with an ``image`` and a ``boxes``
    array (``python -m data_prep.detection``). ``train_transforms`` are mmdet transform configs for
    the training split (None: the eight dihedral flips, ``DIHEDRAL``); val and test are not transformed.
    """

    collate_fn = staticmethod(collate_detection)
    persistent_workers = False

    def __init__(self, root: str, batch_size: int = 8, num_workers: int = 2,
                 train_transforms: Sequence[Mapping[str, Any]] | None = None, image: str = "image",
                 boxes: str = "boxes") -> None:
        super().__init__(root, {"image": image}, batch_size=batch_size, num_workers=num_workers, augment=True,
                         label=boxes)
        self.train_transforms = [dict(t) for t in plain(DIHEDRAL if train_transforms is None else train_transforms)]

    def task_arguments(self) -> dict:
        """The dataset's object classes (``class_names``): the detector's head is sized by them."""
        return {"class_names": ChipDataset(self.root).classes}

    def make_split(self, chips: ChipDataset, split: str) -> Dataset:
        transforms = build_transforms(self.train_transforms) if split == "train" else []
        return BoxChipSplit(chips, split, self.images["image"], self.label, transforms)
