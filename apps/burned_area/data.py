"""Burned-area chips: one 3-band input set (normalized RGB or TCI) and the burned/unburned mask."""

from __future__ import annotations

from apps.core.tasks.data import ChipDataModule
from apps.foundation.errors import InputError

INPUT_SETS = ("normalized", "tci")


class BurnedAreaDataModule(ChipDataModule):
    """Batches ``{"image": (B, 3, H, W) float in [0, 1], "mask": (B, H, W) int64}`` from a chip
    dataset made by ``python -m data_prep.burned_area``; ``input_set`` picks the image chips.
    """

    def __init__(self, root: str, input_set: str = "normalized", batch_size: int = 8, num_workers: int = 2,
                 augment: bool = True) -> None:
        if input_set not in INPUT_SETS:
            raise InputError(f"data.input_set={input_set!r}: expected one of {', '.join(INPUT_SETS)}")
        super().__init__(root, {"image": input_set}, batch_size=batch_size, num_workers=num_workers, augment=augment)
