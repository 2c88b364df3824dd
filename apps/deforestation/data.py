"""Deforestation chips: before/after images of one or more band combinations and the change mask."""

from __future__ import annotations

from typing import Sequence

from apps.core.tasks.data import ChipDataModule
from apps.foundation.errors import InputError

#: Band combinations that the prep stores per date, and their channels.
BAND_COMBINATIONS = {"nirrg": 3, "ndvi": 1, "evi": 1}


def input_channels(bands: Sequence[str]) -> int:
    """Channels of one date's image when ``bands`` (combination names) are stacked."""
    unknown = [b for b in bands if b not in BAND_COMBINATIONS]
    if unknown or not bands:
        raise InputError(f"data.bands={list(bands)}: expected one or more of {', '.join(BAND_COMBINATIONS)}")
    return sum(BAND_COMBINATIONS[b] for b in bands)


class DeforestationDataModule(ChipDataModule):
    """Batches ``{"before": (B, C, H, W), "after": (B, C, H, W) float in [0, 1], "mask": (B, H, W) int64}``
    from a chip dataset made by ``python -m data_prep.deforestation``; ``bands`` lists the band
    combinations stacked along channels (``[nirrg]``: C = 3; ``[nirrg, ndvi, evi]``: C = 5).
    """

    def __init__(self, root: str, bands: Sequence[str] = ("nirrg",), batch_size: int = 8, num_workers: int = 2,
                 augment: bool = True) -> None:
        input_channels(bands)
        images = {date: [f"{date}_{b}" for b in bands] for date in ("before", "after")}
        super().__init__(root, images, batch_size=batch_size, num_workers=num_workers, augment=augment)
