"""Shared fixtures: tiny synthetic Sentinel-2 scenes with burn polygons, and the chip dataset made from them.

Heavy imports (rasterio, geopandas) happen inside the fixtures, so tests that use none of them
do not pay for them.
"""

from __future__ import annotations

import gc
import os
import signal
from pathlib import Path

import pytest

# Under pytest-xdist each worker, and every command it starts, gets one OpenMP thread: workers of a
# multi-threaded torch would oversubscribe the cores, and their spinning threads cost more than the
# parallel tests gain. Set before torch is imported; an explicit setting is kept.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from helpers.rasters import TINY_CHIP

# A test run started in the background of a non-interactive shell inherits SIGINT ignored, and so would every
# command it starts: the Ctrl-C tests could not interrupt them. A handler of our own is reset to the default
# in child processes, so they take Ctrl-C as on a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Collection imports torch, timm and Lightning: millions of long-lived objects, which every full garbage
# collection would scan again (some 0.2 s each, dozens of times a run). None runs while collecting, and
# what collection leaves is frozen out of later collections.
gc.disable()


def pytest_collection_finish(session):
    gc.collect()
    gc.freeze()
    gc.enable()


def pytest_unconfigure(config):
    gc.unfreeze()  # the frozen objects are released at exit as usual (nanobind reports any it sees leaked)


@pytest.fixture(scope="session")
def synthetic_scenes(tmp_path_factory):
    """Five synthetic scenes of 200-360 px (B02, B03, B04, B08, TCI) and ``burn_polygons.gpkg`` (EPSG:4326).

    A ``data_prep.synthetic.SyntheticData``: ``scenes_dir`` (one subfolder per scene), ``polygons``,
    ``scenes`` (names). Read-only: copy it before changing anything.
    """
    from data_prep.synthetic import generate_scenes

    return generate_scenes(tmp_path_factory.mktemp("synthetic"), n_scenes=5, size=360, seed=7)


@pytest.fixture(scope="session")
def burned_area_chips(tmp_path_factory, synthetic_scenes) -> Path:
    """A complete burned-area chip dataset (apps.foundation.chips layout) prepared from ``synthetic_scenes``
    with 64 px chips: arrays ``normalized``, ``tci`` (N, 3, 64, 64) and ``mask`` (N, 64, 64). Read-only."""
    from data_prep.burned_area import BurnChipSettings, PrepConfig, prepare

    out_dir = tmp_path_factory.mktemp("burned_area_chips")
    config = PrepConfig(out_dir=out_dir, scenes_dir=synthetic_scenes.scenes_dir, polygons=synthetic_scenes.polygons,
                        chip=BurnChipSettings(**TINY_CHIP), progress=False)
    prepare(config)
    return out_dir
