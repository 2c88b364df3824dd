"""Split stage: whole scenes per split, small scenes to test, pins, too few scenes, the written index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apps.foundation.errors import InputError
from apps.foundation.chips import SPLITS, ChipDataset, ChipRecord, save_scene_arrays
from data_prep.chipping import SceneChips
from data_prep.split import SplitSettings, assign_splits, write_split_dataset


@pytest.mark.parametrize("seed", range(20))
def test_every_scene_in_exactly_one_split_and_every_split_filled(seed):
    rng = np.random.default_rng(seed)
    counts = {f"s{i}": int(rng.integers(1, 200)) for i in range(int(rng.integers(3, 12)))}
    assignment = assign_splits(counts, SplitSettings())
    assert set(assignment) == set(counts)
    assert set(assignment.values()) == set(SPLITS)
    # Scenes with few chips go to test: none in test has more chips than any in train.
    test_max = max(counts[s] for s, a in assignment.items() if a == "test")
    assert test_max <= min(counts[s] for s, a in assignment.items() if a == "train")


def test_shares_follow_the_fractions():
    counts = {"a": 5, "b": 8, "c": 20, "d": 30, "e": 40, "f": 50}
    assignment = assign_splits(counts, SplitSettings(val_fraction=0.2, test_fraction=0.2))
    assert assignment == {"a": "test", "b": "test", "c": "test", "d": "val", "e": "train", "f": "train"}


def test_fixed_scenes_keep_their_split():
    counts = {"a": 5, "b": 8, "c": 20, "big": 300}
    assignment = assign_splits(counts, SplitSettings(fixed={"big": "test"}))
    assert assignment["big"] == "test" and set(assignment.values()) == set(SPLITS)
    with pytest.raises(InputError, match="split.fixed: no chips for scene"):
        assign_splits(counts, SplitSettings(fixed={"zzz": "val"}))
    with pytest.raises(InputError, match="unknown split 'dev'"):
        SplitSettings(fixed={"a": "dev"})


def test_too_few_scenes():
    with pytest.raises(InputError, match=r"only 2 usable scene\(s\) with chips \(a, b\).*test left empty"):
        assign_splits({"a": 3, "b": 9}, SplitSettings())


@pytest.mark.parametrize("kwargs", [{"val_fraction": 0}, {"test_fraction": 1.2}, {"val_fraction": 0.5, "test_fraction": 0.5}])
def test_bad_fractions(kwargs):
    with pytest.raises(InputError, match="split"):
        SplitSettings(**kwargs)


def _scene(root, name: str, n: int) -> SceneChips:
    arrays = save_scene_arrays(root, name, {"mask": np.zeros((n, 4, 4), np.uint8)})
    records = [ChipRecord(f"{name}_{i}", "", name, i, "src", 0, 0, 4, 4, "EPSG:32610",
                          (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), 0.0, {"unburned": 0.5, "burned": 0.5})
               for i in range(n)]
    return SceneChips(name, records, arrays, 9, None)


def test_written_dataset_leaves_out_empty_scenes(tmp_path):
    scenes = [_scene(tmp_path, "a", 2), _scene(tmp_path, "b", 3), _scene(tmp_path, "c", 9), _scene(tmp_path, "d", 0)]
    write_split_dataset(tmp_path, scenes, SplitSettings(), ["unburned", "burned"], {"mask": {"kind": "label"}},
                        {"chip_size": 4})
    dataset = ChipDataset(tmp_path)
    by_scene = {}
    for record in dataset.records:
        by_scene.setdefault(record.scene, set()).add(record.split)
    assert all(len(splits) == 1 for splits in by_scene.values()) and "d" not in by_scene
    index = json.loads((tmp_path / "dataset.json").read_text())
    assert index["attrs"]["left_out"] == {"d": "no chip kept of 9 windows"} and index["attrs"]["chip_size"] == 4
    assert index["splits"] == {"train": 9, "val": 3, "test": 2}


def test_too_few_scenes_writes_no_index(tmp_path):
    scenes = [_scene(tmp_path, "a", 2), _scene(tmp_path, "b", 0)]
    with pytest.raises(InputError, match="need at least one scene per split"):
        write_split_dataset(tmp_path, scenes, SplitSettings(), ["unburned", "burned"], {})
    assert not (tmp_path / "dataset.json").exists()
