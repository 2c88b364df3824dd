"""Object detection in the task family: an MMDetection detector trained and evaluated by Lightning.

mmengine's Runner does several things to a model that nothing else does; outside it the task does
them itself: ``init_weights()`` once, SyncBN reverted to BN on a single process, the data
preprocessor told its device (Lightning's ``.to()`` does not update its cached device), and the
MessageHub's ``iter`` kept current for batch augments that read it (YOLOX's random resize).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from apps.detection.coco import ImageDetections, coco_scores
from apps.core.config import build
from apps.core.tasks.base import BaseTask, plain
from apps.foundation.errors import InputError

log = logging.getLogger(__name__)

#: What mmengine and numpy put in a checkpoint besides tensors; allowed when it is unpickled with
#: ``weights_only=True`` (mmengine's own loader calls ``torch.load`` without it, which torch >= 2.6 refuses).
_CHECKPOINT_GLOBALS = (
    "mmengine.logging.history_buffer.HistoryBuffer",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.ndarray", "numpy.dtype",
)


def _history_buffer_method(buffer: Any, name: str) -> Any:
    """The one use of ``getattr`` in an mmengine checkpoint, a HistoryBuffer's statistics method
    (``min``, ``mean`` ...); anything else is refused, unlike the builtin."""
    from mmengine.logging.history_buffer import HistoryBuffer

    is_buffer = isinstance(buffer, HistoryBuffer) or (isinstance(buffer, type) and issubclass(buffer, HistoryBuffer))
    if is_buffer and not name.startswith("_") and callable(getattr(HistoryBuffer, name, None)):
        return getattr(buffer, name)
    raise pickle.UnpicklingError(f"getattr({buffer!r:.40}, {name!r}) is not allowed in a checkpoint")


def _allowed_globals() -> list:
    import importlib

    found: list = []
    for dotted in _CHECKPOINT_GLOBALS:
        module, _, name = dotted.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    found += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]  # numpy's per-dtype classes
    found += [(_history_buffer_method, f"{module}.getattr") for module in ("builtins", "__builtin__")]
    return found


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict (name -> tensor) of a local checkpoint in mmdet/mmengine or plain PyTorch format.

    Unpickled with ``weights_only=True`` plus the few mmengine and numpy types such checkpoints hold.
    InputError naming the file when it is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights {path}: file not found (nothing is downloaded: put the COCO or ImageNet "
                         f"checkpoint there, or use init=random)")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling or format failure is a bad file
        raise InputError(f"weights {path}: not a readable checkpoint ({str(exc).splitlines()[0]})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"weights {path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_weights(detector: torch.nn.Module, path: str | Path, prefix: str = "") -> str:
    """Load a local checkpoint into ``detector`` (or into its submodule ``prefix``, e.g. ``backbone``
    for an ImageNet backbone checkpoint); tensors whose name or shape does not match (a COCO head
    of 80 classes) are skipped. Returns a one-line account; InputError if nothing matched."""
    state = read_checkpoint(path)
    target = detector.get_submodule(prefix) if prefix else detector
    if prefix and any(k.startswith(f"{prefix}.") for k in state):  # a whole-detector checkpoint: take the part
        state = {k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}
    own = target.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise InputError(f"weights {path}: no tensor matches the {prefix or 'detector'}'s parameters")
    target.load_state_dict(matched, strict=False)
    skipped = len(state) - len(matched)
    return (f"loaded {len(matched)}/{len(own)} tensors of the {prefix or 'detector'} from {path}"
            + (f" ({skipped} of the file's skipped: name or shape differs)" if skipped else ""))


def pretrained_file(init: Mapping[str, Any], model_name: str) -> tuple[Path, str]:
    """The local checkpoint that ``init`` names for detector ``model_name`` and the submodule it fits."""
    from apps.core.tasks.weights import find_weights_file
    from apps.foundation.catalogue import read_catalogue

    catalogued = read_catalogue().get(model_name)
    path = find_weights_file(init.get("weights_path"), str(init["weights_dir"]), model_name,
                             what=f"init={init['weights']} for model={model_name}",
                             source_hint="the catalogue has no checkpoint for it")
    part = init.get("weights_part")
    if part is None:
        part = catalogued.part if catalogued is not None and not init.get("weights_path") else ""
    return path, part


def draw_boxes(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, colours: Sequence[str]) -> torch.Tensor:
    """An RGB image (3, H, W) in [0, 1] with ``boxes`` (N, 4) xyxy px outlined in their class colour."""
    from torchvision.utils import draw_bounding_boxes

    canvas = (image[:3].clamp(0, 1) * 255).to(torch.uint8).cpu()
    if len(boxes):
        canvas = draw_bounding_boxes(canvas, boxes.float().cpu(), colors=[colours[int(c) % len(colours)] for c in labels],
                                     width=2)
    return canvas.float() / 255


class DetectionTask(BaseTask):
    """An mmdet detector on samples of the chip-dataset contract (``apps.detection.data``).

    ``network`` is a partial ``_target_`` config that, given ``num_classes``, returns the detector's
    mmdet model config (a dict with ``type``, ``data_preprocessor``, ...). Images arrive RGB in
    [0, 1] and are scaled to 0-255 for the preprocessor, whose channel order is set to what the
    config expects (RGB, or BGR for caffe-style backbones).

    ``optimizer`` is the shared partial optimizer config; parameter groups follow mmengine's
    ``paramwise`` settings and optional optimizer ``constructor`` (layer-wise decay); ``schedule``
    holds the model's warmup (per iteration) and milestones (per epoch, as fractions of the
    training's epochs); ``clip_grad`` its gradient clipping ({max_norm, norm_type} or None).
    ``init`` says where its weights start (conf/detection/init): ``weights`` null (the recipe's own
    initialisation) or ``pretrained`` (the checkpoint of ``model_name`` in the weights catalogue, in
    ``weights_dir``, or the local file ``weights_path``; ``weights_part``: the submodule it fits, "" for a
    whole detector, null: the catalogue's). ``ema`` ({momentum, gamma, update_buffers}, YOLOX's recipe) keeps an exponential moving
    average of the weights (mmdet's ExpMomentumEMA, updated after every step, saved with the task),
    which validation, test and prediction use. ``callbacks`` (name -> ``_target_`` config) are Lightning
    callbacks the recipe needs (``apps.detection.callbacks``). Validation and test log COCO
    ``map``, ``map_50``, ``map_75``, ``map_s/m/l`` and per-class ``ap_<class>``.
    """

    CHECKPOINT_OVERRIDES = {"init": None}

    def __init__(
        self,
        network: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        class_names: Sequence[str],
        schedule: Mapping[str, Any] | None = None,
        paramwise: Mapping[str, Any] | None = None,
        constructor: str | None = None,
        clip_grad: Mapping[str, Any] | None = None,
        init: Mapping[str, Any] | None = None,
        model_name: str = "",
        ema: Mapping[str, Any] | None = None,
        callbacks: Mapping[str, Mapping[str, Any]] | None = None,
        scale_lr: bool = False,
        base_batch_size: int | None = None,
    ) -> None:
        network, optimizer, class_names, schedule, paramwise, clip_grad, init, ema, callbacks = map(
            plain, (network, optimizer, class_names, schedule, paramwise, clip_grad, init, ema, callbacks))
        super().__init__(optimizer, None)
        self.save_hyperparameters()
        self.class_names = list(class_names)
        if not self.class_names:
            raise InputError("class_names: a detector needs at least one object class")
        self.schedule = dict(schedule or {})
        self.paramwise = paramwise
        self.constructor = constructor
        self.clip_grad = clip_grad
        if scale_lr and not base_batch_size:
            raise InputError("scale_lr: needs the batch size the recipe's lr is for (model.base_batch_size)")
        self.lr_base_batch = int(base_batch_size) if scale_lr else None
        self.detector = build_detector(build(dict(network))(num_classes=len(self.class_names)))
        if init and init.get("weights"):
            log.info("%s", load_weights(self.detector, *pretrained_file(init, model_name)))
        self.callback_cfgs = dict(callbacks or {})
        self.ema = None
        if ema:
            from mmdet.models.layers import ExpMomentumEMA

            self.ema = ExpMomentumEMA(self.detector, **ema)
        self._evaluated: dict[str, list[ImageDetections]] = {"val": [], "test": []}

    # -- mmdet inputs ---------------------------------------------------------------------------
    def to_mmdet(self, batch: Mapping[str, list], training: bool) -> dict[str, Any]:
        """A batch of lists -> the detector's preprocessed ``{"inputs": (B, C, H, W), "data_samples": [...]}``."""
        from mmdet.structures import DetDataSample
        from mmengine.logging import MessageHub
        from mmengine.structures import InstanceData

        samples = []
        for i, image in enumerate(batch["image"]):
            shape = tuple(image.shape[-2:])
            sample = DetDataSample(metainfo={"img_id": int(batch["index"][i]) if "index" in batch else i,
                                             "img_shape": shape, "ori_shape": shape, "scale_factor": (1.0, 1.0)})
            if "boxes" in batch:
                keep = ~batch["ignore"][i]
                sample.gt_instances = InstanceData(bboxes=batch["boxes"][i][keep], labels=batch["labels"][i][keep])
                sample.ignored_instances = InstanceData(bboxes=batch["boxes"][i][~keep],
                                                        labels=batch["labels"][i][~keep])
            samples.append(sample)
        preprocessor = self.detector.data_preprocessor
        preprocessor._device = self.device  # its cached device; Lightning's .to() does not set it
        MessageHub.get_current_instance().update_info("iter", int(self.global_step))  # read by YOLOX's resize
        inputs = [image.mul(255.0) for image in batch["image"]]
        return preprocessor({"inputs": inputs, "data_samples": samples}, training)

    @property
    def num_parameters(self) -> int:
        """Parameters of the detector (its moving average, if any, not counted twice)."""
        return sum(p.numel() for p in self.detector.parameters())

    def detect(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections for images (C, H, W) in [0, 1]: per image ``boxes`` (M, 4) xyxy px, ``scores``
        (M,), ``labels`` (M,), after the detector's own score threshold and NMS (the moving
        average of the weights when the recipe keeps one)."""
        data = self.to_mmdet({"image": list(images)}, training=False)
        detector = self.ema.module if self.ema is not None else self.detector
        results = detector.predict(data["inputs"], data["data_samples"], rescale=False)
        return [{"boxes": r.pred_instances.bboxes, "scores": r.pred_instances.scores,
                 "labels": r.pred_instances.labels} for r in results]

    # -- training ---------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, list], batch_idx: int) -> torch.Tensor:
        data = self.to_mmdet(batch, training=True)
        losses = self.detector.loss(data["inputs"], data["data_samples"])
        loss, parts = self.detector.parse_losses(losses)
        size = len(batch["image"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "loss"}, on_step=True, on_epoch=False,
                      batch_size=size)
        return loss

    def on_train_epoch_start(self) -> None:
        # Lightning (>= 2.2) keeps each module's train/eval flag as it finds it and never calls train();
        # mmdet backbones apply norm_eval (frozen BatchNorm statistics) and frozen stages in train(),
        # which mmengine's Runner calls every iteration.
        self.detector.train()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.detector)

    def configure_callbacks(self) -> list:
        return [build(config) for config in self.callback_cfgs.values() if config]

    def configure_optimizers(self) -> Any:
        from apps.detection.optim import build_optimizer, build_schedule

        optimizer = build_optimizer(self.detector, self.optimizer_cfg, self.paramwise, self.constructor)
        if self.lr_base_batch:
            self._scale_lr(optimizer)
        schedulers = build_schedule(optimizer, self.schedule, epochs=self.trainer.max_epochs,
                                    steps=int(self.trainer.estimated_stepping_batches))  # YOLOX's warmup: a share of them
        return {"optimizer": optimizer, "lr_scheduler": schedulers[0]} if len(schedulers) == 1 else \
            ([optimizer], schedulers)

    def _scale_lr(self, optimizer: torch.optim.Optimizer) -> None:
        """The linear scaling rule, as mmengine's ``auto_scale_lr``: every group's lr x (batch x devices x
        accumulation) / the recipe's batch."""
        trainer = self.trainer
        batch = trainer.datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        factor = batch / self.lr_base_batch
        for group in optimizer.param_groups:
            group["lr"] *= factor
        log.info("scale_lr: lr x %g (a batch of %d against the recipe's %d)", factor, batch, self.lr_base_batch)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """The model's own clipping (mmdet's ``clip_grad``) unless the trainer sets one."""
        if gradient_clip_val is None and self.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm=float(self.clip_grad["max_norm"]),
                                           norm_type=float(self.clip_grad.get("norm_type", 2)))
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- evaluation -------------------------------------------------------------------------------
    def _evaluate(self, batch: Mapping[str, list], stage: str) -> list[dict[str, torch.Tensor]]:
        detections = self.detect(batch["image"])
        for image, boxes, labels, ignore, found in zip(batch["image"], batch["boxes"], batch["labels"],
                                                       batch["ignore"], detections):
            height, width = image.shape[-2:]
            self._evaluated[stage].append(ImageDetections(
                width=width, height=height, gt_boxes=boxes.cpu().numpy(), gt_labels=labels.cpu().numpy(),
                gt_ignore=ignore.cpu().numpy(), boxes=found["boxes"].float().cpu().numpy(),
                scores=found["scores"].float().cpu().numpy(), labels=found["labels"].cpu().numpy()))
        return detections

    def validation_step(self, batch: Mapping[str, list], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, list], batch_idx: int) -> dict[str, Any]:
        detections = self._evaluate(batch, "test")
        colours = ["red", "yellow", "cyan", "lime", "magenta", "orange", "white", "blue"]
        truth = [draw_boxes(img, b, lab, colours) for img, b, lab in zip(batch["image"], batch["boxes"], batch["labels"])]
        found = [draw_boxes(img, d["boxes"][d["scores"] >= 0.3], d["labels"][d["scores"] >= 0.3], colours)
                 for img, d in zip(batch["image"], detections)]
        same_size = len({tuple(t.shape) for t in truth}) == 1
        return {"examples": {"ground truth": torch.stack(truth), "prediction": torch.stack(found)}} if same_size else {}

    def _log_scores(self, stage: str) -> None:
        images = _gather(self._evaluated[stage])
        self._evaluated[stage] = []
        scores = coco_scores(images, self.class_names)
        headline = ("map", "map_50") if stage == "val" else ()
        for key, value in scores.items():  # every process holds the gathered figures: sync_dist averages equal values
            self.log(f"{stage}/{key}", value, prog_bar=key in headline, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")


def _gather(images: list[ImageDetections]) -> list[ImageDetections]:
    """Every process's images, in a distributed run (each process scored a share of the split)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return images
    shares: list = [None] * dist.get_world_size()
    dist.all_gather_object(shares, images)
    return [image for share in shares for image in share]


def build_detector(config: Mapping[str, Any]) -> torch.nn.Module:
    """An mmdet detector from its model config, initialised as mmengine's Runner would: weights
    initialised once (``init_weights()``), SyncBN reverted to BN on a single process, mmcv's ops
    made to accept bf16 (``apps.detection.mmcv_float32``), and the preprocessor fed RGB images (a config that expects BGR, as caffe-style backbones do, gets its
    channels swapped)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict
    from mmengine.logging import MMLogger
    from mmengine.model.utils import revert_sync_batchnorm

    from apps.detection.mmcv_float32 import run_mmcv_ops_in_float32

    register_all_modules(init_default_scope=True)
    run_mmcv_ops_in_float32()
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # not one INFO line per initialised tensor
    config = dict(config)
    preprocessor = dict(config.get("data_preprocessor") or {})
    # mmdet configs see images loaded BGR: bgr_to_rgb=True means the network wants RGB, else BGR.
    wants_rgb = bool(preprocessor.get("bgr_to_rgb", False))
    preprocessor.update(bgr_to_rgb=False, rgb_to_bgr=not wants_rgb)
    config["data_preprocessor"] = preprocessor
    try:
        detector = MODELS.build(ConfigDict(config))  # mmdet reads its settings as attributes
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise InputError(f"model.network: mmdet cannot build {config.get('type')!r} ({str(exc).splitlines()[0]})") from None
    detector.init_weights()
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        detector = revert_sync_batchnorm(detector)
    return detector
