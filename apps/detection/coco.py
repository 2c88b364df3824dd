"""COCO box metrics computed with pycocotools, the way MMDetection's CocoMetric computes them.

Ground truth and detections are given per image in pixels (xyxy); they are turned into COCO
records in memory and scored by pycocotools' COCOeval with max detections (100, 300, 1000) and
IoU thresholds 0.50:0.05:0.95, so the figures match mmdet's ``bbox_mAP``, ``bbox_mAP_50`` ... and
its per-class AP (``classwise=True``).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAX_DETECTIONS = (100, 300, 1000)
"""mmdet's CocoMetric ``proposal_nums``; the AP figures use the last."""
SUMMARY_KEYS = ("map", "map_50", "map_75", "map_s", "map_m", "map_l")
"""Names of COCOeval's first six summary figures (mmdet: bbox_mAP, bbox_mAP_50, ... bbox_mAP_l)."""


@dataclass
class ImageDetections:
    """One image's ground truth and detections, boxes xyxy in pixels.

    gt_boxes (N, 4), gt_labels (N,) class index, gt_ignore (N,) bool (ignored regions: matched
    detections are neither true nor false positives); boxes (M, 4), scores (M,), labels (M,).
    """

    width: int
    height: int
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_ignore: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])


def coco_records(images: Sequence[ImageDetections], class_names: Sequence[str]) -> tuple[dict, list[dict]]:
    """(COCO ground-truth dataset, list of COCO detection results); image ids 1.., category id = class + 1."""
    gt: dict = {"images": [], "annotations": [], "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}
    detections: list[dict] = []
    for image_id, image in enumerate(images, start=1):
        gt["images"].append({"id": image_id, "width": int(image.width), "height": int(image.height), "file_name": ""})
        for box, label, ignore in zip(_xywh(image.gt_boxes), image.gt_labels, image.gt_ignore):
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": int(label) + 1,
                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": int(bool(ignore)),
            })
        for box, score, label in zip(_xywh(image.boxes), image.scores, image.labels):
            detections.append({"image_id": image_id, "category_id": int(label) + 1, "bbox": box.tolist(),
                               "score": float(score)})
    return gt, detections


def coco_scores(images: Sequence[ImageDetections], class_names: Sequence[str]) -> dict[str, float]:
    """COCO box metrics in [0, 1]: ``map`` (AP at IoU 0.50:0.95), ``map_50``, ``map_75``, ``map_s``,
    ``map_m``, ``map_l`` and ``ap_<class>`` per class (nan for a class without ground truth), as
    mmdet's CocoMetric computes them (unrounded). No detection at all scores 0."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, detections = coco_records(images, class_names)
    if not detections:
        return {**dict.fromkeys(SUMMARY_KEYS, 0.0), **{f"ap_{n}": 0.0 for n in class_names}}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluation = COCOeval(coco_gt, coco_dt, "bbox")
        evaluation.params.catIds = [c["id"] for c in gt["categories"]]
        evaluation.params.imgIds = [i["id"] for i in gt["images"]]
        evaluation.params.maxDets = list(MAX_DETECTIONS)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    scores = {key: float(evaluation.stats[i]) for i, key in enumerate(SUMMARY_KEYS)}
    precision = evaluation.eval["precision"]  # (iou thresholds, recall points, classes, areas, max dets)
    for k, name in enumerate(class_names):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        scores[f"ap_{name}"] = float(np.mean(values)) if values.size else float("nan")
    return scores
