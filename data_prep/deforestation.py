"""Deforestation change-detection prep: pairs of Sentinel-2 L2A products + PRODES polygons -> a chip dataset.

    python -m data_prep.deforestation areas_dir=areas polygons=prodes.gpkg target_year=2021 out_dir=data/chips/deforestation
    python -m data_prep.deforestation -m area=a,b,c stage=prepare areas_dir=... polygons=... target_year=2021 out_dir=...
    python -m data_prep.deforestation stage=split areas_dir=... target_year=2021 out_dir=...

Input: ``areas_dir`` holds one subfolder per area, each with two product folders (a ``.SAFE``
product or a folder of band files B02, B03, B04, B08, SCL with ``MTD_MSIL2A.xml`` or a STAC item
JSON; see ``data_prep.sentinel2``)::

    areas_dir/<area>/before/    the earlier date (its 10 m grid is the area's grid)
    areas_dir/<area>/after/     the later date, read onto that grid when it lies on another

Per area: ``prepare`` reads both dates onto one grid, masks clouds, checks the sensing dates
against the PRODES date window, writes each band combination stretched to uint8 (percentiles of
both dates together) and the change mask; ``chip`` cuts the pair chips that pass the thresholds.
Then ``split`` assigns chips to train/val/test by spatial blocks over all areas
(``data_prep.spatial_split``), stores rotated copies of the train chips and writes the dataset.
Layout of ``out_dir``::

    dataset.json, manifest.csv            the chip dataset (apps.foundation.chips), written by split
    scenes/<area>/*.npy, chips.json       chip arrays (before_<combo>, after_<combo>, mask) and records
    scenes/<area>__rot/*.npy              rotated copies of the area's train chips, written by split
    work/<area>/<date>_<combo>.tif        stretched band combination, uint8, nodata 0
    work/<area>/label.tif                 mask: 0 no change, 1 change, 255 ignore
    work/<area>/prepared.json             products, date window and percentiles; written last by prepare
    logs/                                 Hydra logs of each run

Outputs carry stamps as in ``data_prep.burned_area``: a re-run skips what is up to date, and any
stage that rewrites something first removes ``dataset.json``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import rasterio
from omegaconf import DictConfig, OmegaConf

from apps.foundation.chips import (
    SPLITS, ChipPreparation, ChipRecord, invalidate_dataset, scene_array_paths, scene_array_writer, write_dataset_index,
)
from apps.foundation.errors import InputError
from apps.foundation.files import atomic_path, atomic_write_text
from data_prep.chipping import MASK_ARRAY, ChipSettings, ChipWindows, SceneChips, chip_scene, read_scene_chips
from data_prep.geotiff import (
    GeoTiffSettings, check_made_with, in_gdal_env, output_profile, stage_stamp, stamp_tags, strip_windows,
)
from data_prep.normalize import NODATA, NormalizeSettings, stretch
from data_prep.prodes import CHANGE, CLASSES, ProdesSettings, date_window, label_mask, read_prodes, window_dates
from data_prep.sentinel2 import (
    COMBINATIONS, Grid, Product, Sentinel2Settings, channel_levels, check_overlap, combination_channels, level_strips,
    open_product,
)
from data_prep.scenes import list_folders, resolve_folder
from data_prep.split import BlockSplitSettings, split_by_blocks

log = logging.getLogger(__name__)

STAGES = ("prepare", "chip", "split", "all")
AREA_STAGES = ("prepare", "chip")
DATES = ("before", "after")
ROTATIONS = (90, 180, 270)
AREA_FOLDERS = ("areas_dir", "area", "<area>/before/ and <area>/after/")
"""(setting, kind, expected layout) of the area folders, for data_prep.scenes.list_folders."""
ROTATED_SUFFIX = "__rot"
"""Scene ``<area>__rot`` holds the rotated copies of an area's train chips."""


@dataclass(frozen=True)
class PairChipSettings(ChipSettings):
    """The sliding windows of ChipSettings and the deforestation keep rule: a chip is kept when change covers
    at least ``min_change_fraction`` of it, no change some of it, and ignore at most ``max_ignore_fraction``."""

    min_change_fraction: float = 0.1
    max_ignore_fraction: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        for name in ("min_change_fraction", "max_ignore_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"chip.{name}: must be in [0, 1], got {getattr(self, name)}")

    def keep(self, windows: ChipWindows) -> np.ndarray:
        """(N,) bool: the windows worth keeping."""
        return ((windows.positive_fraction >= self.min_change_fraction) & (windows.negative_fraction > 0)
                & (windows.nodata_fraction <= self.max_ignore_fraction))


@dataclass(frozen=True)
class DeforestationPreparation(ChipPreparation):
    """The deforestation prep's record (``dataset.json`` attrs): ChipPreparation's geometry and band
    combinations, the keep rule, the Sentinel-2, stretch and PRODES settings, the split, and per area
    its date window, products and stretch percentiles; the inputs as absolute paths."""

    min_change_fraction: float | None = None
    max_ignore_fraction: float | None = None
    target_year: int | None = None
    augment_rotations: tuple[int, ...] | None = None
    split: dict | None = None
    stretch: NormalizeSettings | None = None
    sentinel2: Sentinel2Settings | None = None
    prodes: ProdesSettings | None = None
    date_windows: dict | None = None
    products: dict | None = None
    percentiles: dict | None = None
    areas_dir: str | None = None
    polygons: str | None = None


@dataclass(frozen=True)
class PrepConfig:
    """Everything the prep needs, checked; built from the Hydra config by ``from_cfg``."""

    out_dir: Path | str
    areas_dir: Path | str | None = None
    polygons: Path | str | None = None
    target_year: int | None = None
    bands: tuple[str, ...] = ("nirrg", "ndvi", "evi")
    sentinel2: Sentinel2Settings = Sentinel2Settings()
    stretch: NormalizeSettings = NormalizeSettings()
    prodes: ProdesSettings = ProdesSettings()
    chip: PairChipSettings = PairChipSettings()
    augment_rotations: tuple[int, ...] = (90, 180)
    split: BlockSplitSettings = BlockSplitSettings()
    geotiff: GeoTiffSettings = GeoTiffSettings()
    force: bool = False

    def __post_init__(self):
        for name in ("out_dir", "areas_dir", "polygons"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "bands", tuple(self.bands))
        object.__setattr__(self, "augment_rotations", tuple(int(a) for a in self.augment_rotations))
        unknown = [b for b in self.bands if b not in COMBINATIONS]
        if unknown or not self.bands:
            raise InputError(f"bands: unknown band combination(s) {', '.join(unknown) or '(none given)'} "
                             f"(expected some of {', '.join(COMBINATIONS)})")
        bad = [a for a in self.augment_rotations if a not in ROTATIONS]
        if bad:
            raise InputError(f"augment_rotations: {bad} not among {list(ROTATIONS)} degrees")

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> "PrepConfig":
        return cls(
            out_dir=cfg.out_dir, areas_dir=cfg.areas_dir, polygons=cfg.polygons,
            target_year=None if cfg.target_year is None else int(cfg.target_year), bands=tuple(cfg.bands),
            sentinel2=Sentinel2Settings(**cfg.sentinel2), stretch=NormalizeSettings(**cfg.stretch),
            prodes=ProdesSettings(**cfg.prodes), chip=PairChipSettings(**cfg.chip),
            augment_rotations=tuple(cfg.augment_rotations), split=BlockSplitSettings(**cfg.split),
            geotiff=GeoTiffSettings(**cfg.geotiff), force=bool(cfg.force),
        )

    def work_dir(self, area: str) -> Path:
        return self.out_dir / "work" / area

    def image_paths(self, area: str) -> dict[str, Path]:
        """Array name (``<date>_<combo>``) -> stretched image of the area."""
        return {f"{d}_{c}": self.work_dir(area) / f"{d}_{c}.tif" for d in DATES for c in self.bands}

    def label_path(self, area: str) -> Path:
        return self.work_dir(area) / "label.tif"

    def prepared_path(self, area: str) -> Path:
        return self.work_dir(area) / "prepared.json"

    def array_descriptions(self) -> dict[str, dict]:
        """The dataset's ``arrays`` entry: what each chip array holds."""
        arrays = {
            f"{d}_{c}": {"kind": "image", "channels": len(COMBINATIONS[c]), "bands": list(COMBINATIONS[c]), "date": d,
                         "combination": c, "nodata": NODATA}
            for d in DATES for c in self.bands
        }
        arrays[MASK_ARRAY] = {"kind": "label"}
        return arrays


def _require_target_year(config: PrepConfig) -> int:
    if config.target_year is None:
        raise InputError("target_year: not set (target_year=<PRODES year of the changes, e.g. 2021>)")
    return config.target_year


def _prepare_settings(config: PrepConfig) -> dict:
    """The settings the prepare stage's outputs depend on (part of its stamp)."""
    return json.loads(json.dumps({
        "target_year": config.target_year, "bands": list(config.bands), "sentinel2": asdict(config.sentinel2),
        "stretch": asdict(config.stretch), "prodes": asdict(config.prodes)}))


def _read_prepared(config: PrepConfig, area: str) -> dict | None:
    try:
        return json.loads(config.prepared_path(area).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_tif(path: Path, data: np.ndarray, grid, nodata: int, config: PrepConfig, stamp: dict) -> None:
    profile = output_profile(grid, data.shape[0], "uint8", nodata, config.geotiff)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**stamp_tags(stamp))


def _check_dates(area: str, products: Mapping[str, Product], window) -> None:
    for product in products.values():
        if not window[0] <= product.sensing_date <= window[1]:
            raise InputError(f"product {product.folder}: sensed {product.sensing_date}, outside the date window "
                             f"{window[0]}..{window[1]} of the PRODES polygons of area {area}")


def _write_stretched(paths: Mapping[str, Path], levels_file: Path, grid: Grid, channels: Sequence[str],
                     luts: Sequence[np.ndarray], geotiff: GeoTiffSettings, tags: Mapping[str, str]) -> None:
    """Write one date's combinations (combination -> its file in ``paths``, in channel order) from its stored
    ``levels_file`` ((C, H, W) uint16 in strips of ``geotiff.strip_rows`` rows), channel c through ``luts[c]``
    (level -> uint8), strip by strip; the files appear complete or not at all."""
    with ExitStack() as stack:
        outputs = {
            combo: stack.enter_context(rasterio.open(stack.enter_context(atomic_path(path)), "w", **output_profile(
                grid, len(COMBINATIONS[combo]), "uint8", NODATA, geotiff)))
            for combo, path in paths.items()
        }
        with open(levels_file, "rb") as levels_in:
            for window in strip_windows(grid.width, grid.height, geotiff.strip_rows):
                levels = np.fromfile(levels_in, np.uint16, len(channels) * window.height * window.width)
                levels = levels.reshape(len(channels), window.height, window.width)
                first = 0
                for combo, dst in outputs.items():
                    n = len(COMBINATIONS[combo])
                    image = np.empty((n, window.height, window.width), np.uint8)
                    for i, c in enumerate(range(first, first + n)):
                        np.take(luts[c], levels[c], out=image[i])
                    dst.write(image, window=window)
                    first += n
        for dst in outputs.values():
            dst.update_tags(**tags)


@in_gdal_env
def write_pair_images(products: Mapping[str, Product], combinations: Sequence[str], sentinel2: Sentinel2Settings,
                      stretch_settings: NormalizeSettings, paths: Mapping[str, Path],
                      geotiff: GeoTiffSettings = GeoTiffSettings(), tags: Mapping[str, str] | None = None,
                      ) -> tuple[dict[str, list[list[float]]], dict[str, np.ndarray]]:
    """Write both dates' band ``combinations`` on the before date's grid, stretched to uint8 (nodata 0) between
    each channel's percentiles over the valid pixels of both dates, to ``paths[f"{date}_{combination}"]``.

    Each date is read once, strip by strip (``sentinel2.level_strips``): its channels' levels are counted
    and stored in a temporary file beside the outputs, so memory stays at a few strips plus the (H, W)
    validity masks. The percentiles come from the counts of both dates (exact for reflectance; within
    half a bin, 3.1e-5, for NDVI/EVI), and each level becomes uint8 through a table (``stretch`` of the
    value the level stands for). Returns (combination -> per channel [low, high], date -> valid (H, W)
    bool). InputError when the dates do not overlap or a date has no valid pixel after the cloud mask.
    """
    grid = products["before"].grid
    check_overlap(products["before"], products["after"])
    channels = combination_channels(combinations)
    levels = [channel_levels(channel) for channel in channels]
    folder = Path(next(iter(paths.values()))).parent
    folder.mkdir(parents=True, exist_ok=True)

    def count(date: str, levels_file: Path) -> tuple[list[np.ndarray], np.ndarray]:
        """One date's pixels per level of each channel, and its validity mask (H, W); its levels to ``levels_file``."""
        counts, valid = [np.zeros(lv.count + 1, np.int64) for lv in levels], np.zeros((grid.height, grid.width), bool)
        with open(levels_file, "wb") as levels_out:
            for strip, strip_levels, ok in level_strips(products[date], grid, combinations, sentinel2,
                                                        geotiff.strip_rows):
                valid[strip.row_off:strip.row_off + strip.height] = ok
                for total, channel in zip(counts, strip_levels):
                    total += np.bincount(channel.ravel(), minlength=total.size)
                strip_levels.tofile(levels_out)
        if not valid.any():
            raise InputError(f"product {products[date].folder}: no valid pixel on the grid of "
                             f"{products['before'].folder} after the cloud mask (SCL classes "
                             f"{list(sentinel2.cloud_classes)} and DN 0 are no data)")
        return counts, valid

    # One date a thread, in both passes: GDAL and numpy's large-array work release the GIL.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".levels-") as tmp, \
            ThreadPoolExecutor(max_workers=min(len(products), os.cpu_count() or 1)) as pool:
        files = {d: Path(tmp) / f"{d}.u16" for d in products}
        counted = dict(zip(products, pool.map(count, products, files.values())))
        limits = [lv.percentiles(sum(counted[d][0][c] for d in products),
                                 [stretch_settings.low_percentile, stretch_settings.high_percentile])
                  for c, lv in enumerate(levels)]
        luts = [np.append(stretch(lv.values(), *limit), np.uint8(NODATA)) for lv, limit in zip(levels, limits)]
        list(pool.map(lambda d: _write_stretched({combo: paths[f"{d}_{combo}"] for combo in combinations}, files[d],
                                                 grid, channels, luts, geotiff, tags or {}), products))
    percentiles, first = {}, 0
    for combo in combinations:
        n = len(COMBINATIONS[combo])
        percentiles[combo] = [[float(v) for v in limit] for limit in limits[first:first + n]]
        first += n
    return percentiles, {d: valid for d, (_, valid) in counted.items()}


@in_gdal_env
def prepare_area(area: str, products: Mapping[str, Product], config: PrepConfig, stamp: dict) -> dict:
    """Write the area's stretched images (``write_pair_images``) and label (see the module) and return the facts
    ``prepared.json`` holds."""
    target_year = _require_target_year(config)
    grid = products["before"].grid
    check_overlap(products["before"], products["after"])
    frame = read_prodes(_polygons(config), grid, config.prodes)
    try:
        window = date_window(window_dates(frame, target_year, config.prodes), config.prodes.date_margin_days)
    except ValueError:
        window = None
        log.warning("area %s: no PRODES polygon of %d or %d with an image date overlaps it; sensing dates not checked",
                    area, target_year - 1, target_year)
    else:
        _check_dates(area, products, window)
    percentiles, valid = write_pair_images(products, config.bands, config.sentinel2, config.stretch,
                                           config.image_paths(area), config.geotiff, stamp_tags(stamp))
    mask = label_mask(frame, grid, target_year, ~(valid.pop("before") & valid.pop("after")), config.prodes)
    _write_tif(config.label_path(area), mask[None], grid, 255, config, stamp)
    return {
        "products": {d: p.facts() for d, p in products.items()},
        "date_window": [window[0].isoformat(), window[1].isoformat()] if window else None,
        "percentiles": percentiles,
        "change_fraction": float(np.mean(mask == CHANGE)), "height": grid.height, "width": grid.width,
    }


def _polygons(config: PrepConfig) -> Path:
    if config.polygons is None:
        raise InputError("polygons: not set (polygons=<PRODES polygon file>)")
    return config.polygons


def run_prepare(area: str, folder: Path, config: PrepConfig) -> bool:
    """Prepare one area unless its outputs are up to date; True if it ran."""
    products = {}
    for d in DATES:
        if not (folder / d).is_dir():
            raise InputError(f"area {folder}: no {d}/ product folder (expected {folder / d})")
        products[d] = open_product(folder / d, config.sentinel2)
    inputs = {"polygons": _polygons(config)}
    for d, product in products.items():
        inputs.update({f"{d}/{band}": path for band, path in product.bands.items()})
        inputs[f"{d}/metadata"] = product.metadata
    stamp = stage_stamp("prepare", _prepare_settings(config), inputs)
    prepared = _read_prepared(config, area)
    outputs = [config.label_path(area), *config.image_paths(area).values()]
    if not config.force and prepared is not None and prepared["stamp"] == stamp and all(p.is_file() for p in outputs):
        return False
    invalidate_dataset(config.out_dir)
    config.prepared_path(area).unlink(missing_ok=True)
    facts = prepare_area(area, products, config, stamp)
    atomic_write_text(config.prepared_path(area), json.dumps({"stamp": stamp, **facts}, indent=1))
    return True


def run_chip(area: str, config: PrepConfig) -> bool:
    """Chip one area unless its stored chips are up to date; True if it ran."""
    prepared = _read_prepared(config, area)
    if prepared is None:
        raise InputError(f"area {area}: not prepared in {config.out_dir} (run stage=prepare area={area} first)")
    stamp = stage_stamp("chip", asdict(config.chip), {"mask": config.label_path(area), **config.image_paths(area)})
    stored = read_scene_chips(config.out_dir, area)
    if not config.force and stored is not None and stored.stamp == stamp:
        return False
    invalidate_dataset(config.out_dir)
    chip_scene(area, config.label_path(area), config.image_paths(area), config.out_dir, config.chip,
               config.chip.keep, CLASSES, tuple(prepared["products"][d]["product"] for d in DATES), stamp,
               show_progress=False)
    return True


def write_rotations(chips: SceneChips, records: list[ChipRecord], config: PrepConfig) -> tuple[str, list[ChipRecord]]:
    """Store copies of the train chips among ``records`` rotated (counter-clockwise) by each of ``augment_rotations``
    as the arrays of scene ``<area>__rot``; returns that scene's name and its records (chip id
    ``<chip id>_rot<angle>``, the window and transform of the unrotated chip)."""
    scene = f"{chips.scene}{ROTATED_SUFFIX}"
    train = [r for r in records if r.split == "train"]
    stored = {name: np.load(config.out_dir / path, mmap_mode="r") for name, path in chips.arrays.items()}
    count = len(train) * len(config.augment_rotations)
    rotated: list[ChipRecord] = []
    with scene_array_writer(config.out_dir, scene, {n: (count, *a.shape[1:]) for n, a in stored.items()}) as (writers, _):
        for record in train:
            for angle in config.augment_rotations:
                for name, array in stored.items():
                    writers[name].append(np.rot90(array[record.index], k=angle // 90, axes=(-2, -1)))
                rotated.append(replace(record, chip_id=f"{record.chip_id}_rot{angle}", scene=scene, index=len(rotated)))
    return scene, rotated


def _skip_reason(chips: SceneChips, prepared: dict, config: PrepConfig) -> str:
    if prepared["change_fraction"] == 0:
        return f"no PRODES change of {config.target_year} on the area"
    return (f"no chip kept of {chips.windows_total} windows of {config.chip.size} px (min_change_fraction "
            f"{config.chip.min_change_fraction}, max_ignore_fraction {config.chip.max_ignore_fraction})")


def run_split(areas: list[str], config: PrepConfig) -> Path:
    """Split the chipped areas by spatial blocks, add rotated train chips and write the dataset index;
    returns the path of ``dataset.json``."""
    invalidate_dataset(config.out_dir)
    usable: list[tuple[SceneChips, dict]] = []
    skipped: dict[str, str] = {}
    for area in areas:
        chips, prepared = read_scene_chips(config.out_dir, area), _read_prepared(config, area)
        if chips is None or prepared is None:
            raise InputError(f"area {area}: not chipped yet in {config.out_dir} (run stage=chip area={area})")
        check_made_with(f"area {area}", "prepare", prepared["stamp"], _prepare_settings(config))
        check_made_with(f"area {area}", "chip", chips.stamp, asdict(config.chip))
        if chips.records:
            usable.append((chips, prepared))
        else:
            skipped[area] = _skip_reason(chips, prepared, config)
            log.warning("area %s: %s; skipped", area, skipped[area])
    if not usable:
        raise InputError(f"areas_dir {config.areas_dir}: no area yields a chip ("
                         + "; ".join(f"{a}: {r}" for a, r in skipped.items()) + ")")
    split_records = split_by_blocks([chips for chips, _ in usable], config.chip.size, config.split)
    counts = {s: sum(r.split == s for rs in split_records.values() for r in rs) for s in SPLITS}
    records: list[ChipRecord] = []
    scenes: dict[str, dict] = {}
    for chips, prepared in usable:
        kept = split_records[chips.scene]
        records += kept
        scenes[chips.scene] = {
            "chips": len(chips.records), "windows": chips.windows_total, "arrays": chips.arrays,
            "splits": {s: sum(r.split == s for r in kept) for s in SPLITS}, "sources": list(kept[0].sources) if kept else [],
            "date_window": prepared["date_window"], "products": prepared["products"],
        }
        if config.augment_rotations and any(r.split == "train" for r in kept):
            scene, rotated = write_rotations(chips, kept, config)
            records += rotated
            scenes[scene] = {"chips": len(rotated), "arrays": scene_array_paths(scene, chips.arrays),
                             "splits": {"train": len(rotated)}, "rotated_from": chips.scene,
                             "rotations": list(config.augment_rotations)}
    preparation = DeforestationPreparation(
        chip_size=config.chip.size, overlap=config.chip.overlap, bands=tuple(config.bands), skipped=skipped,
        min_change_fraction=config.chip.min_change_fraction, max_ignore_fraction=config.chip.max_ignore_fraction,
        target_year=config.target_year, augment_rotations=tuple(config.augment_rotations),
        split={**asdict(config.split), "block_size_px": config.split.block_size(config.chip.size)},
        stretch=config.stretch, sentinel2=config.sentinel2, prodes=config.prodes,
        date_windows={chips.scene: prepared["date_window"] for chips, prepared in usable},
        products={chips.scene: prepared["products"] for chips, prepared in usable},
        percentiles={chips.scene: prepared["percentiles"] for chips, prepared in usable},
        areas_dir=str(config.areas_dir.resolve()) if config.areas_dir else None,
        polygons=str(config.polygons.resolve()) if config.polygons else None,
    )
    path = write_dataset_index(config.out_dir, records, scenes, CLASSES, config.array_descriptions(), preparation)
    log.info("dataset complete: %s (chips per split before rotations: %s, %d rotated train chips)", path, counts,
             len(records) - sum(counts.values()))
    return path


def prepare(config: PrepConfig, stage: str = "all", area: str | None = None) -> Path | None:
    """Run ``stage`` (one of STAGES) for ``area`` (a name or folder; None: every area of areas_dir).

    ``stage=all`` runs prepare and chip on each area, then split (only when ``area`` is None).
    Returns the path of ``dataset.json`` when the split ran.
    """
    if stage not in STAGES:
        raise InputError(f"stage: unknown stage {stage!r} (expected one of {', '.join(STAGES)})")
    if stage == "split":
        if area is not None:
            raise InputError("stage=split works on all areas of areas_dir: drop area=")
        return run_split([f.name for f in list_folders(config.areas_dir, *AREA_FOLDERS)], config)
    folders = ([resolve_folder(area, config.areas_dir, *AREA_FOLDERS[:2])] if area is not None
               else list_folders(config.areas_dir, *AREA_FOLDERS))
    stages = AREA_STAGES if stage == "all" else (stage,)
    if "prepare" in stages:
        _require_target_year(config)
    for folder in folders:
        for name in stages:
            ran = run_prepare(folder.name, folder, config) if name == "prepare" else run_chip(folder.name, config)
            log.info("area %s: %s %s", folder.name, name, "done" if ran else "up to date, skipped")
    if stage == "all" and area is None:
        return run_split([f.name for f in folders], config)
    return None


def _hydra_task(cfg: DictConfig) -> None:
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    prepare(PrepConfig.from_cfg(cfg), stage=str(cfg.stage), area=None if cfg.area is None else str(cfg.area))


def main() -> None:
    """Command-line entry: bad input or config prints one line ``error: ...`` and exits 2."""
    from apps.foundation.cli import record_stage, run_hydra_app

    run_hydra_app(record_stage(_hydra_task), "prep_deforestation")


if __name__ == "__main__":
    main()
