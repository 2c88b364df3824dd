"""Synthetic overhead scenes with objects of four classes, in DOTA's layout: the detection app's built-in data.

    python -m data_prep.synthetic_objects out_dir=data/synthetic_objects n_scenes=6 size=1024 seed=0

writes ``out_dir/images/<scene>.tif`` (RGB uint8 GeoTIFF, UTM zone 33N, 0.5 m pixels) and
``out_dir/labelTxt/<scene>.txt`` (DOTA v1.0 lines ``x1 y1 ... x4 y4 class difficult`` after
``imagesource:`` and ``gsd:`` lines), so they flow through the DOTA reader of ``data_prep.detection``
with ``classes=[vehicle,storage_tank,building,aircraft]``.

Objects (CLASSES) differ in shape, colour and size, on a textured grass-and-soil background:
``vehicle`` red squares of 12-20 px, ``storage_tank`` light grey discs of 24-40 px, ``building``
blue rectangles of 40-90 x 16-28 px (either way round), ``aircraft`` yellow crosses (fuselage and
wings) of 30-50 px. A scene holds about ``density`` objects per 1024 x 1024 px, apart from each other
and from the scene's edge; a share ``difficult_fraction`` of them are faint (blended into the
background) and labelled difficult. Boxes are the shapes' pixel extents (x2, y2 exclusive).
Everything is deterministic from the seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from omegaconf import DictConfig
from rasterio import Affine

from apps.foundation.errors import InputError
from apps.foundation.files import atomic_path, atomic_write_text
from data_prep.synthetic import ValueNoise

log = logging.getLogger(__name__)

CLASSES = ("vehicle", "storage_tank", "building", "aircraft")
CLASS_SHARES = (0.4, 0.2, 0.25, 0.15)
COLOURS = {"vehicle": (215, 45, 40), "storage_tank": (228, 228, 222), "building": (55, 95, 200),
           "aircraft": (235, 200, 40)}
GRASS, SOIL = np.array([88, 112, 62], np.float32), np.array([138, 118, 88], np.float32)
PIXEL_SIZE_M = 0.5
EPSG = 32633
MARGIN_PX = 4
"""Free pixels kept around each object and along the scene's edge."""
FAINT_ALPHA = 0.3
"""Opacity of a difficult object's colour over the background."""


@dataclass(frozen=True)
class SyntheticObjects:
    """What ``generate_object_scenes`` wrote: DOTA's ``images`` and ``labelTxt`` folders, scene names, classes."""

    images: Path
    labels: Path
    scenes: list[str]
    classes: tuple[str, ...] = CLASSES


def object_mask(kind: str, rng: np.random.Generator) -> np.ndarray:
    """(h, w) bool footprint of one object of class ``kind``, its box filled edge to edge."""
    if kind == "vehicle":
        side = int(rng.integers(12, 21))
        return np.ones((side, side), bool)
    if kind == "storage_tank":
        diameter = int(rng.integers(24, 41))
        yy, xx = np.mgrid[:diameter, :diameter] + 0.5 - diameter / 2
        return yy ** 2 + xx ** 2 <= (diameter / 2) ** 2
    if kind == "building":
        mask = np.ones((int(rng.integers(16, 29)), int(rng.integers(40, 91))), bool)
        return mask if rng.random() < 0.5 else mask.T
    if kind == "aircraft":
        length = int(rng.integers(30, 51))
        span = max(length - 2, int(round(length * rng.uniform(0.85, 1.0))))
        mask = np.zeros((span, length), bool)  # nose to the right
        body = max(4, length // 6)
        mask[(span - body) // 2:(span + body) // 2, :] = True
        chord = max(5, length // 5)
        wing_at = int(length * 0.45)
        mask[:, wing_at:wing_at + chord] = True
        tail = max(3, length // 8)
        mask[span // 2 - span // 4:span // 2 + span // 4, :tail] = True
        return np.rot90(mask, int(rng.integers(4)))
    raise ValueError(f"unknown object class {kind!r}")


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 RGB grass and soil with smooth patches, fine texture and pixel noise."""
    cover = np.clip(0.5 + 0.5 * ValueNoise(rng, size, size, 160).rows(0, size), 0, 1)[..., None]
    texture = 1 + 0.08 * ValueNoise(rng, size, size, 10).rows(0, size)[..., None]
    image = (GRASS + (SOIL - GRASS) * cover) * texture
    return image + rng.normal(0, 5, image.shape).astype(np.float32)


def place_objects(rng: np.random.Generator, size: int, count: int) -> list[tuple[str, np.ndarray, int, int]]:
    """Up to ``count`` objects (class, footprint, x, y of the top-left corner) apart from each other by
    MARGIN_PX and inside the scene by MARGIN_PX; positions that collide are drawn again (a few tries)."""
    taken = np.zeros((size, size), bool)
    placed = []
    for kind in rng.choice(CLASSES, size=count, p=CLASS_SHARES):
        mask = object_mask(str(kind), rng)
        h, w = mask.shape
        for _ in range(20):
            x = int(rng.integers(MARGIN_PX, size - w - MARGIN_PX))
            y = int(rng.integers(MARGIN_PX, size - h - MARGIN_PX))
            if not taken[y - MARGIN_PX:y + h + MARGIN_PX, x - MARGIN_PX:x + w + MARGIN_PX].any():
                taken[y:y + h, x:x + w] = True
                placed.append((str(kind), mask, x, y))
                break
    return placed


def draw_scene(seed: int, size: int, density: tuple[int, int], difficult_fraction: float
               ) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int], bool]]]:
    """One scene: (3, size, size) uint8 RGB and its objects (class, (x1, y1, x2, y2) px, difficult)."""
    rng = np.random.default_rng(seed)
    image = background(rng, size)
    count = int(round(rng.integers(density[0], density[1] + 1) * size * size / 1024 ** 2))
    objects = []
    for kind, mask, x, y in place_objects(rng, size, count):
        h, w = mask.shape
        difficult = bool(rng.random() < difficult_fraction)
        colour = np.clip(np.array(COLOURS[kind], np.float32) + rng.normal(0, 8, 3), 0, 255)
        alpha = FAINT_ALPHA if difficult else 1.0
        patch = image[y:y + h, x:x + w]
        patch[mask] = patch[mask] * (1 - alpha) + colour * alpha
        objects.append((kind, (x, y, x + w, y + h), difficult))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8).transpose(2, 0, 1), objects


def dota_lines(objects: list[tuple[str, tuple[int, int, int, int], bool]], gsd: float) -> str:
    """A DOTA labelTxt file: header lines, then each box as its four corners, class and difficult."""
    lines = ["imagesource:geoscale-synthetic", f"gsd:{gsd:g}"]
    for kind, (x1, y1, x2, y2), difficult in objects:
        corners = (x1, y1, x2, y1, x2, y2, x1, y2)
        lines.append(" ".join(f"{v:.1f}" for v in corners) + f" {kind} {int(difficult)}")
    return "\n".join(lines) + "\n"


def generate_object_scenes(out_dir: Path, n_scenes: int = 6, size: int = 1024, seed: int = 0,
                           density: tuple[int, int] = (20, 60), difficult_fraction: float = 0.08,
                           compress: str | None = "deflate") -> SyntheticObjects:
    """Write ``n_scenes`` scenes of ``size`` x ``size`` px with objects in DOTA's layout under ``out_dir``."""
    if n_scenes < 1 or size < 128:
        raise InputError(f"need n_scenes >= 1 and size >= 128 px, got n_scenes={n_scenes}, size={size}")
    if not 0 <= difficult_fraction <= 1 or not 0 < density[0] <= density[1]:
        raise InputError(f"need 0 <= difficult_fraction <= 1 and 0 < density[0] <= density[1], got "
                         f"{difficult_fraction} and {list(density)}")
    out_dir = Path(out_dir)
    images, labels = out_dir / "images", out_dir / "labelTxt"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n_scenes):
        name = f"scene_{i:02d}"
        pixels, objects = draw_scene(int(rng.integers(2**31)), size, density, difficult_fraction)
        west, north = 400_000 + 1_000 * i, 5_000_000 + 2_000 * int(rng.integers(100))
        profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
                   "crs": f"EPSG:{EPSG}", "transform": Affine(PIXEL_SIZE_M, 0, west, 0, -PIXEL_SIZE_M, north),
                   "tiled": True, "blockxsize": 256, "blockysize": 256, "photometric": "RGB",
                   **({"compress": compress} if compress else {})}
        with atomic_path(images / f"{name}.tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.write(pixels)
        atomic_write_text(labels / f"{name}.txt", dota_lines(objects, PIXEL_SIZE_M))
        log.info("synthetic %s: %d objects (%d difficult)", name, len(objects), sum(d for *_, d in objects))
        names.append(name)
    return SyntheticObjects(images, labels, names)


def _hydra_task(cfg: DictConfig) -> None:
    data = generate_object_scenes(Path(cfg.out_dir), n_scenes=int(cfg.n_scenes), size=int(cfg.size),
                                  seed=int(cfg.seed), density=tuple(cfg.density),
                                  difficult_fraction=float(cfg.difficult_fraction), compress=cfg.compress)
    log.info("wrote %d scenes to %s; prepare them with: python -m data_prep.detection format=dota images=%s "
             "labels=%s classes=[%s] out_dir=<chip dataset>", len(data.scenes), data.images.parent, data.images,
             data.labels, ",".join(data.classes))


def main() -> None:
    """Command-line entry: bad input or config prints one line ``error: ...`` and exits 2."""
    from apps.foundation.cli import run_hydra_app

    run_hydra_app(_hydra_task, "prep_synthetic_objects")


if __name__ == "__main__":
    main()
