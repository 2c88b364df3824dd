"""Chip datasets as PyTorch datasets and a Lightning DataModule over them."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from apps.foundation.chips import ChipDataset


def random_dihedral(image: np.ndarray, label: np.ndarray, generator: torch.Generator | None = None):
    """The same random flip and 90-degree rotation applied to ``image`` (..., H, W) and ``label`` (H, W).

    One of the 8 symmetries of the square, uniformly; square chips keep their shape.
    """
    k, flip = torch.randint(0, 4, (1,), generator=generator).item(), torch.randint(0, 2, (1,), generator=generator).item()
    if flip:
        image, label = image[..., ::-1], label[..., ::-1]
    if k:
        image, label = np.rot90(image, k, axes=(-2, -1)), np.rot90(label, k, axes=(-2, -1))
    return image, label


class SplitArrays(Dataset):
    """The chips of one split of a chip dataset, with its scenes' arrays opened lazily, so that each
    DataLoader worker maps its own files; subclasses turn a chip into a sample."""

    def __init__(self, chips: ChipDataset, split: str) -> None:
        self.chips = chips
        self.records = chips.split_records(split)
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.records)

    def _array(self, scene: str, name: str) -> np.ndarray:
        key = (scene, name)
        if key not in self._arrays:
            self._arrays[key] = self.chips.open_array(scene, name)
        return self._arrays[key]


class ChipSplit(SplitArrays):
    """One split of a chip dataset as samples ``{key: tensor}``.

    ``images`` maps sample key -> image array name, or a list of names stacked along channels
    (uint8 (C, H, W) -> float32 (C, H, W) in [0, 1]), one tensor per key, so a change-detection
    sample can hold ``before`` and ``after``, each of several band combinations.
    ``label`` names the label array (uint8 (H, W) -> int64 ``mask``).
    With ``augment`` every sample gets one random flip/rotation shared by its images and label.
    """

    def __init__(self, chips: ChipDataset, split: str, images: Mapping[str, str | Sequence[str]],
                 label: str = "mask", augment: bool = False) -> None:
        self.images = {key: [names] if isinstance(names, str) else list(names) for key, names in images.items()}
        for name in (*(n for names in self.images.values() for n in names), label):
            chips.require_array(name)
        super().__init__(chips, split)
        self.label = label
        self.augment = augment

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        record = self.records[i]
        label = np.array(self._array(record.scene, self.label)[record.index])  # copied out of the read-only map
        arrays = [name for names in self.images.values() for name in names]
        stacked = np.concatenate([self._array(record.scene, name)[record.index] for name in arrays])
        if self.augment:
            stacked, label = random_dihedral(stacked, label)
        sample = {"mask": torch.from_numpy(np.ascontiguousarray(label)).long()}
        start = 0
        for key, names in self.images.items():
            channels = sum(self.chips.arrays[name]["channels"] for name in names)
            part = np.ascontiguousarray(stacked[start:start + channels])
            sample[key] = torch.from_numpy(part).float().div_(255.0)
            start += channels
        return sample


class ChipDataModule(pl.LightningDataModule):
    """Train (augmented), val and test loaders over a chip dataset directory ``root``."""

    def __init__(self, root: str, images: Mapping[str, str | Sequence[str]], batch_size: int = 8, num_workers: int = 2,
                 augment: bool = True, label: str = "mask") -> None:
        super().__init__()
        self.root = root
        self.images = dict(images)
        self.label = label
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.splits: dict[str, ChipSplit] = {}

    def preparation(self) -> dict:
        """How the chip dataset was made: its ``dataset.json`` ``attrs`` and ``arrays``."""
        chips = ChipDataset(self.root)
        return {"attrs": chips.attrs, "arrays": chips.arrays}

    def task_arguments(self) -> dict:
        """Task constructor arguments that come from the dataset rather than the config (none here)."""
        return {}

    def make_split(self, chips: ChipDataset, split: str) -> Dataset:
        """The dataset of one split (train augmented when ``augment``)."""
        return ChipSplit(chips, split, self.images, self.label, self.augment and split == "train")

    def setup(self, stage: str | None = None) -> None:
        chips = ChipDataset(self.root)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ("train", "val", "test"))
        for split in wanted:
            if split not in self.splits:
                self.splits[split] = self.make_split(chips, split)

    #: Collate function of the loaders (None: PyTorch's default, stacking equal-shaped tensors).
    collate_fn = None
    #: Keep loader workers between epochs; a data module whose dataset changes between epochs sets False.
    persistent_workers = True

    def _loader(self, split: str, shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=shuffle, sampler=sampler,
                          num_workers=self.num_workers, persistent_workers=self.persistent_workers and self.num_workers > 0,
                          pin_memory=torch.cuda.is_available(), collate_fn=self.collate_fn)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The test split; in a distributed run each process gets a disjoint share and no chip twice
        (Lightning's own sampler would repeat up to world_size - 1 chips), so the test scores of the
        summed confusion matrix are exactly those of one process on the whole split."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return self._loader("test", shuffle=False)
        from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

        sampler = UnrepeatedDistributedSampler(self.splits["test"], num_replicas=trainer.world_size,
                                               rank=trainer.global_rank, shuffle=False)
        return self._loader("test", shuffle=False, sampler=sampler)
