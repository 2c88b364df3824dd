"""Split stage: assign whole scenes to train/val/test and write the dataset index.

A scene is never divided between splits. As in the burned-area study, scenes with few chips go
to test and scenes with many chips to train/val: scenes are taken smallest first, into test
until it holds about ``test_fraction`` of all chips, then into val until it holds about
``val_fraction``; the rest is train. ``fixed`` pins chosen scenes to a split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

from apps.foundation.errors import InputError
from apps.foundation.chips import SPLITS, write_dataset_index
from data_prep.chipping import SceneChips

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitSettings:
    """Target shares of all chips for val and test (0..1), and scene name -> split pins."""

    val_fraction: float = 0.2
    test_fraction: float = 0.2
    fixed: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise InputError(f"split.{name}: must be between 0 and 1, got {value}")
        if self.val_fraction + self.test_fraction >= 1:
            raise InputError(
                f"split: val_fraction + test_fraction must be below 1, got {self.val_fraction + self.test_fraction}"
            )
        for scene, split in self.fixed.items():
            if split not in SPLITS:
                raise InputError(f"split.fixed.{scene}: unknown split {split!r} (expected one of {', '.join(SPLITS)})")


def assign_splits(chip_counts: Mapping[str, int], settings: SplitSettings = SplitSettings()) -> dict[str, str]:
    """Scene -> split for scenes with chips (scene -> number of chips, all > 0).

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
        )
    return assignment


def write_split_dataset(
    out_root: Path,
    scenes: Sequence[SceneChips],
    settings: SplitSettings,
    classes: Sequence[str],
    arrays: Mapping[str, Mapping],
    attrs: Mapping | None = None,
) -> Path:
    """Split ``scenes`` (as stored by the chip stage) and write ``manifest.csv`` and ``dataset.json``.

    Scenes without kept chips are reported and left out (listed in attrs ``left_out``).
    Returns the path of ``dataset.json``.
    """
    usable = [s for s in scenes if s.records]
    left_out = {s.scene: f"no chip kept of {s.windows_total} windows" for s in scenes if not s.records}
    for scene, reason in left_out.items():
        log.warning("scene %s: %s; left out of the dataset", scene, reason)
    assignment = assign_splits({s.scene: len(s.records) for s in usable}, settings)
    records = [replace(r, split=assignment[s.scene]) for s in usable for r in s.records]
    scene_index = {
        s.scene: {"split": assignment[s.scene], "chips": len(s.records), "windows": s.windows_total,
                  "arrays": s.arrays, "sources": list(s.records[0].sources)}
        for s in usable
    }
    for split in SPLITS:
        members = [s for s, a in assignment.items() if a == split]
        log.info("split %s: %d chips from %s", split, sum(len(x.records) for x in usable if x.scene in members),
                 ", ".join(sorted(members)))
    return write_dataset_index(out_root, records, scene_index, classes, arrays,
                               {**(attrs or {}), "left_out": left_out})
