"""Burned-area data prep: Sentinel-2 L2A scenes + burn polygons -> a chip dataset.

    python -m data_prep.burned_area scenes_dir=scenes polygons=burn.gpkg out_dir=data/chips/burned_area
    python -m data_prep.burned_area -m scene=a,b,c stage=chip scenes_dir=... polygons=... out_dir=...
    python -m data_prep.burned_area stage=split scenes_dir=... out_dir=...

Per scene: normalize (B04, B03, B02 stretched to uint8) -> label (polygons rasterized) -> chip
(normalized, TCI and mask chips kept by the burned-area rule, ``BurnChipSettings``); then split over
all scenes (``split.method``: whole scenes or spatial blocks, ``data_prep.split``) writes the manifest
and, last, ``dataset.json``. A scene that yields no chip (no burn polygon on it, smaller than one
chip, no window kept) is skipped and listed in the dataset's attrs ``skipped``; the prep fails only
when no scene yields a chip. Layout of ``out_dir``::

    dataset.json, manifest.csv          the chip dataset (apps.foundation.chips), written by split
    scenes/<scene>/*.npy, chips.json    chip arrays and kept chips of each scene
    work/<scene>/normalized.tif         normalized RGB, uint8, nodata 0
    work/<scene>/label.tif              mask, uint8 0/1, 255 nodata
    work/<scene>/skipped.json           why the scene yields no chip, and at which stage (while it does not)
    logs/                               Hydra logs of each run

Each output records (a stamp) the settings and input files it was made from; a re-run skips
outputs whose stamp still matches, so a prep that was killed midway finishes where it stopped.
Any stage that rewrites something first removes ``dataset.json``, so the dataset never looks
complete while it is being changed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import DictConfig, OmegaConf

from apps.foundation.chips import ChipPreparation, invalidate_dataset
from apps.foundation.errors import InputError
from apps.foundation.files import atomic_write_text
from data_prep.chipping import ChipSettings, ChipWindows, SceneChips, chip_scene, read_scene_chips
from data_prep.geotiff import GeoTiffSettings, check_made_with, read_stamp, stage_stamp, stamp_tags
from data_prep.label import CLASSES, LabelSettings, label_raster, polygon_file_info
from data_prep.normalize import NormalizeSettings, normalize_bands
from data_prep.scenes import NoChips, Scene, find_scene, list_folders, resolve_folder, scene_name
from data_prep.split import SplitSettings, write_split_dataset

log = logging.getLogger(__name__)

STAGES = ("normalize", "label", "chip", "split", "all")
SCENE_STAGES = ("normalize", "label", "chip")
TCI_BAND = "TCI"
SKIPPED_FILE = "skipped.json"


@dataclass(frozen=True)
class BurnChipSettings(ChipSettings):
    """The sliding windows of ChipSettings and the burned-area keep rule: a chip is kept when burned and
    unburned each cover at least ``min_class_fraction`` of it and nodata at most ``max_nodata_fraction``."""

    min_class_fraction: float = 0.1
    max_nodata_fraction: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.min_class_fraction <= 0.5:
            raise InputError(f"chip.min_class_fraction: must be in [0, 0.5], got {self.min_class_fraction}")
        if not 0 <= self.max_nodata_fraction <= 1:
            raise InputError(f"chip.max_nodata_fraction: must be in [0, 1], got {self.max_nodata_fraction}")

    def keep(self, windows: ChipWindows) -> np.ndarray:
        """(N,) bool: both classes >= ``min_class_fraction``, nodata <= ``max_nodata_fraction``."""
        return ((windows.positive_fraction >= self.min_class_fraction)
                & (windows.negative_fraction >= self.min_class_fraction)
                & (windows.nodata_fraction <= self.max_nodata_fraction))


@dataclass(frozen=True)
class BurnedAreaPreparation(ChipPreparation):
    """The burned-area prep's record (``dataset.json`` attrs): ChipPreparation's geometry and bands, the
    keep rule, the percentile stretch, the split and the inputs (absolute paths)."""

    stride: int | None = None
    min_class_fraction: float | None = None
    max_nodata_fraction: float | None = None
    normalize: NormalizeSettings | None = None
    split: dict | None = None
    scenes_dir: str | None = None
    polygons: str | None = None


@dataclass(frozen=True)
class PrepConfig:
    """Everything the prep needs, checked; built from the Hydra config by ``from_cfg``."""

    out_dir: Path | str
    scenes_dir: Path | str | None = None
    polygons: Path | str | None = None
    bands: tuple[str, ...] = ("B04", "B03", "B02")
    tci: bool = True
    normalize: NormalizeSettings = NormalizeSettings()
    label: LabelSettings = LabelSettings()
    chip: BurnChipSettings = BurnChipSettings()
    split: SplitSettings = SplitSettings()
    geotiff: GeoTiffSettings = GeoTiffSettings()
    force: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("out_dir", "scenes_dir", "polygons"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> "PrepConfig":
        return cls(
            out_dir=cfg.out_dir, scenes_dir=cfg.scenes_dir, polygons=cfg.polygons,
            bands=tuple(cfg.bands), tci=bool(cfg.tci),
            normalize=NormalizeSettings(**cfg.normalize), label=LabelSettings(**cfg.label),
            chip=BurnChipSettings(**cfg.chip),
            split=SplitSettings(**{**cfg.split, "fixed": dict(cfg.split.fixed or {})}),
            geotiff=GeoTiffSettings(**cfg.geotiff), force=bool(cfg.force), progress=bool(cfg.progress),
        )

    @property
    def scene_bands(self) -> tuple[str, ...]:
        """The band files each scene must have."""
        return (*self.bands, TCI_BAND) if self.tci else self.bands

    def work_dir(self, scene: str) -> Path:
        return self.out_dir / "work" / scene

    def normalized_path(self, scene: str) -> Path:
        return self.work_dir(scene) / "normalized.tif"

    def label_path(self, scene: str) -> Path:
        return self.work_dir(scene) / "label.tif"

    def skipped_path(self, scene: str) -> Path:
        return self.work_dir(scene) / SKIPPED_FILE

    def array_descriptions(self) -> dict[str, dict]:
        """The dataset's ``arrays`` entry: what each chip array holds."""
        arrays = {"normalized": {"kind": "image", "channels": len(self.bands), "bands": list(self.bands),
                                 "nodata": 0}}
        if self.tci:
            arrays["tci"] = {"kind": "image", "channels": 3, "bands": ["TCI_R", "TCI_G", "TCI_B"], "nodata": 0}
        arrays["mask"] = {"kind": "label"}
        return arrays


def _require(path: Path, scene: str, stage: str) -> Path:
    if not path.is_file():
        raise InputError(f"scene {scene}: {path} missing (run stage={stage} for this scene first)")
    return path


def run_normalize(scene: Scene, config: PrepConfig) -> bool:
    """Normalize one scene unless its ``normalized.tif`` is up to date; True if it ran."""
    out = config.normalized_path(scene.name)
    stamp = stage_stamp("normalize", {"bands": list(config.bands), **asdict(config.normalize)},
                   {band: scene.bands[band] for band in config.bands})
    if not config.force and read_stamp(out) == stamp:
        return False
    invalidate_dataset(config.out_dir)
    normalize_bands({band: scene.bands[band] for band in config.bands}, out, config.normalize, config.geotiff,
                    stamp_tags(stamp), config.progress)
    return True


def _polygons(config: PrepConfig) -> Path:
    if config.polygons is None:
        raise InputError("polygons: not set (polygons=<burn polygon file>)")
    return config.polygons


def run_label(scene: Scene, config: PrepConfig) -> bool:
    """Rasterize the polygons onto one scene unless its ``label.tif`` is up to date; True if it ran."""
    polygons = _polygons(config)
    normalized = _require(config.normalized_path(scene.name), scene.name, "normalize")
    out = config.label_path(scene.name)
    stamp = stage_stamp("label", asdict(config.label), {"polygons": polygons, "reference": normalized})
    if not config.force and read_stamp(out) == stamp:
        return False
    invalidate_dataset(config.out_dir)
    label_raster(polygons, normalized, out, config.label, config.geotiff, stamp_tags(stamp),
                 config.progress)
    return True


def _chip_inputs(scene: Scene, config: PrepConfig) -> tuple[Path, dict[str, Path]]:
    label = _require(config.label_path(scene.name), scene.name, "label")
    images = {"normalized": _require(config.normalized_path(scene.name), scene.name, "normalize")}
    if config.tci:
        images["tci"] = scene.bands[TCI_BAND]
    return label, images


def run_chip(scene: Scene, config: PrepConfig) -> bool:
    """Chip one scene unless its stored chips are up to date; True if it ran."""
    label, images = _chip_inputs(scene, config)
    stamp = stage_stamp("chip", asdict(config.chip), {"mask": label, **images})
    stored = read_scene_chips(config.out_dir, scene.name)
    if not config.force and stored is not None and stored.stamp == stamp:
        return False
    invalidate_dataset(config.out_dir)
    chip_scene(scene.name, label, images, config.out_dir, config.chip, config.chip.keep, CLASSES,
               (str(scene.folder.resolve()),), stamp, config.progress)
    return True


STAGE_RUNNERS: dict[str, Callable[[Scene, PrepConfig], bool]] = {
    "normalize": run_normalize, "label": run_label, "chip": run_chip,
}


def read_skip(config: PrepConfig, scene: str) -> dict | None:
    """Why ``scene`` yields no chip, as recorded by the stage that found out: {"stage", "reason"}; None if not skipped."""
    try:
        return json.loads(config.skipped_path(scene).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _set_skip(config: PrepConfig, scene: str, skip: dict | None) -> None:
    """Record (``skip`` = {"stage", "reason"}) or clear (None) that ``scene`` yields no chip."""
    invalidate_dataset(config.out_dir)
    if skip is None:
        config.skipped_path(scene).unlink(missing_ok=True)
    else:
        atomic_write_text(config.skipped_path(scene), json.dumps(skip))


def run_scene_stages(scene: Scene, stages: tuple[str, ...], config: PrepConfig) -> None:
    """Run ``stages`` (in SCENE_STAGES order) on one scene. A stage that finds the scene yields no chip
    (NoChips) records why in ``skipped.json`` and ends the scene's stages; later stages of a scene so
    recorded are skipped, and the record goes when the stage that made it succeeds."""
    skip = read_skip(config, scene.name)
    for name in stages:
        if skip is not None and SCENE_STAGES.index(skip["stage"]) < SCENE_STAGES.index(name):
            log.info("scene %s: %s skipped, the scene yields no chip (%s: %s)", scene.name, name, skip["stage"],
                     skip["reason"])
            return
        try:
            ran = STAGE_RUNNERS[name](scene, config)
        except NoChips as exc:
            _set_skip(config, scene.name, {"stage": name, "reason": exc.reason})
            log.warning("scene %s: yields no chip, skipped (%s)", scene.name, exc)
            return
        if skip is not None and skip["stage"] == name:
            _set_skip(config, scene.name, None)
            skip = None
        log.info("scene %s: %s %s", scene.name, name, "done" if ran else "up to date, skipped")


def run_split(scene_names: list[str], config: PrepConfig) -> Path:
    """Split the chipped scenes and write the dataset index; returns the path of ``dataset.json``."""
    invalidate_dataset(config.out_dir)
    stored: list[SceneChips] = []
    skipped: dict[str, str] = {}
    for name in scene_names:
        skip = read_skip(config, name)
        if skip is not None:
            skipped[name] = f"{skip['stage']}: {skip['reason']}"
            continue
        chips = read_scene_chips(config.out_dir, name)
        if chips is None:
            raise InputError(f"scene {name}: not chipped yet in {config.out_dir} (run stage=chip scene={name})")
        check_made_with(f"scene {name}", "chip", chips.stamp, asdict(config.chip))
        stored.append(chips)
    split_attrs = asdict(config.split)
    if config.split.method == "blocks":
        split_attrs["block_size_px"] = config.split.block_size(config.chip.size)
    preparation = BurnedAreaPreparation(
        chip_size=config.chip.size, overlap=config.chip.overlap, bands=tuple(config.bands),
        stride=config.chip.stride, min_class_fraction=config.chip.min_class_fraction,
        max_nodata_fraction=config.chip.max_nodata_fraction, normalize=config.normalize, split=split_attrs,
        scenes_dir=str(config.scenes_dir.resolve()) if config.scenes_dir else None,
        polygons=str(config.polygons.resolve()) if config.polygons else None,
    )
    return write_split_dataset(config.out_dir, stored, config.split, CLASSES, config.array_descriptions(),
                               preparation, skipped)


def prepare(config: PrepConfig, stage: str = "all", scene: str | None = None) -> Path | None:
    """Run ``stage`` (one of STAGES) for ``scene`` (a name or folder; None: every scene of scenes_dir).

    ``stage=all`` runs normalize, label and chip on each scene, then split (only when ``scene`` is
    None). Returns the path of ``dataset.json`` when the split ran.
    """
    if stage not in STAGES:
        raise InputError(f"stage: unknown stage {stage!r} (expected one of {', '.join(STAGES)})")
    if stage == "split":
        if scene is not None:
            raise InputError("stage=split works on all scenes of scenes_dir: drop scene=")
        return run_split([scene_name(f) for f in list_folders(config.scenes_dir)], config)

    folders = [resolve_folder(scene, config.scenes_dir)] if scene is not None else list_folders(config.scenes_dir)
    scenes = [find_scene(folder, config.scene_bands) for folder in folders]
    names = [item.name for item in scenes]
    if len(set(names)) < len(names):
        raise InputError(f"scenes_dir {config.scenes_dir}: scene names repeat ({', '.join(sorted(names))})")
    stages = SCENE_STAGES if stage == "all" else (stage,)
    if "label" in stages:
        polygon_file_info(_polygons(config), config.label.layer)
    for item in scenes:
        run_scene_stages(item, stages, config)
    if stage == "all" and scene is None:
        return run_split([item.name for item in scenes], config)
    if stage == "all":
        log.info("scene %s prepared; run stage=split once every scene is", scenes[0].name)
    return None


def _hydra_task(cfg: DictConfig) -> None:
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    prepare(PrepConfig.from_cfg(cfg), stage=str(cfg.stage), scene=None if cfg.scene is None else str(cfg.scene))


def main() -> None:
    """Command-line entry: bad input or config prints one line ``error: ...`` and exits 2."""
    from apps.foundation.cli import record_stage, run_hydra_app

    run_hydra_app(record_stage(_hydra_task), "prep_burned_area")


if __name__ == "__main__":
    main()
