"""Scene discovery: find the band files of one Sentinel-2 L2A product and check they share a grid.

A scene folder is either a SAFE product (``<name>.SAFE/GRANULE/*/IMG_DATA/R10m/*_B02_10m.jp2``,
also accepted when the folder holds one ``.SAFE`` folder) or a folder of band files named by
band, such as ``B02.tif``, ``T29RKH_20200219_B02.tif`` or ``B02_10m.jp2`` (GeoTIFF, COG or JP2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from apps.foundation.errors import InputError
from data_prep.geotiff import open_raster

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
BAND_COUNTS = {"TCI": 3}
"""Bands per file of the band names that are not one band per file (the true-colour image: R, G, B)."""
_BAND_NAME = re.compile(r"(?:^|[_\-.])(?P<band>B\d[\dA]|TCI|SCL|AOT|WVP)(?:_(?P<res>\d+)m)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Scene:
    """One product: its name, folder and band name -> file (e.g. {"B04": .../B04.tif, "TCI": ...})."""

    name: str
    folder: Path
    bands: Mapping[str, Path]


class NoChips(InputError):
    """A scene that cannot yield a chip (no polygon on it, smaller than one chip): a prep skips such a scene
    while others yield chips. The message is ``<subject>: <reason>``; ``reason`` alone says why."""

    def __init__(self, subject: str, reason: str):
        super().__init__(f"{subject}: {reason}")
        self.reason = reason


def list_folders(parent: Path | None, setting: str = "scenes_dir", kind: str = "scene",
                 expected: str = "one subfolder per scene") -> list[Path]:
    """The ``kind`` folders of ``parent`` (the folder that ``setting`` names): its non-hidden subfolders,
    sorted by name. InputError naming the setting when it is unset, not a folder, or holds none."""
    if parent is None:
        raise InputError(f"{setting}: not set ({setting}=<folder with one subfolder per {kind}>)")
    parent = Path(parent)
    if not parent.is_dir():
        raise InputError(f"{setting} {parent}: not a folder")
    folders = sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(f"{setting} {parent}: holds no {kind} folder (expected {expected})")
    return folders


def resolve_folder(name: str, parent: Path | None, setting: str = "scenes_dir", kind: str = "scene") -> Path:
    """The folder of one ``kind`` given as ``name``: a subfolder of ``parent`` by that name, or a folder path."""
    if parent is not None and (Path(parent) / name).is_dir():
        return Path(parent) / name
    if Path(name).is_dir():
        return Path(name)
    where = f"under {setting} {parent}" if parent is not None else f"(set {setting})"
    raise InputError(f"{kind} {name}: no such {kind} folder {where}")


def scene_name(folder: Path) -> str:
    """A scene's name: its folder name without a ``.SAFE`` suffix."""
    name = Path(folder).name
    return name[: -len(".SAFE")] if name.upper().endswith(".SAFE") else name


def _band_files(folder: Path) -> dict[str, list[tuple[int, Path]]]:
    """Band name -> [(resolution in m, or 0 if unnamed; path)] for the raster files of a scene."""
    safe = [folder] if folder.name.upper().endswith(".SAFE") else sorted(folder.glob("*.SAFE"))
    if len(safe) > 1:
        raise InputError(f"scene folder {folder}: holds {len(safe)} .SAFE products, expected one")
    candidates = sorted(safe[0].glob("GRANULE/*/IMG_DATA/**/*")) if safe else sorted(folder.iterdir())
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in candidates:
        if path.suffix.lower() not in RASTER_SUFFIXES or not path.is_file():
            continue
        match = _BAND_NAME.search(path.stem)
        if match:
            found.setdefault(match["band"].upper(), []).append((int(match["res"] or 0), path))
    return found


def find_scene(folder: Path, bands: Sequence[str]) -> Scene:
    """Locate ``bands`` (e.g. ["B04", "B03", "B02", "TCI"]) in a scene folder and check their grids.

    Where a band exists at several resolutions (SAFE R10m/R20m/R60m) the finest is taken.
    Raises InputError naming the folder and band when a band is missing or ambiguous, when its file
    holds another number of bands than the name says (one; TCI three), and when the bands differ in
    CRS, transform or shape.
    """
    folder = Path(folder)
    if folder.is_file():
        raise InputError(f"scene folder {folder}: a file, not a folder (give the folder that holds the scene's "
                         "band files)")
    if not folder.is_dir():
        raise InputError(f"scene folder {folder}: not found")
    available = _band_files(folder)
    chosen: dict[str, Path] = {}
    for band in bands:
        options = sorted(available.get(band.upper(), []))
        if not options:
            listed = ", ".join(sorted(available)) or "no band files"
            raise InputError(f"scene folder {folder}: band {band} missing (found: {listed})")
        finest = [path for res, path in options if res == options[0][0]]
        if len(finest) > 1:
            names = ", ".join(p.name for p in finest)
            raise InputError(f"scene folder {folder}: band {band} is ambiguous ({names})")
        chosen[band] = finest[0]
        _check_band_count(folder, band.upper(), finest[0])
    check_same_grid(chosen, f"scene folder {folder}")
    return Scene(name=scene_name(folder), folder=folder, bands=chosen)


def _check_band_count(folder: Path, band: str, path: Path) -> None:
    expected = BAND_COUNTS.get(band, 1)
    with open_raster(path) as src:
        count = src.count
    if count != expected:
        hint = " (one file per band, named by its band)" if expected == 1 else ""
        raise InputError(f"scene folder {folder}: band {band} file {path.name} holds {count} bands, "
                         f"expected {expected}{hint}")


def check_same_grid(rasters: Mapping[str, Path], context: str) -> None:
    """InputError unless all ``rasters`` (name -> path) share CRS, transform and shape."""
    reference = None
    for name, path in rasters.items():
        with open_raster(path) as src:
            grid = (src.crs, src.transform, src.width, src.height)
        if reference is None:
            reference = (name, grid)
        elif grid != reference[1]:
            ref_name, (crs, transform, width, height) = reference
            raise InputError(
                f"{context}: {name} ({path.name}) is not on the grid of {ref_name}: "
                f"{grid[2]}x{grid[3]} px, {grid[0]}, origin ({grid[1].c}, {grid[1].f}), pixel {grid[1].a} "
                f"vs {width}x{height} px, {crs}, origin ({transform.c}, {transform.f}), pixel {transform.a}"
            )
