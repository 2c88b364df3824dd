"""Sentinel-2 acquisition: burn or PRODES polygons -> areas -> STAC search -> scene folders the preps read.

    python -m data_prep.acquire polygons=burns.gpkg dates.start=2021-06-01 dates.end=2021-09-30 out_dir=data/acquired
    python -m data_prep.acquire app=deforestation polygons=prodes.gpkg target_year=2021 catalog=copernicus out_dir=...
    python -m data_prep.acquire stage=areas polygons=... out_dir=...          # write and list the areas only
    python -m data_prep.acquire -m area=area_000,area_001 cluster=nautilus ...   # one Kubernetes Job per area

**Areas** (``data_prep.areas``): boxes around groups of nearby polygons (any CRS; for deforestation the
``target_year`` deforestation polygons), never overlapping and never larger than ``areas.max_size_m``; each area
is one job (``area=``).

**Search and choice** (``data_prep.stac``): items of the catalogue's collection over the area, within the date
window (burned area: ``dates``; deforestation: the image dates of the area's PRODES polygons of ``target_year``
and the year before, widened by ``prodes.date_margin_days``, as ``data_prep.prodes`` computes it for the prep),
with at most ``max_cloud_cover`` % cloud. Burned area takes the fewest items that cover the area, least cloud
first; deforestation the earliest and the latest acceptable items that each cover at least ``min_coverage`` of
it. **Fetch** (``data_prep.fetch``): the needed bands cut to the area's window (range reads of COGs, whole
downloads otherwise), with the item JSON, so baseline, BOA offset flag and date travel with the bands.

Layout of ``out_dir``::

    areas.geojson                        the areas (EPSG:4326 boxes; name, crs, left, bottom, right, top, polygons)
    areas/<area>/acquisition.json        window, candidates, the choice and why each other item was dropped, status
    scenes/<area>__<item>/               burned area: B02 B03 B04 TCI (GeoTIFF, the area's window) + <item>.json
    areas/<area>/before/, after/         deforestation: B02 B03 B04 B08 SCL + <item>.json
    logs/                                Hydra logs of each run

Then ``python -m data_prep.burned_area scenes_dir=<out_dir>/scenes ...`` or ``python -m data_prep.deforestation
areas_dir=<out_dir>/areas ...``. A re-run skips areas whose acquisition is complete with the same settings and
bands already fetched. Items the catalogue marks as not online (long-term archive) are reported with their ids
and the run exits with code 3 after fetching the rest; a re-run picks them up once online.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Mapping, Sequence

import geopandas as gpd
import pyogrio
from omegaconf import DictConfig, OmegaConf
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio import Affine
from rasterio.crs import CRS

from apps.foundation.errors import NOT_READY_EXIT_CODE, InputError, one_line
from apps.foundation.files import atomic_write_text
from data_prep.areas import Area, AreaSettings, plan_areas, write_areas
from data_prep.fetch import Fetcher, SceneJob, partial_folder, safe_name
from data_prep.geotiff import first_line
from data_prep.label import polygon_file_info
from data_prep.prodes import ProdesSettings, change_polygons, date_window, read_prodes, window_dates
from data_prep.sentinel2 import Grid
from data_prep.stac import (
    CatalogSettings, Choice, DownloadSettings, RemoteError, candidates_for, choose_cover, choose_pair, open_catalog,
    search_items,
)

log = logging.getLogger(__name__)

APP_BANDS = {"burned_area": ("B02", "B03", "B04", "TCI"), "deforestation": ("B02", "B03", "B04", "B08", "SCL")}
"""The bands each prep reads."""
STAGES = ("areas", "all")
RECORD_FILE = "acquisition.json"
SCENE_SEPARATOR = "__"
"""Burned-area scene folders are ``<area>__<item id>``."""
REMOTE_ERROR_EXIT_CODE = 1


class ItemsOffline(Exception):
    """Chosen items that the catalogue marks as not online; the message lists them by area. Exit code 3."""


class NoItems(InputError):
    """An area for which no item (or no pair) can be chosen: the catalogue has none that pass the filters."""


def _parse_date(value, setting: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"{setting}: {value!r} is not an ISO date (YYYY-MM-DD)") from None


@dataclass(frozen=True)
class AcquireConfig:
    """Everything acquisition needs, checked; built from the Hydra config by ``from_cfg``."""

    out_dir: Path | str
    polygons: Path | str | None
    catalog: CatalogSettings
    app: str = "burned_area"
    layer: str | None = None
    start: date | None = None
    end: date | None = None
    target_year: int | None = None
    prodes: ProdesSettings | None = None
    max_cloud_cover: float = 20.0
    min_coverage: float = 0.95
    bands: tuple[str, ...] | None = None
    areas: AreaSettings = AreaSettings()
    download: DownloadSettings = DownloadSettings()
    force: bool = False
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.polygons is None:
            raise InputError("polygons: not set (polygons=<burn or PRODES polygon file>)")
        object.__setattr__(self, "polygons", Path(self.polygons))
        if self.app not in APP_BANDS:
            raise InputError(f"app: unknown {self.app!r} (expected one of {', '.join(APP_BANDS)})")
        object.__setattr__(self, "bands", tuple(self.bands or APP_BANDS[self.app]))
        unknown = [b for b in self.bands if b not in self.catalog.assets]
        if unknown:
            raise InputError(f"bands: {', '.join(unknown)} not among the catalog's assets "
                             f"({', '.join(self.catalog.assets)})")
        if not 0 <= self.max_cloud_cover <= 100:
            raise InputError(f"max_cloud_cover: must be in [0, 100] %, got {self.max_cloud_cover}")
        if not 0 < self.min_coverage <= 1:
            raise InputError(f"min_coverage: must be in (0, 1], got {self.min_coverage}")
        object.__setattr__(self, "prodes", self.prodes or ProdesSettings(layer=self.layer))
        if self.start is not None and self.end is not None and self.end < self.start:
            raise InputError(f"dates: end {self.end} comes before start {self.start}")
        if self.app == "deforestation" and self.target_year is None:
            raise InputError("target_year: not set (target_year=<PRODES year of the changes, e.g. 2021>)")

    def check_dates(self) -> None:
        """InputError unless the burned-area date window is set (the deforestation one comes from the polygons)."""
        if self.app == "burned_area" and (self.start is None or self.end is None):
            raise InputError("dates: dates.start and dates.end must be set for app=burned_area (YYYY-MM-DD)")

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> "AcquireConfig":
        catalog = OmegaConf.to_container(cfg.catalog, resolve=True)
        return cls(
            out_dir=cfg.out_dir, polygons=cfg.polygons, catalog=CatalogSettings(**catalog), app=str(cfg.app),
            layer=cfg.layer, start=_parse_date(cfg.dates.start, "dates.start"),
            end=_parse_date(cfg.dates.end, "dates.end"),
            target_year=None if cfg.target_year is None else int(cfg.target_year),
            prodes=ProdesSettings(layer=cfg.layer, **cfg.prodes), max_cloud_cover=float(cfg.max_cloud_cover),
            min_coverage=float(cfg.min_coverage), bands=None if cfg.bands is None else tuple(cfg.bands),
            areas=AreaSettings(**cfg.areas),
            download=DownloadSettings(**cfg.download), force=bool(cfg.force), progress=bool(cfg.progress),
        )

    def area_dir(self, area: str) -> Path:
        return self.out_dir / "areas" / area

    def record_path(self, area: str) -> Path:
        return self.area_dir(area) / RECORD_FILE

    def scene_folders(self, area: str, choice: Choice) -> list[Path]:
        """Where each chosen item goes: ``scenes/<area>__<item>`` (burned area), ``areas/<area>/<role>`` (pairs)."""
        if self.app == "deforestation":
            return [self.area_dir(area) / role for role in choice.roles]
        return [self.out_dir / "scenes" / f"{area}{SCENE_SEPARATOR}{safe_name(c.id)}" for c in choice.chosen]


# --- areas --------------------------------------------------------------------------------------------------------

def read_polygons(config: AcquireConfig) -> tuple[gpd.GeoSeries, gpd.GeoDataFrame | None]:
    """(polygons areas are drawn around as a GeoSeries in the file's CRS, the PRODES frame or None): every polygon
    (burned area), or the deforestation polygons of ``target_year`` and the whole frame as ``data_prep.prodes``
    reads it (deforestation)."""
    info = polygon_file_info(config.polygons, config.layer)
    frame = None
    if config.app == "deforestation":
        frame = _prodes_frame(config, info)
        geoms = change_polygons(frame, config.target_year, config.prodes).geometry
        what = (f"deforestation polygon of {config.target_year} "
                f"(main_class in {list(config.prodes.deforestation_classes)})")
    else:
        try:
            geoms = pyogrio.read_dataframe(config.polygons, layer=config.layer, columns=[]).geometry
        except (DataSourceError, DataLayerError) as exc:
            raise InputError(f"polygons {config.polygons}: unreadable ({first_line(exc)})") from None
        geoms = geoms[geoms.notna() & ~geoms.is_empty & geoms.geom_type.isin(["Polygon", "MultiPolygon"])]
        what = f"polygon geometry (found {info['geometry_type']})"
    if geoms.empty:
        raise InputError(f"polygons {config.polygons}: holds no {what}")
    return geoms, frame


def _prodes_frame(config: AcquireConfig, info: Mapping) -> gpd.GeoDataFrame:
    """The whole PRODES file as ``data_prep.prodes.read_prodes`` reads it (through a one-pixel grid over its bounds)."""
    left, bottom, right, top = info["total_bounds"]
    pixel = Affine(max(right - left, 1e-9), 0, left, 0, -max(top - bottom, 1e-9), top)
    return read_prodes(config.polygons, Grid(CRS.from_user_input(info["crs"]), pixel, 1, 1), config.prodes)


# --- one area -----------------------------------------------------------------------------------------------------

def date_windows(config: AcquireConfig, areas: Sequence[Area], frame: gpd.GeoDataFrame | None,
                 ) -> dict[str, tuple[date, date]]:
    """Area name -> search window: ``dates`` (burned area), or the PRODES window of the polygons that intersect the
    area (deforestation; ``frame`` from ``read_polygons``), as ``data_prep.prodes`` computes it for the prep."""
    if config.app == "burned_area":
        return {a.name: (config.start, config.end) for a in areas}
    projected: dict[str, gpd.GeoDataFrame] = {}
    windows = {}
    for area in areas:
        if area.crs not in projected:
            projected[area.crs] = frame.to_crs(area.crs)
        near = projected[area.crs].iloc[projected[area.crs].sindex.query(area.box, predicate="intersects")]
        try:
            windows[area.name] = date_window(window_dates(near, config.target_year, config.prodes),
                                             config.prodes.date_margin_days)
        except ValueError:
            raise InputError(f"polygons {config.polygons}: area {area.name} has no deforestation polygon of "
                             f"{config.target_year - 1} or {config.target_year} with an image_date") from None
    return windows


def _record_stamp(config: AcquireConfig, area: Area, window: tuple[date, date]) -> dict:
    return json.loads(json.dumps({
        "app": config.app, "catalog": asdict(config.catalog), "bands": list(config.bands), "crs": area.crs,
        "bounds": list(area.bounds), "date_window": [d.isoformat() for d in window],
        "max_cloud_cover": config.max_cloud_cover, "min_coverage": config.min_coverage}))


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _remove_stale(config: AcquireConfig, area: str, keep: Sequence[Path]) -> None:
    """Remove burned-area scene folders of ``area`` (and their partial folders) that are not chosen any more."""
    scenes = config.out_dir / "scenes"
    keep = {*keep, *(partial_folder(p) for p in keep)}
    for stale in [*scenes.glob(f"{area}{SCENE_SEPARATOR}*"), *scenes.glob(f".{area}{SCENE_SEPARATOR}*")]:
        if stale not in keep:
            log.info("area %s: removing %s (no longer chosen)", area, stale)
            shutil.rmtree(stale)


def acquire_area(area: Area, window: tuple[date, date], config: AcquireConfig, client, fetcher: Fetcher) -> list[str]:
    """Search, choose and fetch one area; returns the ids of chosen items that are not online (not fetched).

    NoItems (recorded in the area's ``acquisition.json``) when no item, or no pair, can be chosen.
    """
    path = config.record_path(area.name)
    stamp = _record_stamp(config, area, window)
    record = _read_record(path)
    if (not config.force and record and record.get("stamp") == stamp and record.get("status") == "complete"
            and all((config.out_dir / f).is_dir() for f in record["folders"])):
        log.info("area %s: acquisition complete, skipped", area.name)
        return []
    items = search_items(client, config.catalog, area.lonlat_bounds(), *window, config.max_cloud_cover)
    candidates = candidates_for(items, area.box, area.crs, config.catalog, config.bands)
    if config.app == "deforestation":
        choice = choose_pair(candidates, config.max_cloud_cover, config.min_coverage)
    else:
        choice = choose_cover(candidates, area.box, config.max_cloud_cover)
    folders = config.scene_folders(area.name, choice)
    offline = [c.id for c in choice.chosen if not c.online]
    record = {
        "area": area.name, "crs": area.crs, "bounds": list(area.bounds), "date_window": stamp["date_window"],
        "catalog": config.catalog.url, "collection": config.catalog.collection, "stamp": stamp,
        "candidates": [c.facts() for c in candidates],
        "chosen": [{**c.facts(), "role": role, "folder": str(folder.relative_to(config.out_dir))}
                   for c, role, folder in zip(choice.chosen, choice.roles, folders)],
        "dropped": dict(choice.dropped), "uncovered_fraction": round(choice.uncovered, 4), "offline": offline,
        "folders": [str(f.relative_to(config.out_dir)) for f in folders], "status": "fetching",
    }
    if not choice.chosen:
        atomic_write_text(path, json.dumps({**record, "status": "no_items"}, indent=1))
        need = (f"pair of dates each covering {config.min_coverage:.0%} of it" if config.app == "deforestation"
                else "item")
        raise NoItems(f"area {area.name}: no {need} in {config.catalog.collection} of {config.catalog.url} within "
                      f"{window[0]}..{window[1]} at <= {config.max_cloud_cover:g}% cloud ({len(items)} found"
                      + (f"; dropped: {_summary(choice.dropped)}" if choice.dropped else "") + f"; see {path})")
    atomic_write_text(path, json.dumps(record, indent=1))
    if config.app == "burned_area":
        _remove_stale(config, area.name, folders)
    if choice.uncovered > 0:
        log.warning("area %s: %.1f%% of it is covered by no usable item", area.name, 100 * choice.uncovered)
    assets = {band: config.catalog.assets[band] for band in config.bands}
    jobs = [SceneJob(c.item, folder, assets, area.bounds, area.crs, claim)
            for c, folder, claim in zip(choice.chosen, folders, choice.claims) if c.online]
    fetcher.fetch(jobs)
    atomic_write_text(path, json.dumps({**record, "status": "offline" if offline else "complete"}, indent=1))
    log.info("area %s: %s", area.name, "; ".join(f"{r} {c.id} ({c.cloud:g}% cloud)" for c, r in
                                                   zip(choice.chosen, choice.roles)))
    return offline


def _summary(dropped: Mapping[str, str], limit: int = 3) -> str:
    listed = [f"{i}: {r}" for i, r in list(dropped.items())[:limit]]
    return ", ".join(listed) + (f" and {len(dropped) - limit} more" if len(dropped) > limit else "")


# --- the stage ----------------------------------------------------------------------------------------------------

def acquire(config: AcquireConfig, stage: str = "all", area: str | None = None) -> list[Area]:
    """Plan the areas and (``stage=all``) acquire ``area`` (a name; None: every area). Returns the areas acted on.

    Everything that can be checked is checked before anything is written: settings, polygons, each area's date
    window, the catalogue and its collection, the token variable. After all areas are done: NoItems when some area
    has no item to choose, else ItemsOffline when chosen items are not online.
    """
    if stage not in STAGES:
        raise InputError(f"stage: unknown stage {stage!r} (expected one of {', '.join(STAGES)})")
    if stage == "all":
        config.check_dates()
    geoms, frame = read_polygons(config)
    areas = plan_areas(geoms, config.areas)
    if area is not None:
        named = {a.name: a for a in areas}
        if area not in named:
            raise InputError(f"area {area}: no such area of {config.polygons} ({len(areas)} areas: "
                             f"{areas[0].name}..{areas[-1].name}; stage=areas lists them)")
        selected = [named[area]]
    else:
        selected = areas
    if stage == "areas":
        path = write_areas(config.out_dir, areas)
        log.info("%d areas written to %s", len(areas), path)
        return areas
    windows = date_windows(config, selected, frame)
    client = open_catalog(config.catalog, config.download)
    fetcher = Fetcher(config.catalog, config.download, config.progress)
    write_areas(config.out_dir, areas)
    empty: list[NoItems] = []
    offline = {}
    for target in selected:
        try:
            ids = acquire_area(target, windows[target.name], config, client, fetcher)
        except NoItems as exc:
            empty.append(exc)
            log.error("%s", exc)
            continue
        if ids:
            offline[target.name] = ids
    if empty:
        more = f" (and {len(empty) - 1} more areas without one)" if len(empty) > 1 else ""
        raise NoItems(f"{empty[0]}{more}")
    if offline:
        raise ItemsOffline("items not online yet in " + config.catalog.url + " (long-term archive): "
                           + "; ".join(f"{a}: {', '.join(ids)}" for a, ids in offline.items())
                           + "; re-run once they are online")
    return selected


def _hydra_task(cfg: DictConfig) -> None:
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    config = AcquireConfig.from_cfg(cfg)
    try:
        areas = acquire(config, stage=str(cfg.stage), area=None if cfg.area is None else str(cfg.area))
    except ItemsOffline as exc:
        _exit(exc, NOT_READY_EXIT_CODE)
    except RemoteError as exc:
        _exit(exc, REMOTE_ERROR_EXIT_CODE)
    if cfg.stage == "areas":
        print(f"area={','.join(a.name for a in areas)}")  # ready for -m


def _exit(exc: Exception, code: int) -> None:
    print(f"error: {one_line(exc)}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    """Command-line entry: bad input or config exits 2, a failing server 1, items not online 3; each one line."""
    from apps.foundation.cli import record_stage, run_hydra_app

    run_hydra_app(record_stage(_hydra_task), "prep_acquire")


if __name__ == "__main__":
    main()
