"""Whole-scene burned-area prediction with a trained checkpoint.

    python -m apps.burned_area.predict CHECKPOINT_OR_RUN_DIR SCENE --out OUT [--chip-size 256]
        [--overlap 0.25] [--batch-size 8] [--threshold 0.5] [--device auto|cpu|cuda] [--min-area-m2 0]

The scene is prepared as the network's training chips were (``input_set`` of the checkpoint):
"normalized" stretches B04, B03, B02 between this scene's 1st and 99th percentiles
(data_prep.normalize), "tci" takes the scene's TCI as it is. A sliding window of chips covers the
whole raster, edges included; overlapping predictions are blended with a tent weight that is
highest at the chip centre. Only a rolling band of chip-size rows is kept as float, and finished
rows are written as they come, so a full 10980 x 10980 tile needs little memory.

Writes ``OUT.tif`` (on the scene's grid, uint8, nodata 255; band 1: burned mask 0/1, band 2:
burned probability x 254) and ``OUT.geojson`` (burned polygons in EPSG:4326 with ``area_m2``
measured in the scene's CRS), each through a temporary name.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from apps.foundation.errors import InputError
from apps.foundation.files import atomic_path
from apps.foundation.chips import IGNORE_INDEX
from apps.foundation.rundir import resolve_checkpoint
from data_prep.geotiff import (
    GeoTiffSettings, first_line, in_gdal_env, open_raster, output_profile, progress, reading,
)

NODATA = IGNORE_INDEX
"""Nodata value of both output bands."""
PROBABILITY_SCALE = 254
"""Band 2 holds round(probability * PROBABILITY_SCALE), so 255 stays free for nodata."""
INPUT_BANDS = {"normalized": ("B04", "B03", "B02"), "tci": ("TCI",)}
"""Scene bands each input set is made from (as data_prep.burned_area prepared the training chips)."""
GEOJSON_CRS = "EPSG:4326"
DEVICES = ("auto", "cpu", "cuda")


def output_paths(out: Path) -> tuple[Path, Path]:
    """(GeoTIFF, GeoJSON) paths for the output prefix ``out`` (a trailing .tif is dropped)."""
    out = Path(out)
    if out.suffix.lower() in (".tif", ".tiff"):
        out = out.with_suffix("")
    return out.with_name(f"{out.name}.tif"), out.with_name(f"{out.name}.geojson")


def tent(size: int) -> np.ndarray:
    """Blending weight along one chip side: (size,) float32 rising linearly from the edges to 1 at the
    centre, never zero."""
    i = np.arange(size)
    ramp = np.minimum(i + 1, size - i).astype(np.float32)
    return ramp / ramp.max()


def coverage(offsets: np.ndarray, ramp: np.ndarray, length: int) -> np.ndarray:
    """Sum of the ramps of windows at ``offsets`` along an axis of ``length`` px: (length,) float32.

    The 2-D weight of a window is the outer product of its row and column ramps, so the total weight
    at a pixel is the product of the row and column coverages.
    """
    total = np.zeros(length, dtype=np.float32)
    for offset in offsets:
        total[offset:offset + len(ramp)] += ramp
    return total


@in_gdal_env
def predict_scene(
    task: Any,
    image_path: Path,
    out_path: Path,
    chip_size: int = 256,
    overlap: float = 0.25,
    batch_size: int = 8,
    threshold: float = 0.5,
    device: str = "cpu",
    min_area_m2: float = 0.0,
    tags: Mapping[str, str] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Predict burned area over a prepared image and write ``OUT.tif`` and ``OUT.geojson`` (see module doc).

    ``task``: a module mapping (B, 3, chip, chip) float in [0, 1] to logits (B, 2, chip, chip), class 1
    burned. ``image_path``: 3-band uint8 raster (0 or its nodata value in every band = no data), read as
    value / 255 like the training chips. A raster smaller than a chip is padded with nodata. Burned
    means probability >= ``threshold``. Returns a summary (paths, pixel counts, burned ha, polygons).
    Raises InputError for an unusable image or one without any valid pixel; then nothing is written.
    """
    tif_path, geojson_path = output_paths(out_path)
    with open_raster(image_path, "input image") as src:
        if src.count != 3 or src.dtypes[0] != "uint8":
            raise InputError(f"input image {image_path}: {src.count} band(s) of {src.dtypes[0]}, expected 3 of uint8")
        profile = output_profile(src, 2, "uint8", NODATA, GeoTiffSettings(compress="deflate"))
    # Reads are guarded one by one (not by open_raster), so that write errors keep their own words.
    with rasterio.open(image_path) as src, atomic_path(tif_path) as tmp_tif:
        with rasterio.open(tmp_tif, "w", **profile) as dst:
            valid, burned = _predict_raster(task, src, dst, chip_size, overlap, batch_size, threshold, device,
                                            show_progress)
            dst.descriptions = ("burned", "burned_probability")
            dst.update_tags(threshold=str(threshold), probability_scale=str(PROBABILITY_SCALE),
                            chip_size=str(chip_size), overlap=str(overlap), **(tags or {}))
        if valid == 0:
            raise InputError(f"input image {image_path}: no valid pixels (every pixel is nodata)")
        with atomic_path(geojson_path) as tmp_geojson:
            burned_m2, polygons = write_burned_polygons(tmp_tif, tmp_geojson, min_area_m2)
    return {
        "tif": str(tif_path), "geojson": str(geojson_path),
        "width": profile["width"], "height": profile["height"], "valid_pixels": valid, "burned_pixels": burned,
        "burned_ha": burned_m2 / 1e4, "polygons": polygons, "min_area_m2": min_area_m2,
        "chip_size": chip_size, "overlap": overlap, "threshold": threshold, "device": str(device),
    }


def _predict_raster(task: Any, src: rasterio.DatasetReader, dst: rasterio.io.DatasetWriter, chip: int,
                    overlap: float, batch_size: int, threshold: float, device: str,
                    show_progress: bool) -> tuple[int, int]:
    """Blend sliding-window predictions of ``src`` into ``dst`` row band by row band; returns
    (valid pixels, burned pixels).

    ``acc`` (chip, width) float32 holds the weighted class-1 probabilities of the rows the current
    window row covers; rows that no later window reaches are normalised, written and shifted out.
    Windows without any valid pixel are skipped: no valid pixel lies in them, so the blend of every
    valid pixel still has all its windows and the separable total weight stays exact.
    """
    import torch

    from data_prep.chipping import ChipSettings, window_offsets
    from data_prep.label import BURNED

    height, width = src.height, src.width
    grid_h, grid_w = max(height, chip), max(width, chip)  # padded when the raster is smaller than a chip
    stride = ChipSettings(size=chip, overlap=overlap).stride
    rows, cols = window_offsets(grid_h, chip, stride), window_offsets(grid_w, chip, stride)
    ramp = tent(chip)
    row_weight, col_weight = coverage(rows, ramp, grid_h), coverage(cols, ramp, grid_w)
    nodata = src.nodata if src.nodata is not None else 0
    task.eval().to(device)
    weight = torch.from_numpy(np.outer(ramp, ramp)).to(device)
    acc = np.zeros((chip, grid_w), dtype=np.float32)
    strip = np.zeros((src.count, chip, grid_w), dtype=np.uint8)
    valid_total = burned_total = 0
    with torch.inference_mode():
        for i, row_off in enumerate(progress(rows, f"predict {Path(src.name).name}", show_progress)):
            n_rows = min(chip, height - row_off)
            strip[:] = 0
            with reading(Path(src.name), "input image"):
                strip[:, :n_rows, :width] = src.read(window=Window(0, int(row_off), width, n_rows))
            valid = (strip != nodata).any(axis=0)
            todo = [c for c in cols if valid[:, c:c + chip].any()]
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                image = torch.from_numpy(np.stack([strip[:, :, c:c + chip] for c in batch])).to(device)
                prob = torch.softmax(task(image.float().div_(255.0)).float(), dim=1)[:, BURNED] * weight
                for c, p in zip(batch, prob.cpu().numpy()):
                    acc[:, c:c + chip] += p
            done = (rows[i + 1] if i + 1 < len(rows) else grid_h) - row_off
            n_out = min(done, height - row_off)  # >= 1: every window row starts inside the raster
            probability = acc[:n_out, :width] / np.outer(row_weight[row_off:row_off + n_out], col_weight[:width])
            block = encode(probability, valid[:n_out, :width], threshold)
            dst.write(block, window=Window(0, int(row_off), width, n_out))
            valid_total += int(np.count_nonzero(block[0] != NODATA))
            burned_total += int(np.count_nonzero(block[0] == BURNED))
            acc[:chip - done] = acc[done:]
            acc[chip - done:] = 0
    return valid_total, burned_total


def encode(probability: np.ndarray, valid: np.ndarray, threshold: float) -> np.ndarray:
    """(2, rows, cols) uint8 output bands from burned probability (rows, cols) float and valid (rows, cols)
    bool: mask (probability >= threshold) and round(probability * 254), both NODATA where not valid."""
    out = np.full((2, *probability.shape), NODATA, dtype=np.uint8)
    out[0][valid] = probability[valid] >= threshold
    out[1][valid] = np.rint(probability[valid] * PROBABILITY_SCALE)
    return out


def areas_m2(frame) -> np.ndarray:
    """Areas of a GeoDataFrame's geometries in m², measured in its CRS (a local UTM zone if geographic)."""
    if frame.crs.is_projected:
        return frame.area.to_numpy() * frame.crs.axis_info[0].unit_conversion_factor ** 2
    return frame.to_crs(frame.estimate_utm_crs()).area.to_numpy()


def write_burned_polygons(prediction: Path, out_path: Path, min_area_m2: float) -> tuple[float, int]:
    """Polygonize the burned pixels of a prediction GeoTIFF (band 1) into a GeoJSON FeatureCollection in
    EPSG:4326, one feature per 4-connected burned region of at least ``min_area_m2``, with its ``area_m2``.

    Returns (burned area of all regions in m², number of polygons written).
    """
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape

    from data_prep.label import BURNED

    with open_raster(prediction, "prediction") as src:
        band = rasterio.band(src, 1)  # as the mask too: leaves out unburned (0) pixels, keeps 1 and nodata
        geometries = [shape(g) for g, value in shapes(band, mask=band, transform=src.transform) if value == BURNED]
        crs = src.crs
    frame = gpd.GeoDataFrame(geometry=geometries, crs=crs)
    frame["area_m2"] = areas_m2(frame)
    kept = frame[frame["area_m2"] >= min_area_m2]
    kept.to_crs(GEOJSON_CRS).to_file(out_path, driver="GeoJSON", RFC7946="YES")
    return float(frame["area_m2"].sum()), len(kept)


def load_task(path: Path, device: str):
    """The BurnedAreaTask stored in checkpoint ``path``, on ``device``."""
    from apps.burned_area.model import BurnedAreaTask

    try:
        task = BurnedAreaTask.load_from_checkpoint(path, map_location=device, init={"weights": None})
    except Exception as exc:  # torch, pickle, zip and constructor errors all mean: not usable here
        raise InputError(f"checkpoint {path}: cannot be loaded as a BurnedAreaTask "
                         f"({type(exc).__name__}: {first_line(exc)})") from None
    if task.input_set not in INPUT_BANDS:
        raise InputError(f"checkpoint {path}: unknown input_set {task.input_set!r}")
    return task


def pick_device(name: str) -> str:
    """``name`` ("auto", "cpu" or "cuda") as a torch device string; auto is cuda when available."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    return name


@contextmanager
def prepared_image(scene_folder: Path, input_set: str, work_dir: Path, show_progress: bool) -> Iterator[Path]:
    """The scene's image as the training chips were made for ``input_set``: a temporary normalized RGB
    (this scene's percentiles) in ``work_dir``, or the scene's TCI file."""
    from data_prep.normalize import normalize_bands
    from data_prep.scenes import find_scene

    bands = INPUT_BANDS[input_set]
    scene = find_scene(scene_folder, bands)
    if input_set == "tci":
        yield scene.bands["TCI"]
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".predict-", dir=work_dir) as tmp:
        path = Path(tmp) / "normalized.tif"
        normalize_bands({band: scene.bands[band] for band in bands}, path, show_progress=show_progress)
        yield path


def check_arguments(args: argparse.Namespace) -> None:
    """InputError naming the option when a numeric option is out of range."""
    if args.chip_size < 1:
        raise InputError(f"--chip-size {args.chip_size}: must be a positive number of pixels")
    if not 0 <= args.overlap < 1:
        raise InputError(f"--overlap {args.overlap}: must be in [0, 1)")
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be at least 1")
    if not 0 <= args.threshold <= 1:
        raise InputError(f"--threshold {args.threshold}: must be in [0, 1]")
    if args.min_area_m2 < 0:
        raise InputError(f"--min-area-m2 {args.min_area_m2}: must not be negative")


def check_chip_size(task, chip_size: int) -> None:
    """InputError unless the network accepts chips of ``chip_size`` px (smp encoders downsample by a fixed stride)."""
    net = task.net
    if getattr(net, "requires_divisible_input_shape", False) and chip_size % net.encoder.output_stride:
        raise InputError(f"--chip-size {chip_size}: this network needs a multiple of {net.encoder.output_stride} px")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m apps.burned_area.predict",
                                     description="Predict burned area over a whole Sentinel-2 scene.")
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT_OR_RUN_DIR",
                        help="a .ckpt file, or a run directory (its best checkpoint, else checkpoints/last.ckpt)")
    parser.add_argument("scene", type=Path, metavar="SCENE", help="a Sentinel-2 scene folder (SAFE or band files)")
    parser.add_argument("--out", type=Path, required=True, help="output prefix: writes OUT.tif and OUT.geojson")
    parser.add_argument("--chip-size", type=int, default=256, help="window size, px (default 256)")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap, fraction of a chip (default 0.25)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--threshold", type=float, default=0.5, help="burned when probability >= this (default 0.5)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda if available, else cpu")
    parser.add_argument("--min-area-m2", type=float, default=0.0, help="drop polygons smaller than this (default 0)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: prints a summary line and a JSON line; bad input prints ``error: ...``, exits 2."""
    from apps.foundation.cli import exit_with_error

    args = parse_args(argv)
    try:
        check_arguments(args)
        checkpoint = resolve_checkpoint(args.checkpoint)
        device = pick_device(args.device)
        task = load_task(checkpoint, device)
        check_chip_size(task, args.chip_size)
        with prepared_image(args.scene, task.input_set, output_paths(args.out)[0].parent, True) as image:
            summary = predict_scene(
                task, image, args.out, args.chip_size, args.overlap, args.batch_size, args.threshold, device,
                args.min_area_m2, tags={"checkpoint": str(checkpoint), "scene": str(args.scene),
                                        "input_set": task.input_set},
            )
    except InputError as exc:
        exit_with_error(exc)
    summary.update(checkpoint=str(checkpoint), scene=str(args.scene), input_set=task.input_set)
    print(f"{args.scene}: {summary['valid_pixels']} px with data of {summary['width']}x{summary['height']}, "
          f"{summary['burned_ha']:.2f} ha burned, {summary['polygons']} polygons >= {args.min_area_m2:g} m2 "
          f"-> {summary['tif']}, {summary['geojson']}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
