"""Whole-scene object detection: sliding windows, class-wise NMS across windows, GeoJSON and COCO out.

A scene of any size (GeoTIFF, or PNG/JPEG without georeference) is read one window at a time, so
memory stays bounded by a batch of windows and the boxes found. Windows overlap, so an object cut
by one window's border is whole in a neighbour; the detections of all windows are merged by
class-wise NMS (torchvision's ``batched_nms``), and the parts of objects cut by inner window
borders are dropped where a neighbouring window saw the object whole (``merge_detections``).

Writes, each through a temporary name:

- ``OUT.geojson``: one rectangle per box in the scene's CRS (pixel coordinates, y down, for an image
  without georeference), with ``class``, ``score`` and the pixel box ``x1, y1, x2, y2``;
- ``OUT.4326.geojson``: the same in EPSG:4326, for a georeferenced scene;
- ``OUT.coco.json``: COCO results (``image_id`` 1, ``category_id`` = class index + 1, ``bbox`` [x, y, w, h] px).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from apps.foundation.files import atomic_path, atomic_write_text
from data_prep.chipping import ChipSettings, window_offsets
from data_prep.detection import SceneImage
from data_prep.geotiff import in_gdal_env, progress, reading
from data_prep.normalize import NormalizeSettings

log = logging.getLogger(__name__)

GEOJSON_CRS = "EPSG:4326"


def output_paths(out: Path) -> dict[str, Path]:
    """The files written for the output prefix ``out``: ``geojson``, ``geojson_4326`` and ``coco``."""
    out = Path(out)
    if out.suffix.lower() == ".geojson":
        out = out.with_suffix("")
    return {"geojson": out.with_name(f"{out.name}.geojson"), "geojson_4326": out.with_name(f"{out.name}.4326.geojson"),
            "coco": out.with_name(f"{out.name}.coco.json")}


def merge_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, cut: np.ndarray,
                     iou_threshold: float, cut_overlap: float = 0.5) -> np.ndarray:
    """Indices of the boxes (N, 4) xyxy kept when windows' detections are merged, best score first.

    Class-wise NMS at ``iou_threshold`` (torchvision's ``batched_nms``) removes repeats of an object
    seen whole by several windows. A box that touches an inner window border (``cut``, (N,) bool) may
    be part of an object that a neighbouring window saw whole; its IoU with that box can be low, so it
    is also dropped when at least ``cut_overlap`` of its area lies inside a kept box of its class
    that is larger (intersection over the cut box's own area, as SAHI's IOS match)."""
    import torch
    from torchvision.ops import batched_nms

    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    keep = batched_nms(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32),
                       torch.as_tensor(labels, dtype=torch.int64), iou_threshold).numpy()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    dropped = set()
    for i in keep[cut[keep]]:
        others = keep[(labels[keep] == labels[i]) & (keep != i) & (area[keep] > area[i])]
        if len(others) == 0:
            continue
        inner_w = np.clip(np.minimum(boxes[others, 2], boxes[i, 2]) - np.maximum(boxes[others, 0], boxes[i, 0]), 0, None)
        inner_h = np.clip(np.minimum(boxes[others, 3], boxes[i, 3]) - np.maximum(boxes[others, 1], boxes[i, 1]), 0, None)
        if (inner_w * inner_h / max(area[i], 1e-6) >= cut_overlap).any():
            dropped.add(int(i))
    return np.array([i for i in keep if int(i) not in dropped], dtype=np.int64)


@in_gdal_env
def detect_scene(task: Any, scene: Path, out: Path, chip_size: int = 512, overlap: float = 0.25,
                 batch_size: int = 4, score_threshold: float = 0.3, iou_threshold: float = 0.5,
                 device: str = "cpu", show_progress: bool = True, bands: tuple[int, ...] | None = None,
                 stretch: NormalizeSettings = NormalizeSettings()) -> dict[str, Any]:
    """Detect objects over the whole ``scene`` with ``task.detect`` and write the files of the module doc.

    The scene's pixels are made as the detection prep made the training chips (``bands``, 1-based, or
    the image's own RGB; palettes; bands other than uint8 stretched by ``stretch``) and read / 255;
    windows of ``chip_size`` px overlap by ``overlap`` (a fraction); a scene smaller than a window is
    padded with zeros (the preps' small-scene policy, ``data_prep.chipping``). Detections below ``score_threshold`` are dropped before the merge. Returns a
    summary (paths, size, boxes per class). InputError names the scene when it cannot be used;
    then nothing is written.
    """
    import torch

    scene, paths = Path(scene), output_paths(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with reading(scene, "scene"), rasterio.open(scene) as src:
            image = SceneImage(src, bands, stretch, show_progress)
            width, height, crs, transform = src.width, src.height, src.crs, src.transform
            stride = ChipSettings(size=chip_size, overlap=overlap).stride
            windows = [(r, c) for r in window_offsets(height, chip_size, stride)
                       for c in window_offsets(width, chip_size, stride)]
            found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            task.eval().to(device)
            with torch.inference_mode():
                for start in progress(range(0, len(windows), batch_size), f"detect {scene.name}", show_progress):
                    batch = windows[start:start + batch_size]
                    images = []
                    for row, col in batch:
                        with reading(scene, "scene"):
                            tile = image.read(int(row), int(col), chip_size, chip_size)
                        images.append(torch.from_numpy(tile).to(device).float().div_(255.0))
                    for (row, col), result in zip(batch, task.detect(images)):
                        kept = result["scores"] >= score_threshold
                        local = result["boxes"][kept].float().cpu().numpy().reshape(-1, 4)
                        found.append((local + np.array([col, row, col, row]), result["scores"][kept].float().cpu().numpy(),
                                      result["labels"][kept].cpu().numpy(), _touches_inner_border(
                                          local, row, col, chip_size, width, height)))
    boxes = np.concatenate([f[0] for f in found]).reshape(-1, 4)
    scores = np.concatenate([f[1] for f in found])
    labels = np.concatenate([f[2] for f in found]).astype(np.int64)
    boxes = np.clip(boxes, 0, [width, height, width, height])  # nothing beyond the scene (padding)
    keep = merge_detections(boxes, scores, labels, np.concatenate([f[3] for f in found]), iou_threshold)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    classes = list(task.class_names)
    _write_outputs(paths, boxes, scores, labels, classes, crs, transform, width, height, scene)
    counts = {name: int(np.count_nonzero(labels == k)) for k, name in enumerate(classes)}
    return {"scene": str(scene), "width": width, "height": height, "georeferenced": crs is not None,
            "windows": len(windows), "boxes": int(len(boxes)), "per_class": counts,
            **{key: str(path) for key, path in paths.items() if key != "geojson_4326" or crs is not None},
            "chip_size": chip_size, "overlap": overlap, "score_threshold": score_threshold,
            "iou_threshold": iou_threshold, "device": str(device)}


def _touches_inner_border(boxes: np.ndarray, row: int, col: int, size: int, width: int, height: int,
                          margin: float = 2.0) -> np.ndarray:
    """(N,) bool: boxes (N, 4) xyxy in window pixels within ``margin`` px of a window border that is not
    the scene's edge (where a neighbouring window continues)."""
    left = (boxes[:, 0] <= margin) & (col > 0)
    top = (boxes[:, 1] <= margin) & (row > 0)
    right = (boxes[:, 2] >= size - margin) & (col + size < width)
    bottom = (boxes[:, 3] >= size - margin) & (row + size < height)
    return left | top | right | bottom


def _write_outputs(paths: dict[str, Path], boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                   classes: list[str], crs, transform, width: int, height: int, scene: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import box as rectangle

    georeferenced = crs is not None
    corners = boxes.copy()
    if georeferenced:  # pixel corners -> map coordinates through the scene's affine transform
        xs, ys = rasterio.transform.xy(transform, corners[:, [1, 3]].ravel(), corners[:, [0, 2]].ravel(), offset="ul")
        xs, ys = np.asarray(xs).reshape(-1, 2), np.asarray(ys).reshape(-1, 2)
        geometries = [rectangle(min(x), min(y), max(x), max(y)) for x, y in zip(xs, ys)]
    else:
        geometries = [rectangle(*b) for b in corners]
    frame = gpd.GeoDataFrame({
        "class": [classes[k] for k in labels], "class_index": labels.astype(int), "score": scores.astype(float),
        "x1": boxes[:, 0].astype(float), "y1": boxes[:, 1].astype(float),
        "x2": boxes[:, 2].astype(float), "y2": boxes[:, 3].astype(float),
    }, geometry=geometries, crs=crs)
    results = [{"image_id": 1, "category_id": int(k) + 1, "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]),
                                                                   float(b[3] - b[1])], "score": float(s)}
               for b, s, k in zip(boxes, scores, labels)]
    with atomic_path(paths["geojson"]) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*crs.* was not provided")  # pixel boxes have none
        frame.to_file(tmp, driver="GeoJSON", layer=Path(paths["geojson"]).stem)
    if georeferenced:
        with atomic_path(paths["geojson_4326"]) as tmp:
            frame.to_crs(GEOJSON_CRS).to_file(tmp, driver="GeoJSON", RFC7946="YES",
                                              layer=Path(paths["geojson_4326"]).stem)
    atomic_write_text(paths["coco"], json.dumps(results))
    log.info("%s: %d boxes of %dx%d px", scene, len(boxes), width, height)
