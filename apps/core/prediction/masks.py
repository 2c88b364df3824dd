"""Whole-scene prediction for the pixel-wise apps: sliding windows, blending, GeoTIFF and GeoJSON.

The app supplies only how it prepares a scene (``prepare``: uint8 rasters on one grid, one per sample
key, made as the training chips were) and the name of the class to map; everything else is here.
A sliding window of chips covers the whole grid, edges included; overlapping predictions are
blended with a tent weight that is highest at the chip centre. Only a rolling band of chip-size rows
is kept as float, and finished rows are written as they come, so a full 10980 x 10980 tile needs
little memory.

Writes ``OUT.tif`` (on the scene's grid, uint8, nodata 255; band 1: class mask 0/1, band 2: class
probability x 254) and ``OUT.geojson`` (the class's polygons in EPSG:4326 with ``area_m2`` measured
in the scene's CRS), each through a temporary name.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from apps.core.prediction.command import Option, Prepare, PredictionApp, in_unit_interval
from apps.foundation.chips import IGNORE_INDEX, ChipPreparation
from apps.foundation.errors import InputError
from apps.foundation.files import atomic_path
from data_prep.chipping import ChipSettings, window_offsets
from data_prep.geotiff import GeoTiffSettings, in_gdal_env, open_raster, output_profile, progress, reading
from data_prep.scenes import check_same_grid

NODATA = IGNORE_INDEX
"""Nodata value of both output bands."""
PROBABILITY_SCALE = 254
"""Band 2 holds round(probability * PROBABILITY_SCALE), so 255 stays free for nodata."""
GEOJSON_CRS = "EPSG:4326"

log = logging.getLogger(__name__)

Inputs = Mapping[str, "Path | Sequence[Path]"]
"""Sample key -> a prepared uint8 raster, or several stacked along bands (as the training chips' arrays)."""


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
    inputs: Inputs,
    out_path: Path,
    chip_size: int = 256,
    overlap: float = 0.25,
    batch_size: int = 8,
    threshold: float = 0.5,
    device: str = "cpu",
    min_area_m2: float = 0.0,
    class_name: str = "positive",
    positive_class: int = 1,
    tags: Mapping[str, str] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Predict ``class_name`` over prepared rasters and write ``OUT.tif`` and ``OUT.geojson`` (module doc).

    ``task.forward_batch({key: (B, C, chip, chip) float in [0, 1]})`` gives logits (B, classes, chip, chip);
    ``inputs`` maps each sample key to uint8 rasters (their bands stacked in order), all on one grid, read
    as value / 255 like the training chips. A pixel is valid where every raster has data (some band not 0
    or its nodata value).
    A grid smaller than a chip is padded with nodata (the small-scene policy of ``data_prep.chipping``). The class is predicted where its probability
    (class ``positive_class``) >= ``threshold``. Returns a summary (paths, pixel counts, area in ha,
    polygons). Raises InputError for an unusable input or one without any valid pixel; then nothing is
    written.
    """
    tif_path, geojson_path = output_paths(out_path)
    rasters = {f"{key}[{i}]": (key, Path(path)) for key, paths in inputs.items()
               for i, path in enumerate([paths] if isinstance(paths, (str, Path)) else paths)}
    check_same_grid({name: path for name, (_, path) in rasters.items()}, "prediction inputs")
    for key, path in rasters.values():
        with open_raster(path, f"{key} input") as src:
            if src.dtypes[0] != "uint8":
                raise InputError(f"{key} input {path}: {src.dtypes[0]} bands, expected uint8")
            profile = output_profile(src, 2, "uint8", NODATA, GeoTiffSettings(compress="deflate"))
    sources = [(key, rasterio.open(path)) for key, path in rasters.values()]
    # Reads are guarded one by one (not by open_raster), so that write errors keep their own words.
    try:
        with atomic_path(tif_path) as tmp_tif:
            with rasterio.open(tmp_tif, "w", **profile) as dst:
                valid, positive = _predict_raster(task, sources, dst, chip_size, overlap, batch_size, threshold,
                                                  positive_class, device, show_progress)
                dst.descriptions = (class_name, f"{class_name}_probability")
                dst.update_tags(threshold=str(threshold), probability_scale=str(PROBABILITY_SCALE),
                                chip_size=str(chip_size), overlap=str(overlap), **(tags or {}))
            if valid == 0:
                raise InputError(f"{', '.join(str(p) for _, p in rasters.values())}: no valid pixels "
                                 "(every pixel is nodata)")
            with atomic_path(geojson_path) as tmp_geojson:
                area_m2, polygons = write_class_polygons(tmp_tif, tmp_geojson, min_area_m2, Path(geojson_path).stem)
    finally:
        for _, src in sources:
            src.close()
    return {
        "tif": str(tif_path), "geojson": str(geojson_path),
        "width": profile["width"], "height": profile["height"], "valid_pixels": valid,
        f"{class_name}_pixels": positive, f"{class_name}_ha": area_m2 / 1e4, "polygons": polygons,
        "min_area_m2": min_area_m2, "chip_size": chip_size, "overlap": overlap, "threshold": threshold,
        "device": str(device),
    }


def _predict_raster(task: Any, sources: Sequence[tuple[str, rasterio.DatasetReader]], dst: rasterio.io.DatasetWriter,
                    chip: int, overlap: float, batch_size: int, threshold: float, positive_class: int, device: str,
                    show_progress: bool) -> tuple[int, int]:
    """Blend sliding-window predictions of ``sources`` ((sample key, raster), bands stacked per key in
    order) into ``dst`` row band by row band; returns (valid pixels, positive pixels).

    ``acc`` (chip, padded width) float32 holds the weighted class probabilities of the rows the current
    window row covers; rows that no later window reaches are normalised, written and shifted out.
    Windows without any valid pixel are skipped: no valid pixel lies in them, so the blend of every
    valid pixel still has all its windows and the separable total weight stays exact.
    """
    import torch

    first = sources[0][1]
    height, width = first.height, first.width
    grid_h, grid_w = max(height, chip), max(width, chip)  # padded when the raster is smaller than a chip
    stride = ChipSettings(size=chip, overlap=overlap).stride
    rows, cols = window_offsets(grid_h, chip, stride), window_offsets(grid_w, chip, stride)
    ramp = tent(chip)
    row_weight, col_weight = coverage(rows, ramp, grid_h), coverage(cols, ramp, grid_w)
    task.eval().to(device)
    weight = torch.from_numpy(np.outer(ramp, ramp)).to(device)
    acc = np.zeros((chip, grid_w), dtype=np.float32)
    strips = [np.zeros((src.count, chip, grid_w), dtype=np.uint8) for _, src in sources]
    valid_total = positive_total = 0
    with torch.inference_mode():
        for i, row_off in enumerate(progress(rows, f"predict {Path(first.name).name}", show_progress)):
            n_rows = min(chip, height - row_off)
            valid = np.ones((chip, grid_w), dtype=bool)
            for (key, src), strip in zip(sources, strips):
                strip[:] = 0
                with reading(Path(src.name), f"{key} input"):
                    strip[:, :n_rows, :width] = src.read(window=Window(0, int(row_off), width, n_rows))
                valid &= (strip != (src.nodata if src.nodata is not None else 0)).any(axis=0)
            stacked = {key: np.concatenate([strip for (k, _), strip in zip(sources, strips) if k == key])
                       for key in dict.fromkeys(k for k, _ in sources)}  # (bands of the key, chip, width)
            todo = [c for c in cols if valid[:, c:c + chip].any()]
            for start in range(0, len(todo), batch_size):
                batch_cols = todo[start:start + batch_size]
                batch = {key: torch.from_numpy(np.stack([strip[:, :, c:c + chip] for c in batch_cols])).to(device)
                         .float().div_(255.0) for key, strip in stacked.items()}
                prob = torch.softmax(task.forward_batch(batch).float(), dim=1)[:, positive_class] * weight
                for c, p in zip(batch_cols, prob.cpu().numpy()):
                    acc[:, c:c + chip] += p
            done = (rows[i + 1] if i + 1 < len(rows) else grid_h) - row_off
            n_out = min(done, height - row_off)  # >= 1: every window row starts inside the raster
            probability = acc[:n_out, :width] / np.outer(row_weight[row_off:row_off + n_out], col_weight[:width])
            block = encode(probability, valid[:n_out, :width], threshold)
            dst.write(block, window=Window(0, int(row_off), width, n_out))
            valid_total += int(np.count_nonzero(block[0] != NODATA))
            positive_total += int(np.count_nonzero(block[0] == 1))
            acc[:chip - done] = acc[done:]
            acc[chip - done:] = 0
    return valid_total, positive_total


def encode(probability: np.ndarray, valid: np.ndarray, threshold: float) -> np.ndarray:
    """(2, rows, cols) uint8 output bands from class probability (rows, cols) float and valid (rows, cols)
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


def write_class_polygons(prediction: Path, out_path: Path, min_area_m2: float, layer: str | None = None,
                         ) -> tuple[float, int]:
    """Polygonize the class pixels (value 1) of a prediction GeoTIFF's band 1 into a GeoJSON
    FeatureCollection in EPSG:4326 named ``layer`` (default: ``out_path``'s stem), one feature per
    4-connected region of at least ``min_area_m2``, with its ``area_m2``. Returns (area of all regions in m²,
    number of polygons written)."""
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape

    with open_raster(prediction, "prediction") as src:
        band = rasterio.band(src, 1)  # as the mask too: leaves out class-0 pixels, keeps 1 and nodata
        geometries = [shape(g) for g, value in shapes(band, mask=band, transform=src.transform) if value == 1]
        crs = src.crs
    frame = gpd.GeoDataFrame(geometry=geometries, crs=crs)
    frame["area_m2"] = areas_m2(frame)
    kept = frame[frame["area_m2"] >= min_area_m2]
    kept.to_crs(GEOJSON_CRS).to_file(out_path, driver="GeoJSON", RFC7946="YES", layer=layer or Path(out_path).stem)
    return float(frame["area_m2"].sum()), len(kept)


def pixelwise_app(prog: str, description: str, inputs: Sequence[tuple[str, str]], class_name: str,
                  prepare: Prepare, describe_inputs: Callable[[argparse.Namespace], str],
                  check_task: Callable[[Any, ChipPreparation], None],
                  task_facts: Callable[[Any], dict]) -> PredictionApp:
    """The prediction command of a pixel-wise app that maps ``class_name``: ``predict_scene`` over
    the inputs ``prepare`` gives, with ``--threshold`` and ``--min-area-m2``."""

    def predict(task: Any, prepared: Inputs, args: argparse.Namespace, geometry: ChipPreparation, device: str,
                facts: dict) -> dict:
        return predict_scene(task, prepared, args.out, geometry.chip_size, geometry.overlap, args.batch_size,
                             args.threshold, device, args.min_area_m2, class_name=class_name,
                             positive_class=task.positive_class, tags=facts)

    def summary_line(args: argparse.Namespace, summary: dict) -> str:
        return (f"{summary['scene']}: {summary['valid_pixels']} px with data of {summary['width']}x{summary['height']}, "
                f"{summary[f'{class_name}_ha']:.2f} ha {class_name}, {summary['polygons']} polygons >= "
                f"{args.min_area_m2:g} m2 -> {summary['tif']}, {summary['geojson']}")

    options = (
        Option("--threshold", {"type": float, "default": 0.5,
                               "help": f"{class_name} where its probability >= this (default 0.5)"},
               in_unit_interval, "must be in [0, 1]"),
        Option("--min-area-m2", {"type": float, "default": 0.0, "help": "drop polygons smaller than this (default 0)"},
               lambda value: value >= 0, "must not be negative"),
    )
    return PredictionApp(prog, description, inputs, "OUT.tif and OUT.geojson", prepare, predict, summary_line,
                         describe_inputs, options, check_task=check_task, task_facts=task_facts)
