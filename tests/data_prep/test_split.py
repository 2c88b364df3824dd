"""Split stage: whole scenes per split (small scenes to test, pins, too few scenes), spatial blocks, the written index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apps.foundation.errors import InputError
from apps.foundation.chips import SPLITS, ChipDataset, ChipPreparation, ChipRecord, save_scene_arrays
from data_prep.chipping import SceneChips
from data_prep.split import SplitSettings, assign_scene_splits, write_split_dataset


@pytest.mark.parametrize("seed", range(20))
def test_every_scene_in_exactly_one_split_and_every_split_filled(seed):
    rng = np.random.default_rng(seed)
    counts = {f"s{i}": int(rng.integers(1, 200)) for i in range(int(rng.integers(3, 12)))}
    assignment = assign_scene_splits(counts, SplitSettings())
    assert set(assignment) == set(counts)
    assert set(assignment.values()) == set(SPLITS)
    # Scenes with few chips go to test: none in test has more chips than any in train.
    test_max = max(counts[s] for s, a in assignment.items() if a == "test")
    assert test_max <= min(counts[s] for s, a in assignment.items() if a == "train")


def test_shares_follow_the_fractions():
    counts = {"a": 5, "b": 8, "c": 20, "d": 30, "e": 40, "f": 50}
    assignment = assign_scene_splits(counts, SplitSettings(val_fraction=0.2, test_fraction=0.2))
    assert assignment == {"a": "test", "b": "test", "c": "test", "d": "val", "e": "train", "f": "train"}


def test_fixed_scenes_keep_their_split():
    counts = {"a": 5, "b": 8, "c": 20, "big": 300}
    assignment = assign_scene_splits(counts, SplitSettings(fixed={"big": "test"}))
    assert assignment["big"] == "test" and set(assignment.values()) == set(SPLITS)
    with pytest.raises(InputError, match="split.fixed: no chips for scene"):
        assign_scene_splits(counts, SplitSettings(fixed={"zzz": "val"}))
    with pytest.raises(InputError, match="unknown split 'dev'"):
        SplitSettings(fixed={"a": "dev"})


def test_too_few_scenes():
    with pytest.raises(InputError, match=r"only 2 usable scene\(s\) with chips \(a, b\).*test left empty"):
        assign_scene_splits({"a": 3, "b": 9}, SplitSettings())


@pytest.mark.parametrize("kwargs", [{"val_fraction": 0}, {"test_fraction": 1.2}, {"val_fraction": 0.5, "test_fraction": 0.5},
                                    {"method": "random"}, {"block_size_px": 0},
                                    {"method": "blocks", "fixed": {"a": "test"}}])
def test_bad_fractions(kwargs):
    with pytest.raises(InputError, match="split"):
        SplitSettings(**kwargs)


def _scene(root, name: str, n: int, offsets: list[tuple[int, int]] | None = None, size: int = 4,
           raster: tuple[int, int] = (12, 12)) -> SceneChips:
    """A stored scene of ``n`` chips of ``size`` px at ``offsets`` (row, col; default all (0, 0)) on a ``raster`` grid."""
    arrays = save_scene_arrays(root, name, {"mask": np.zeros((n, size, size), np.uint8)})
    offsets = offsets or [(0, 0)] * n
    records = [ChipRecord(f"{name}_{i}", "", name, i, ("src",), col, row, size, size, "EPSG:32610",
                          (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), 0.0, {"unburned": 0.5, "burned": 0.5})
               for i, (row, col) in enumerate(offsets)]
    return SceneChips(name, records, arrays, 9, None, *raster)


def test_written_dataset_skips_scenes_without_chips(tmp_path):
    scenes = [_scene(tmp_path, "a", 2), _scene(tmp_path, "b", 3), _scene(tmp_path, "c", 9), _scene(tmp_path, "d", 0)]
    write_split_dataset(tmp_path, scenes, SplitSettings(), ["unburned", "burned"], {"mask": {"kind": "label"}},
                        ChipPreparation(chip_size=4), skipped={"e": "label: no polygon overlaps the raster"})
    dataset = ChipDataset(tmp_path)
    by_scene = {}
    for record in dataset.records:
        by_scene.setdefault(record.scene, set()).add(record.split)
    assert all(len(splits) == 1 for splits in by_scene.values()) and "d" not in by_scene
    index = json.loads((tmp_path / "dataset.json").read_text())
    assert index["attrs"]["skipped"] == {"e": "label: no polygon overlaps the raster", "d": "chip: no chip kept of 9 windows"}
    assert index["attrs"]["chip_size"] == 4 and index["splits"] == {"train": 9, "val": 3, "test": 2}
    assert index["scenes"]["a"]["splits"] == {"train": 0, "val": 0, "test": 2} and index["scenes"]["c"]["chips"] == 9


def test_too_few_scenes_writes_no_index(tmp_path):
    scenes = [_scene(tmp_path, "a", 2), _scene(tmp_path, "b", 0)]
    with pytest.raises(InputError, match="need at least one scene per split"):
        write_split_dataset(tmp_path, scenes, SplitSettings(), ["unburned", "burned"], {})
    assert not (tmp_path / "dataset.json").exists()


def test_no_scene_with_chips_is_one_line_with_each_reason(tmp_path):
    with pytest.raises(InputError, match=r"^no scene yields a chip \(a: label: no polygon overlaps the raster; "
                                         r"b: chip: no chip kept of 9 windows\)$"):
        write_split_dataset(tmp_path, [_scene(tmp_path, "b", 0)], SplitSettings(), ["unburned", "burned"], {},
                            skipped={"a": "label: no polygon overlaps the raster"})
    assert not (tmp_path / "dataset.json").exists()


def windows_overlap(a: ChipRecord, b: ChipRecord) -> bool:
    return (a.row_off < b.row_off + b.height and b.row_off < a.row_off + a.height
            and a.col_off < b.col_off + b.width and b.col_off < a.col_off + a.width)


@pytest.mark.parametrize("seed", range(5))
def test_blocks_split_one_scene_without_overlap_across_splits(tmp_path, seed):
    # Chips of 8 px every 6 px (25 % overlap) over a 96 x 96 raster, blocks of 16 px.
    offsets = [(r, c) for r in range(0, 89, 6) for c in range(0, 89, 6)]
    scene = _scene(tmp_path, "only", len(offsets), offsets, size=8, raster=(96, 96))
    settings = SplitSettings(method="blocks", block_size_px=16, seed=seed)
    write_split_dataset(tmp_path, [scene], settings, ["unburned", "burned"], {"mask": {"kind": "label"}})
    dataset = ChipDataset(tmp_path)
    records = dataset.records
    assert {r.split for r in records} == set(SPLITS) and len(records) < len(offsets)
    for a in records:
        assert not any(windows_overlap(a, b) for b in records if b.split != a.split), a.chip_id
    counts = dataset.index["splits"]
    assert dataset.index["scenes"]["only"]["splits"] == counts and dataset.index["scenes"]["only"]["chips"] == len(offsets)
    assert counts["train"] > counts["val"] and counts["train"] > counts["test"]
    again = tmp_path / "again"
    write_split_dataset(again, [scene], settings, ["unburned", "burned"], {"mask": {"kind": "label"}})
    assert [(r.chip_id, r.split) for r in ChipDataset(again).records] == [(r.chip_id, r.split) for r in records]


def test_blocks_too_large_for_a_split_is_one_line(tmp_path):
    scene = _scene(tmp_path, "only", 4, [(0, 0), (0, 8), (8, 0), (8, 8)], size=8, raster=(16, 16))
    with pytest.raises(InputError, match=r"split: no chip in .*another split.block_size_px than 32 or split.seed\)"):
        write_split_dataset(tmp_path, [scene], SplitSettings(method="blocks"), ["unburned", "burned"], {})
