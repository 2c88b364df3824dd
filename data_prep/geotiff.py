"""GeoTIFF helpers shared by the data-prep stages.

Opening and reading rasters with one-line errors, tiled output profiles, row-strip windows,
and writing outputs through a temporary name so that a killed stage never leaves a file that
looks complete.
"""

from __future__ import annotations

import functools
import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, ParamSpec, TypeVar

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from tqdm import tqdm

from apps.foundation.errors import InputError

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")

GDAL_CACHE_BYTES = 256 * 2**20
"""GDAL's block cache while a stage runs: bounds memory whatever the machine (GDAL's default grows with RAM)."""

STAMP_TAG = "GEOSCALE_STAMP"
"""GeoTIFF metadata tag holding the JSON stamp (settings and inputs) an output was made from."""


@dataclass(frozen=True)
class GeoTiffSettings:
    """How stage outputs are written: square tiles of ``block_size`` px, optional compression."""

    block_size: int = 512
    compress: str | None = None
    strip_rows: int = 256
    """Rows read or written per step by windowed stages. 256 keeps a full-width strip's arrays of a 10980 px
    tile under glibc's 32 MiB mmap threshold, so they reuse memory instead of faulting in fresh pages."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception ``exc`` was raised from: where GDAL says what actually went wrong."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    return exc


@contextmanager
def reading(path: Path, what: str = "raster") -> Iterator[None]:
    """Turn GDAL/rasterio errors raised inside the block into an InputError naming ``path``.

    A truncated or corrupt file often opens fine and fails only when a damaged block is read,
    so reads are wrapped as well as opening.
    """
    try:
        yield
    except RasterioError as exc:
        raise InputError(f"{what} {path}: unreadable ({first_line(root_cause(exc))})") from None


@contextmanager
def open_raster(path: Path, what: str = "raster") -> Iterator[rasterio.DatasetReader]:
    """Open a georeferenced raster for reading; errors while opening or reading, and a raster
    without CRS, become one-line InputErrors naming ``path``."""
    with reading(path, what), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            if src.crs is None:
                raise InputError(f"{what} {path}: not georeferenced (no CRS)")
            yield src


def in_gdal_env(stage: Callable[P, R]) -> Callable[P, R]:
    """Run ``stage`` under the GDAL settings stages share (a fixed block cache)."""

    @functools.wraps(stage)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            return stage(*args, **kwargs)

    return run


def strip_windows(width: int, height: int, rows: int) -> Iterator[Window]:
    """Full-width windows of ``rows`` rows (the last one shorter) covering a ``height`` x ``width`` grid."""
    for row_off in range(0, height, rows):
        yield Window(0, row_off, width, min(rows, height - row_off))


def progress(items: Iterable[T], desc: str, enabled: bool = True) -> Iterable[T]:
    """``items`` with a progress bar on stderr when ``enabled`` and stderr is a terminal."""
    return tqdm(items, desc=desc, unit="strip", leave=False, disable=None if enabled else True)


def output_profile(
    reference: rasterio.DatasetReader, count: int, dtype: str, nodata: float | None, settings: GeoTiffSettings
) -> dict:
    """A tiled GeoTIFF profile on ``reference``'s grid (CRS, transform, shape)."""
    profile = {
        "driver": "GTiff",
        "width": reference.width,
        "height": reference.height,
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
        "crs": reference.crs,
        "transform": reference.transform,
        "tiled": True,
        "blockxsize": settings.block_size,
        "blockysize": settings.block_size,
        "BIGTIFF": "IF_SAFER",
    }
    if settings.compress:
        profile["compress"] = settings.compress
    return profile


def read_stamp(path: Path) -> dict | None:
    """The stamp stored in a GeoTIFF written by a stage, or None if absent or unreadable."""
    if not Path(path).is_file():
        return None
    try:
        with rasterio.open(path) as src:
            text = src.tags().get(STAMP_TAG)
        return json.loads(text) if text else None
    except (RasterioError, json.JSONDecodeError):
        return None


def stamp_tags(stamp: Mapping | None) -> dict[str, str]:
    """GeoTIFF tags that store ``stamp`` (none when ``stamp`` is None)."""
    return {STAMP_TAG: json.dumps(stamp, sort_keys=True)} if stamp is not None else {}


def input_identity(path: Path) -> str:
    """Path, size and modification time of an input file: changes when the file is replaced."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InputError(f"input file {path}: not found") from None
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def stage_stamp(stage: str, settings: dict, inputs: dict[str, Path]) -> dict:
    """What a stage's output was made from: the stage, its settings and the identity of each input file;
    an output whose stored stamp equals a fresh one is up to date."""
    stamp = {"stage": stage, "settings": settings, "inputs": {k: input_identity(p) for k, p in inputs.items()}}
    return json.loads(json.dumps(stamp))


def check_made_with(subject: str, stage: str, stamp: dict | None, settings: dict) -> None:
    """InputError unless ``subject``'s ``stage`` outputs, stamped ``stamp`` (None: unrecorded, not checked),
    were made with ``settings``: a later stage run with other settings would describe or split them wrongly."""
    current = json.loads(json.dumps(settings))
    stored = (stamp or {}).get("settings")
    if stored is not None and stored != current:
        changed = sorted(k for k in {*stored, *current} if stored.get(k) != current.get(k))
        raise InputError(f"{subject}: {stage} outputs were made with other settings ({', '.join(changed)}): "
                         f"run stage={stage} with these settings first, or the next stage with the same ones")
