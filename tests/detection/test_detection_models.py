"""The detectors of conf/detection/model (each builds, trains one step and predicts on the CPU), the
model configs they come from, and their optimizer parameter groups and learning-rate schedules."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import nn

from apps.core.config import build, compose_app_config
from apps.detection.optim import build_optimizer, build_schedule, param_groups
from apps.foundation.errors import InputError
from helpers import REPO

MODEL_DIR = REPO / "conf" / "detection" / "model"
TEN = ["faster_rcnn_convnext", "ssd_vgg16", "retinanet_x101", "fcos_r101", "yolov3", "yolox_x", "vit_faster_rcnn",
       "detr", "deformable_detr", "swin_t_faster_rcnn"]
SMALL = "fcos_small"
KEYS = {"name", "network", "lr", "base_batch_size", "weight_decay", "paramwise", "constructor", "clip_grad", "schedule", "min_size",
        "train_transforms", "ema", "callbacks"}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "momentum": 0.9, "weight_decay": 1.0e-4}


def model_yaml(choice: str) -> dict:
    return yaml.safe_load((MODEL_DIR / f"{choice}.yaml").read_text())


def network(choice: str) -> dict:
    """The keyword arguments that the yaml's ``network`` partial gives ``mmdet_model``."""
    return {k: v for k, v in model_yaml(choice)["network"].items() if not k.startswith("_")}


# -- model configs -------------------------------------------------------------------------------
def test_model_choices_are_the_ten_and_the_small_one():
    assert sorted(p.stem for p in MODEL_DIR.glob("*.yaml")) == sorted(TEN + [SMALL])


@pytest.mark.parametrize("choice", TEN + [SMALL])
def test_model_yaml_schema(choice):
    config = model_yaml(choice)
    assert set(config) - {"defaults"} == KEYS
    assert config["name"] == choice
    assert config["network"]["_target_"] == "apps.detection.models.mmdet_model"
    # the study's split: AdamW for two; YOLOX's SGD is Nesterov's; the others keep the app's sgd
    optimizer = {"swin_t_faster_rcnn": "adamw", "deformable_detr": "adamw", "yolox_x": "sgd_nesterov"}.get(choice)
    assert config.get("defaults") == ([{"override /optimizer@_global_.optimizer": optimizer}] if optimizer else None)
    build_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), config["schedule"], epochs=12, steps=120)
    for callback in (config["callbacks"] or {}).values():
        assert isinstance(build(callback), pl.Callback)


def test_yolox_train_transforms_build():
    from apps.detection.data import build_transforms

    assert [type(t).__name__ for t in build_transforms(model_yaml("yolox_x")["train_transforms"])] == [
        "Mosaic", "RandomAffine", "MixUp", "YOLOXHSVRandomAug", "RandomFlip", "Resize", "Pad", "FilterAnnotations"]


def test_mmdet_model_adapts_the_config():
    from apps.detection.models import mmdet_model

    model = mmdet_model(5, "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py",
                        changes={"backbone.depth": 18, "neck": {"in_channels": [64, 128, 256, 512]},
                                 "rpn_head": {"anchor_generator": {"_delete_": True, "type": "AnchorGenerator",
                                                                   "scales": [4], "ratios": [1.0], "strides": [4, 8]}}})
    assert model["roi_head"]["bbox_head"]["num_classes"] == 5
    assert model["backbone"]["depth"] == 18 and model["backbone"]["frozen_stages"] == 1  # the rest as configured
    assert "init_cfg" not in model["backbone"]  # Pretrained (torchvision://resnet50) removed
    assert model["neck"]["in_channels"] == [64, 128, 256, 512]
    assert model["rpn_head"]["anchor_generator"] == {"type": "AnchorGenerator", "scales": [4], "ratios": [1.0],
                                                     "strides": [4, 8]}


def test_mmdet_model_swaps_in_another_configs_backbone():
    from apps.detection.models import mmdet_model

    model = mmdet_model(2, **network("faster_rcnn_convnext"))
    assert model["type"] == "FasterRCNN" and model["backbone"]["type"] == "mmpretrain.ConvNeXt"
    assert "init_cfg" not in model["backbone"] and model["neck"]["in_channels"] == [96, 192, 384, 768]
    assert "mask_head" not in model["roi_head"]


def test_mmdet_model_unknown_config_is_one_line():
    from apps.detection.models import mmdet_model

    with pytest.raises(InputError, match="no mmdet config 'retinanet/nope.py'") as error:
        mmdet_model(2, "retinanet/nope.py")
    assert "\n" not in str(error.value)


def test_simple_feature_pyramid_strides():
    from apps.detection.vit_pyramid import SimpleFeaturePyramid

    pyramid = SimpleFeaturePyramid(in_channels=32, out_channels=8, num_outs=5)
    pyramid.init_weights()
    outs = pyramid((torch.rand(2, 32, 4, 6),))  # a 64 x 96 image at stride 16
    assert [tuple(o.shape) for o in outs] == [(2, 8, 16, 24), (2, 8, 8, 12), (2, 8, 4, 6), (2, 8, 2, 3), (2, 8, 1, 2)]


# -- one training step and a prediction per detector -----------------------------------------------
def train_step_and_predict(choice: str, size: int) -> None:
    """Build ``choice`` for 3 classes, compute its loss on two random ``size`` px images with two
    boxes each, back-propagate, and predict on one."""
    from mmdet.structures import DetDataSample
    from mmengine.logging import MessageHub
    from mmengine.structures import InstanceData

    from apps.detection.task import build_detector
    from apps.detection.models import mmdet_model

    torch.manual_seed(0)
    detector = build_detector(mmdet_model(3, **network(choice)))
    MessageHub.get_current_instance().update_info("iter", 0)  # YOLOX's batch resize reads it
    samples = []
    for i in range(2):
        sample = DetDataSample(metainfo={"img_id": i, "img_shape": (size, size), "ori_shape": (size, size),
                                         "scale_factor": (1.0, 1.0)})
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[10.0, 20.0, 90.0, 100.0], [50.0, 60.0, 120.0, 110.0]]),
                                           labels=torch.tensor([0, 2]))
        samples.append(sample)
    detector.train()
    data = detector.data_preprocessor({"inputs": [torch.rand(3, size, size) * 255 for _ in samples],
                                       "data_samples": samples}, True)
    loss, _ = detector.parse_losses(detector.loss(data["inputs"], data["data_samples"]))
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in detector.parameters())
    detector.eval()
    with torch.no_grad():
        data = detector.data_preprocessor({"inputs": [torch.rand(3, size, size) * 255],
                                           "data_samples": [DetDataSample(metainfo=samples[0].metainfo)]}, False)
        (result,) = detector.predict(data["inputs"], data["data_samples"], rescale=False)
    found = result.pred_instances
    assert found.bboxes.shape == (len(found), 4) and bool((found.labels < 3).all())


def test_small_detector_trains_and_predicts():
    train_step_and_predict(SMALL, 128)


@pytest.mark.slow
@pytest.mark.parametrize("choice", TEN)
def test_detector_trains_and_predicts(choice):
    train_step_and_predict(choice, 320 if choice == "ssd_vgg16" else 128)


# -- parameter groups ------------------------------------------------------------------------------
class Detector(nn.Module):
    """A backbone and a head, as an mmdet detector names them."""

    def __init__(self, backbone: nn.Module, head_in: int = 4) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(head_in, 4), nn.LayerNorm(4))


def group_of(optimizer: torch.optim.Optimizer, parameter: nn.Parameter) -> dict:
    return next(g for g in optimizer.param_groups if any(p is parameter for p in g["params"]))


def test_no_decay_on_norms_and_biases():
    model = Detector(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    optimizer = build_optimizer(model, {**SGD, "weight_decay": 5.0e-4}, {"norm_decay_mult": 0.0, "bias_decay_mult": 0.0})
    conv, norm = model.backbone
    assert group_of(optimizer, conv.weight)["weight_decay"] == 5.0e-4
    assert group_of(optimizer, model.head[0].weight)["weight_decay"] == 5.0e-4
    for parameter in (conv.bias, norm.weight, norm.bias, model.head[0].bias, model.head[1].weight):
        assert group_of(optimizer, parameter)["weight_decay"] == 0.0
    assert len(optimizer.param_groups) == 2  # per-parameter groups merged
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_backbone_lr_mult_and_the_shared_optimizer_choice():
    model = Detector(nn.Linear(4, 4))
    adamw = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 2.0e-4, "weight_decay": 1.0e-4}
    optimizer = build_optimizer(model, adamw, {"custom_keys": {"backbone": {"lr_mult": 0.1}}})
    assert isinstance(optimizer, torch.optim.AdamW)
    assert group_of(optimizer, model.backbone.weight)["lr"] == pytest.approx(2.0e-5)
    assert group_of(optimizer, model.head[0].weight)["lr"] == pytest.approx(2.0e-4)
    assert len(build_optimizer(model, SGD).param_groups) == 1  # no paramwise settings: one group


def test_layer_wise_decay_vit():
    from mmpretrain.models import VisionTransformer

    vit = VisionTransformer(arch={"embed_dims": 8, "num_layers": 3, "num_heads": 2, "feedforward_channels": 16},
                            img_size=32, patch_size=16, out_type="featmap", with_cls_token=False)
    model = Detector(vit, head_in=8)
    paramwise = model_yaml("vit_faster_rcnn")["paramwise"]
    optimizer = build_optimizer(model, {**SGD, "lr": 1.0}, paramwise, "mmpretrain.LearningRateDecayOptimWrapperConstructor")
    lrs = [group_of(optimizer, p)["lr"] for p in (vit.patch_embed.projection.weight, vit.layers[0].ffn.layers[1].weight,
                                                   vit.layers[1].ffn.layers[1].weight, vit.layers[2].ffn.layers[1].weight,
                                                   model.head[0].weight)]
    assert lrs == pytest.approx([0.7 ** 4, 0.7 ** 3, 0.7 ** 2, 0.7, 1.0])
    assert group_of(optimizer, vit.pos_embed)["weight_decay"] == 0.0
    assert group_of(optimizer, vit.layers[0].ln1.weight)["weight_decay"] == 0.0
    assert group_of(optimizer, vit.layers[0].ffn.layers[1].bias)["weight_decay"] == 0.0
    assert group_of(optimizer, vit.layers[0].ffn.layers[1].weight)["weight_decay"] == SGD["weight_decay"]


def test_layer_wise_decay_convnext():
    from mmpretrain.models import ConvNeXt

    convnext = ConvNeXt(arch={"depths": [1, 1, 3, 1], "channels": [4, 4, 8, 8]}, out_indices=[0, 1, 2, 3],
                        gap_before_final_norm=False)
    model = Detector(convnext)
    config = model_yaml("faster_rcnn_convnext")
    optimizer = build_optimizer(model, SGD, config["paramwise"], config["constructor"])
    stages = [group_of(optimizer, convnext.stages[i][0].pointwise_conv1.weight)["lr"] for i in range(4)]
    head = group_of(optimizer, model.head[0].weight)["lr"]
    assert stages[0] < stages[1] < stages[2] < stages[3] < head == pytest.approx(SGD["lr"])
    assert group_of(optimizer, convnext.stages[0][0].pointwise_conv1.bias)["weight_decay"] == 0.0


def test_unknown_constructor_is_one_line():
    with pytest.raises(InputError, match="no optimizer constructor 'Nope'"):
        param_groups(nn.Linear(2, 2), 0.1, 0.0, None, "Nope")


# -- schedules -------------------------------------------------------------------------------------
def run_schedule(schedule: dict, epochs: int, steps_per_epoch: int, lr_mult: float = 1.0) -> list[list[float]]:
    """The lr of each step of each epoch (group 0; also checks group 1 at ``lr_mult`` of it), stepped
    as Lightning steps them: warmup after every step, the epoch schedule after every epoch."""
    params = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.01 * lr_mult}], lr=0.01)
    schedulers = build_schedule(optimizer, schedule, epochs, steps=epochs * steps_per_epoch)
    by_interval = {s["interval"]: s["scheduler"] for s in schedulers}
    lrs = []
    for _ in range(epochs):
        lrs.append([])
        for _ in range(steps_per_epoch):
            lrs[-1].append(optimizer.param_groups[0]["lr"])
            assert optimizer.param_groups[1]["lr"] == pytest.approx(lrs[-1][-1] * lr_mult)
            optimizer.step()
            if "step" in by_interval:
                by_interval["step"].step()
        if "epoch" in by_interval:
            by_interval["epoch"].step()
    return lrs


def test_linear_warmup_then_milestones():
    schedule = model_yaml("retinanet_x101")["schedule"] | {"warmup_iters": 4}
    lrs = run_schedule(schedule, epochs=12, steps_per_epoch=3, lr_mult=0.1)
    flat = [lr for epoch in lrs for lr in epoch]
    assert flat[0] == pytest.approx(1.0e-5)  # base x warmup_ratio at iteration 0
    assert flat[2] == pytest.approx(0.01 * (0.001 + 0.999 * 2 / 4))
    assert flat[4:24] == pytest.approx([0.01] * 20)  # after warmup: the base lr, up to epoch 8
    assert lrs[8] == pytest.approx([1.0e-3] * 3) and lrs[10] == pytest.approx([1.0e-3] * 3)  # milestone 8 of 12
    assert lrs[11] == pytest.approx([1.0e-4] * 3)  # milestone 11 of 12


def test_warmup_overlapping_a_milestone_multiplies():
    lrs = run_schedule({"warmup": "linear", "warmup_iters": 4, "warmup_ratio": 0.5, "milestones": [0.5]},
                       epochs=2, steps_per_epoch=3)
    assert lrs[1] == pytest.approx([0.001 * (0.5 + 0.5 * 3 / 4), 0.001, 0.001])


def test_constant_and_quadratic_warmups():
    lrs = run_schedule({"warmup": "constant", "warmup_iters": 3, "warmup_ratio": 1 / 3}, epochs=1, steps_per_epoch=5)
    assert lrs[0] == pytest.approx([0.01 / 3] * 3 + [0.01] * 2)
    lrs = run_schedule({"warmup": "quadratic", "warmup_fraction": 0.2}, epochs=2, steps_per_epoch=5)
    assert lrs[0][:3] == pytest.approx([0.01 / 4, 0.01, 0.01])  # 2 warmup steps: (1/2)^2, (2/2)^2


def test_cosine_after_warmup_then_held():
    schedule = {"policy": "cosine", "begin": 0.2, "end": 0.8, "eta_min_ratio": 0.05}
    lrs = [epoch[0] for epoch in run_schedule(schedule, epochs=10, steps_per_epoch=1)]
    assert lrs[:3] == pytest.approx([0.01, 0.01, 0.01])
    assert lrs[5] == pytest.approx(0.01 * (0.05 + 0.95 * 0.5))  # halfway from epoch 2 to 8
    assert lrs[8:] == pytest.approx([0.0005, 0.0005])


def test_schedule_errors_are_one_line():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(InputError, match="unknown key"):
        build_schedule(optimizer, {"milestone": [0.5]}, 12)
    with pytest.raises(InputError, match="warmup_fraction"):
        build_schedule(optimizer, {"warmup": "quadratic", "warmup_fraction": 0.1}, 12)
    assert build_schedule(optimizer, None, 12) == []


# -- the Hydra mechanism that gives a model its own optimizer --------------------------------------
@pytest.fixture()
def compose(tmp_path):
    """Compose a primary config that has the shared optimizer group and the detection model group."""
    from hydra import compose as hydra_compose, initialize_config_dir

    def composed(defaults: list[str], overrides: list[str]):
        (tmp_path / "app.yaml").write_text(yaml.safe_dump({
            "defaults": [{d.split(": ")[0]: d.split(": ")[1]} for d in defaults] + ["_self_"],
            "hydra": {"searchpath": ["pkg://apps.conf", "pkg://apps.conf.detection"]}, "lr": 0.01}))
        with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
            return hydra_compose(config_name="app", overrides=overrides)

    return composed


def test_model_choice_overrides_the_optimizer_and_the_command_line_wins(compose):
    defaults = ["optimizer: sgd", "model: fcos_small"]
    assert compose(defaults, [])["optimizer"]["_target_"] == "torch.optim.SGD"
    assert compose(defaults, ["model=detr"])["optimizer"]["_target_"] == "torch.optim.SGD"
    assert compose(defaults, ["model=deformable_detr"])["optimizer"]["_target_"] == "torch.optim.AdamW"
    assert compose(defaults, ["model=swin_t_faster_rcnn"])["optimizer"]["_target_"] == "torch.optim.AdamW"
    chosen = compose(defaults, ["model=swin_t_faster_rcnn", "optimizer=sgd"])
    assert chosen["optimizer"]["_target_"] == "torch.optim.SGD" and chosen["model"]["name"] == "swin_t_faster_rcnn"
    # a key the yaml's changes has is overridden as is; a new one takes "+"
    changes = compose(defaults, ["model.network.changes.backbone.depth=34",
                                 "+model.network.changes.bbox_head.center_sampling=true"])["model"]["network"]["changes"]
    assert changes["backbone"]["depth"] == 34 and changes["bbox_head"]["center_sampling"] is True


def test_the_override_needs_the_optimizer_listed_before_the_model(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="Could not override 'optimizer'"):
        compose(["model: fcos_small", "optimizer: sgd"], ["model=deformable_detr"])


def test_the_detection_app_gives_swin_and_deformable_detr_adamw_and_yolox_nesterov():
    assert compose_app_config("detection", [])["optimizer"]["_target_"] == "torch.optim.SGD"
    assert "nesterov" not in compose_app_config("detection", [])["optimizer"]
    yolox = build(compose_app_config("detection", ["model=yolox_x"])["optimizer"])([nn.Parameter(torch.zeros(1))])
    assert isinstance(yolox, torch.optim.SGD) and yolox.defaults["nesterov"] and yolox.defaults["lr"] == 0.01
    assert compose_app_config("detection", ["model=deformable_detr"])["optimizer"]["_target_"] == "torch.optim.AdamW"
    chosen = compose_app_config("detection", ["model=swin_t_faster_rcnn", "optimizer=sgd"])
    assert chosen["optimizer"]["_target_"] == "torch.optim.SGD"
    assert chosen["optimizer"]["weight_decay"] == 0.05 and chosen["lr"] == 1.0e-4  # the model's, on the chosen optimizer
    assert compose_app_config("detection", ["model=detr", "lr=0.5"])["optimizer"]["lr"] == 0.5
