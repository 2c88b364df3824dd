"""Split stage: assign the chips of stored scenes to train/val/test and write the dataset index.

Two rules, each aiming at about ``val_fraction`` and ``test_fraction`` of all chips in val and test:

- ``scenes``: whole scenes, never divided between splits. Scenes are taken smallest first, into test
  until it holds about ``test_fraction`` of all chips, then into val; the rest is train (as in the
  burned-area study: scenes with few chips go to test). ``fixed`` pins chosen scenes to a split.
  Needs at least three scenes with chips.
- ``blocks``: square blocks of all scenes in one seeded shuffle (``data_prep.spatial_split``); a chip
  takes the split of the block holding its centre and is dropped when it overlaps a block of another
  split, so chips of different splits never share a pixel. Works on a single scene.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np

from apps.foundation.errors import InputError
from apps.foundation.chips import SPLITS, ChipPreparation, ChipRecord, write_dataset_index
from data_prep.chipping import SceneChips
from data_prep.spatial_split import RasterWindows, split_windows

log = logging.getLogger(__name__)

SPLIT_METHODS = ("scenes", "blocks")


@dataclass(frozen=True)
class BlockSplitSettings:
    """Shares of chips for val and test (0..1; the rest is train), assigned by square blocks of
    ``block_size_px`` px (None: 4 x chip size) of all scenes in one shuffle seeded by ``seed``."""

    val_fraction: float = 0.2
    test_fraction: float = 0.2
    block_size_px: int | None = None
    seed: int = 0

    def __post_init__(self):
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise InputError(f"split.{name}: must be between 0 and 1, got {value}")
        if self.val_fraction + self.test_fraction >= 1:
            raise InputError(
                f"split: val_fraction + test_fraction must be below 1, got {self.val_fraction + self.test_fraction}"
            )
        if self.block_size_px is not None and self.block_size_px < 1:
            raise InputError(f"split.block_size_px: must be a positive number of pixels, got {self.block_size_px}")

    @property
    def fractions(self) -> dict[str, float]:
        """Split -> target share of all chips, in SPLITS order."""
        return {"train": 1 - self.val_fraction - self.test_fraction, "val": self.val_fraction,
                "test": self.test_fraction}

    def block_size(self, chip_size: int) -> int:
        """Side of a block, px."""
        return int(self.block_size_px) if self.block_size_px is not None else 4 * chip_size


@dataclass(frozen=True)
class SplitSettings(BlockSplitSettings):
    """The split rule: ``method`` ``scenes`` or ``blocks`` (see the module) with the shares and block
    settings of BlockSplitSettings; ``fixed``: scene name -> split pins (``scenes`` only)."""

    method: str = "scenes"
    fixed: Mapping[str, str] = field(default_factory=dict)
    methods: ClassVar[tuple[str, ...]] = SPLIT_METHODS
    """The methods a prep offers (hints name only these)."""

    def __post_init__(self):
        super().__post_init__()
        if self.method not in self.methods:
            raise InputError(f"split.method: unknown method {self.method!r} (expected one of {', '.join(self.methods)})")
        if self.fixed and self.method != "scenes":
            raise InputError(f"split.fixed: pins whole scenes, only with split.method=scenes (got {self.method})")
        for scene, split in self.fixed.items():
            if split not in SPLITS:
                raise InputError(f"split.fixed.{scene}: unknown split {split!r} (expected one of {', '.join(SPLITS)})")


def assign_scene_splits(chip_counts: Mapping[str, int], settings: SplitSettings = SplitSettings()) -> dict[str, str]:
    """Scene -> split by the ``scenes`` rule, for scenes with chips (scene -> number of chips, all > 0).

    Every split gets at least one scene; raises InputError when there are too few scenes for that.
    """
    unknown = sorted(set(settings.fixed) - set(chip_counts))
    if unknown:
        raise InputError(f"split.fixed: no chips for scene(s) {', '.join(unknown)} (known: {', '.join(sorted(chip_counts))})")
    assignment = dict(settings.fixed)
    free = sorted((s for s in chip_counts if s not in assignment), key=lambda s: (chip_counts[s], s))
    total = sum(chip_counts.values())
    for split, fraction in (("test", settings.test_fraction), ("val", settings.val_fraction)):
        target = fraction * total
        held = sum(chip_counts[s] for s, a in assignment.items() if a == split)
        still_empty = [s for s in ("train", "val") if s != split and s not in assignment.values()]
        while len(free) > len(still_empty) and (
            split not in assignment.values() or abs(held + chip_counts[free[0]] - target) < abs(held - target)
        ):
            scene = free.pop(0)
            assignment[scene] = split
            held += chip_counts[scene]
    assignment.update({scene: "train" for scene in free})
    empty = [s for s in SPLITS if s not in assignment.values()]
    if empty:
        raise InputError(
            f"only {len(chip_counts)} usable scene(s) with chips ({', '.join(sorted(chip_counts)) or 'none'}): "
            f"need at least one scene per split, {', '.join(empty)} left empty"
            + (" (or split.method=blocks)" if "blocks" in settings.methods else "")
        )
    return assignment


def split_by_scenes(scenes: Sequence[SceneChips], settings: SplitSettings) -> dict[str, list[ChipRecord]]:
    """Scene -> its chips with their split by the ``scenes`` rule (scenes with chips only)."""
    assignment = assign_scene_splits({s.scene: len(s.records) for s in scenes}, settings)
    return {s.scene: [replace(r, split=assignment[s.scene]) for r in s.records] for s in scenes}


def split_by_blocks(scenes: Sequence[SceneChips], chip_size: int,
                    settings: BlockSplitSettings) -> dict[str, list[ChipRecord]]:
    """Scene -> its chips with their split by the ``blocks`` rule, chips of ``chip_size`` px; chips
    overlapping a block of another split are left out. InputError when a split gets no chip."""
    block_size = settings.block_size(chip_size)
    rasters = {
        s.scene: RasterWindows(np.array([r.row_off for r in s.records], np.int64),
                               np.array([r.col_off for r in s.records], np.int64), chip_size, s.height, s.width)
        for s in scenes
    }
    assigned = split_windows(rasters, block_size, settings.fractions, settings.seed)
    result = {}
    for s in scenes:
        split = assigned[s.scene]
        result[s.scene] = [replace(r, split=SPLITS[int(i)]) for r, i, keep in zip(s.records, split.split, split.keep)
                           if keep]
        log.info("split %s: %d of %d chips kept clear of other splits' blocks", s.scene, len(result[s.scene]),
                 len(s.records))
    counts = {split: sum(r.split == split for records in result.values() for r in records) for split in SPLITS}
    empty = [split for split, n in counts.items() if n == 0]
    if empty:
        raise InputError(f"split: no chip in {', '.join(empty)} (chips per split {counts}; use more or larger scenes, "
                         f"or another split.block_size_px than {block_size} or split.seed)")
    return result


def no_chips_error(skipped: Mapping[str, str]) -> InputError:
    """The one-line error of a prep where no scene yields a chip: each scene and why."""
    return InputError("no scene yields a chip (" + "; ".join(f"{s}: {r}" for s, r in skipped.items()) + ")")


def write_split_dataset(
    out_root: Path,
    scenes: Sequence[SceneChips],
    settings: SplitSettings,
    classes: Sequence[str],
    arrays: Mapping[str, Mapping],
    preparation: ChipPreparation = ChipPreparation(),
    skipped: Mapping[str, str] | None = None,
) -> Path:
    """Split ``scenes`` (as stored by the chip stage) by ``settings.method`` and write ``manifest.csv`` and
    ``dataset.json``; returns the path of ``dataset.json``.

    ``skipped``: scene -> why, for scenes that yielded no chip before the chip stage stored any. Scenes
    stored without kept chips join them; all are listed in ``preparation.skipped`` (the attrs). Each scene's entry in
    ``dataset.json`` counts its chips per split (``splits``). Raises InputError when no scene has a chip.
    """
    skipped = dict(skipped or {})
    skipped.update({s.scene: f"chip: no chip kept of {s.windows_total} windows" for s in scenes if not s.records})
    for scene, reason in skipped.items():
        log.warning("scene %s: skipped, it yields no chip (%s)", scene, reason)
    usable = [s for s in scenes if s.records]
    if not usable:
        raise no_chips_error(skipped)
    if settings.method == "scenes":
        split_records = split_by_scenes(usable, settings)
    else:
        split_records = split_by_blocks(usable, usable[0].records[0].width, settings)
    records = [r for s in usable for r in split_records[s.scene]]
    scene_index = {
        s.scene: {"splits": {split: sum(r.split == split for r in split_records[s.scene]) for split in SPLITS},
                  "chips": len(s.records), "windows": s.windows_total, "arrays": s.arrays,
                  "sources": list(s.records[0].sources)}
        for s in usable
    }
    for split in SPLITS:
        members = sorted(s for s, info in scene_index.items() if info["splits"][split])
        log.info("split %s: %d chips from %s", split, sum(r.split == split for r in records), ", ".join(members))
    path = write_dataset_index(out_root, records, scene_index, classes, arrays, replace(preparation, skipped=skipped))
    log.info("dataset complete: %s (%d of %d scenes; skipped: %s)", path, len(usable), len(usable) + len(skipped),
             ", ".join(f"{s} ({r})" for s, r in skipped.items()) or "none")
    return path
