"""The detection task of the core: COCO metrics as mmdet computes them, checkpoints in mmdet's format,
detection samples and their box-aware augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("mmdet", reason="the detection stack is not installed (scripts/setup.sh --detection)")

from apps.detection.coco import ImageDetections, coco_scores  # noqa: E402
from apps.detection.task import DetectionTask, build_detector, load_weights, read_checkpoint  # noqa: E402
from apps.detection.data import DetectionDataModule  # noqa: E402
from apps.foundation.errors import InputError  # noqa: E402
from helpers.detection import CLASSES, make_box_dataset, tiny_retinanet  # noqa: E402

SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}
NETWORK = {"_target_": "helpers.detection.tiny_retinanet", "_partial_": True}


def random_images(seed: int, n: int = 6, classes: int = 3) -> list[ImageDetections]:
    """Ground truth of small, medium and large boxes, some ignored; detections that jitter it, miss
    some and add false positives, with random scores."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        k = int(rng.integers(3, 9))
        xy = rng.uniform(0, 300, (k, 2))
        wh = rng.choice([10.0, 50.0, 120.0], (k, 1)) * rng.uniform(0.8, 1.2, (k, 2))
        gt = np.hstack([xy, xy + wh])
        labels = rng.integers(0, classes, k)
        ignore = rng.random(k) < 0.15
        found = rng.random(k) < 0.8
        boxes = gt[found] + rng.normal(0, 4, (int(found.sum()), 4))
        extra = rng.uniform(0, 350, (3, 2))
        boxes = np.vstack([boxes, np.hstack([extra, extra + 30])])
        predicted = np.concatenate([labels[found], rng.integers(0, classes, 3)])
        images.append(ImageDetections(width=450, height=450, gt_boxes=gt, gt_labels=labels, gt_ignore=ignore,
                                      boxes=boxes, scores=rng.random(len(boxes)), labels=predicted))
    return images


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_scores_equal_mmdet_coco_metric(seed):
    from mmdet.evaluation import CocoMetric

    names = ["plane", "ship", "car"]
    images = random_images(seed)
    metric = CocoMetric(metric="bbox", classwise=True)
    metric.dataset_meta = {"classes": names}
    results = []
    for i, image in enumerate(images):
        anns = [{"bbox": b.tolist(), "bbox_label": int(c), "ignore_flag": int(g)}
                for b, c, g in zip(image.gt_boxes, image.gt_labels, image.gt_ignore)]
        results.append(({"width": image.width, "height": image.height, "img_id": i, "anns": anns},
                        {"img_id": i, "bboxes": image.boxes, "scores": image.scores, "labels": image.labels}))
    theirs = metric.compute_metrics(results)
    ours = coco_scores(images, names)
    assert 0.05 < ours["map"] < 0.95  # a meaningful figure, neither empty nor perfect
    for key, their_key in [("map", "bbox_mAP"), ("map_50", "bbox_mAP_50"), ("map_75", "bbox_mAP_75"),
                           ("map_s", "bbox_mAP_s"), ("map_m", "bbox_mAP_m"), ("map_l", "bbox_mAP_l"),
                           *((f"ap_{n}", f"{n}_precision") for n in names)]:
        # mmdet rounds to 3 decimals; ours are unrounded
        assert round(ours[key], 3) == pytest.approx(theirs[their_key], abs=1e-4), key


def test_coco_scores_without_detections_are_zero():
    images = random_images(0, n=2)
    for image in images:
        image.boxes, image.scores, image.labels = np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=int)
    assert coco_scores(images, ["a", "b", "c"])["map"] == 0.0


def test_perfect_detections_score_one():
    images = random_images(3, n=3)
    for image in images:
        keep = ~image.gt_ignore
        image.boxes, image.labels = image.gt_boxes[keep], image.gt_labels[keep]
        image.scores = np.ones(int(keep.sum()))
    scores = coco_scores(images, ["a", "b", "c"])
    assert scores["map"] == pytest.approx(1.0) and scores["map_50"] == pytest.approx(1.0)


def mmdet_format_checkpoint(detector: torch.nn.Module, path) -> None:
    """Save ``detector`` as mmengine's Runner does: meta, state_dict and the MessageHub (HistoryBuffers of numpy values)."""
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("checkpoint-test")
    hub.update_scalar("train/loss", np.float64(0.5))
    hub.update_info("iter", 12)
    torch.save({"meta": {"epoch": 1, "iter": 12, "seed": np.int64(0), "dataset_meta": {"classes": CLASSES}},
                "state_dict": detector.state_dict(), "message_hub": hub.state_dict()}, path)


def test_checkpoint_in_mmdet_format_loads_on_this_torch(tmp_path):
    source = build_detector(tiny_retinanet(2))
    path = tmp_path / "retinanet.pth"
    mmdet_format_checkpoint(source, path)
    with pytest.raises(Exception):  # what mmengine's own loader meets on torch >= 2.6
        torch.load(path, weights_only=True)
    target = build_detector(tiny_retinanet(2))
    assert not torch.equal(target.backbone.conv1.weight, source.backbone.conv1.weight)
    assert "loaded" in load_weights(target, path)
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


@pytest.mark.slow
def test_coco_checkpoint_skips_a_head_of_other_classes(tmp_path):
    path = tmp_path / "coco.pth"
    mmdet_format_checkpoint(build_detector(tiny_retinanet(80)), path)
    target = build_detector(tiny_retinanet(2))
    message = load_weights(target, path)
    assert "skipped" in message
    assert torch.equal(target.backbone.conv1.weight, read_checkpoint(path)["backbone.conv1.weight"])


@pytest.mark.slow
def test_backbone_checkpoint_loads_into_the_backbone(tmp_path):
    source = build_detector(tiny_retinanet(2))
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": source.backbone.state_dict()}, path)
    target = build_detector(tiny_retinanet(2))
    load_weights(target, path, prefix="backbone")
    assert torch.equal(target.backbone.layer1[0].conv1.weight, source.backbone.layer1[0].conv1.weight)


def test_missing_weights_file_is_named(tmp_path):
    init = {"weights": "pretrained", "weights_path": str(tmp_path / "nowhere.pth"), "weights_dir": str(tmp_path)}
    with pytest.raises(InputError, match=r"weights file .*nowhere\.pth not found"):
        DetectionTask(NETWORK, SGD, class_names=CLASSES, init=init, model_name="tiny")


def test_a_catalogued_detector_without_its_file_names_the_file_and_the_fetch_command(tmp_path):
    from apps.foundation.catalogue import read_catalogue

    checkpoint = read_catalogue()["retinanet_x101"]
    init = {"weights": "pretrained", "weights_path": None, "weights_dir": str(tmp_path)}
    with pytest.raises(InputError, match=rf"{checkpoint.file} not found .*python -m apps.weights fetch "
                                         rf"names=\[retinanet_x101\] weights_dir={tmp_path}"):
        DetectionTask(NETWORK, SGD, class_names=CLASSES, init=init, model_name="retinanet_x101")


def test_unreadable_weights_file_is_named(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="broken.pth: not a readable checkpoint"):
        read_checkpoint(path)


def test_samples_have_the_fixed_keys_and_flips_move_boxes_with_pixels(tmp_path):
    root = make_box_dataset(tmp_path / "chips")
    module = DetectionDataModule(str(root), batch_size=2, num_workers=0)
    module.setup("fit")
    train = module.splits["train"]
    torch.manual_seed(0)
    for i in range(len(train)):
        sample = train[i]
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 64, 64)
        assert sample["boxes"].shape[1] == 4 and sample["labels"].dtype == torch.int64
        assert sample["ignore"].dtype == torch.bool and len(sample["ignore"]) == len(sample["labels"])
        for box, label in zip(sample["boxes"], sample["labels"]):  # each box still frames a square of its colour
            x1, y1, x2, y2 = box.round().int().tolist()
            centre = sample["image"][:, (y1 + y2) // 2, (x1 + x2) // 2]
            assert centre[label] > 0.8
    batch = next(iter(module.train_dataloader()))
    assert set(batch) == {"image", "boxes", "labels", "ignore", "index"} and len(batch["image"]) == 2
    assert module.task_arguments() == {"class_names": list(CLASSES)}


@pytest.mark.slow
def test_one_training_step_and_detection(tmp_path):
    root = make_box_dataset(tmp_path / "chips")
    module = DetectionDataModule(str(root), batch_size=2, num_workers=0)
    module.setup("fit")
    task = DetectionTask(NETWORK, SGD, **module.task_arguments())
    batch = next(iter(module.train_dataloader()))
    data = task.to_mmdet(batch, training=True)
    assert data["inputs"].shape == (2, 3, 64, 64)
    assert len(data["data_samples"][0].gt_instances) + len(data["data_samples"][0].ignored_instances) == \
        len(batch["boxes"][0])
    losses = task.detector.loss(data["inputs"], data["data_samples"])
    loss, _ = task.detector.parse_losses(losses)
    loss.backward()
    assert torch.isfinite(loss) and task.detector.backbone.layer4[0].conv1.weight.grad is not None
    found = task.eval().detect(batch["image"])
    assert len(found) == 2 and found[0]["boxes"].shape[1] == 4


def test_scale_lr_applies_the_linear_scaling_rule_to_every_group():
    from types import SimpleNamespace

    trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=4), world_size=2, accumulate_grad_batches=1,
                              max_epochs=12, estimated_stepping_batches=120)
    paramwise = {"custom_keys": {"backbone": {"lr_mult": 0.1}}}
    rates = {}
    for scale in (False, True):
        task = DetectionTask(NETWORK, SGD, list(CLASSES), paramwise=paramwise, scale_lr=scale, base_batch_size=16)
        task.trainer = trainer
        configured = task.configure_optimizers()
        optimizer = configured["optimizer"] if isinstance(configured, dict) else configured[0][0]
        rates[scale] = sorted({group["lr"] for group in optimizer.param_groups})
    assert rates[False] == pytest.approx([0.001, 0.01])
    assert rates[True] == pytest.approx([0.0005, 0.005])  # a batch of 4 x 2 devices against the recipe's 16
    with pytest.raises(InputError, match="base_batch_size"):
        DetectionTask(NETWORK, SGD, list(CLASSES), scale_lr=True)
