"""Split by spatial blocks: windows of rasters go to splits by the square block their centre lies in.

Each raster is partitioned into blocks of ``block_size`` px. The blocks of all rasters are assigned
whole to splits (a seeded shuffle, then each block to the split furthest below its target share of
windows), every window takes the split of the block holding its centre, and a window that overlaps
a block of another split is dropped. Since every block has a split, two kept windows of different
splits never share a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from apps.foundation.errors import InputError


@dataclass(frozen=True)
class RasterWindows:
    """Square windows of ``size`` px on one ``height`` x ``width`` raster: top-left offsets (N,) px."""

    row_off: np.ndarray
    col_off: np.ndarray
    size: int
    height: int
    width: int


@dataclass(frozen=True)
class WindowSplit:
    """Per window ((N,) arrays): index of its split in the fractions' order, and whether it is kept;
    plus the raster's block assignment ((rows, cols) int, split index per block)."""

    split: np.ndarray
    keep: np.ndarray
    blocks: np.ndarray


def assign_blocks(weights: np.ndarray, fractions: Mapping[str, float], seed: int = 0) -> np.ndarray:
    """Split index (in ``fractions``' order) of each block: int64 of ``weights``' shape (weights >= 0).

    Blocks of positive weight are taken in a seeded random order, each into the split whose held
    weight is furthest below its target (fraction x total weight), relative to that target, so every
    split gets a block as early as possible. Blocks of zero weight go to the split of largest fraction.
    """
    targets = np.array(list(fractions.values()), np.float64)
    if len(targets) == 0 or (targets <= 0).any():
        raise InputError(f"split fractions must be positive, got {dict(fractions)}")
    flat_weights = np.asarray(weights, np.float64).reshape(-1)
    targets = targets / targets.sum() * max(flat_weights.sum(), 1.0)
    assignment = np.full(flat_weights.size, int(np.argmax(targets)), np.int64)
    held = np.zeros(len(targets))
    order = np.random.default_rng(seed).permutation(flat_weights.size)
    for block in order[flat_weights[order] > 0]:
        chosen = int(np.argmax((targets - held) / targets))
        assignment[block] = chosen
        held[chosen] += flat_weights[block]
    return assignment.reshape(np.shape(weights))


def split_windows(rasters: Mapping[str, RasterWindows], block_size: int, fractions: Mapping[str, float],
                  seed: int = 0) -> dict[str, WindowSplit]:
    """Assign the windows of several rasters (name -> RasterWindows) to splits by blocks of ``block_size`` px
    (see the module), all blocks in one shuffle; blocks are weighted by the windows whose centre they hold."""
    if block_size < 1:
        raise InputError(f"split.block_size_px: must be a positive number of pixels, got {block_size}")
    centres, weights = {}, []
    for name, w in rasters.items():
        row_off, col_off = np.asarray(w.row_off, np.int64), np.asarray(w.col_off, np.int64)
        centres[name] = ((row_off + w.size // 2) // block_size, (col_off + w.size // 2) // block_size)
        grid = np.zeros((-(-w.height // block_size), -(-w.width // block_size)), np.int64)
        np.add.at(grid, centres[name], 1)
        weights.append(grid)
    flat = assign_blocks(np.concatenate([g.reshape(-1) for g in weights]) if weights else np.zeros(0), fractions, seed)
    result, start = {}, 0
    for (name, w), grid in zip(rasters.items(), weights):
        blocks = flat[start:start + grid.size].reshape(grid.shape)
        start += grid.size
        split = blocks[centres[name]]
        first_row, first_col = np.asarray(w.row_off) // block_size, np.asarray(w.col_off) // block_size
        last_row = (np.asarray(w.row_off) + w.size - 1) // block_size
        last_col = (np.asarray(w.col_off) + w.size - 1) // block_size
        keep = np.array([
            bool((blocks[first_row[i]:last_row[i] + 1, first_col[i]:last_col[i] + 1] == split[i]).all())
            for i in range(len(split))
        ], dtype=bool)
        result[name] = WindowSplit(split, keep, blocks)
    return result
