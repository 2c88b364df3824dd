"""Training-step time per detector through the geoscale core against mmengine's Runner, CPU, batch 2.

For each model choice of ``apps.detection`` (conf/detection/model/; default: the study's ten), one
after another, each training in a fresh process (in one process a training inherits the heap its
predecessor left: YOLOX's core, run after the Runner, measured 0.94 of its speed there, and 1.02-1.06
in fresh processes):

- the Runner: ``mmengine.runner.Runner`` with the same mmdet model config (the preprocessor's channel
  order set as the core sets it), the model's optimizer as an ``optim_wrapper`` (SGD or AdamW, lr,
  weight decay, ``paramwise_cfg``, constructor, ``clip_grad``) in fp32, its warmup as a per-iteration
  param scheduler, the recipe's hooks (EMAHook, CheckInvalidLossHook, SyncNormHook; not YOLOX's mode
  switch, which an iteration-based loop of one "epoch" would fire at once), an ``IterBasedTrainLoop``
  of ``warmup + steps`` iterations, no validation, no checkpoints, and a train dataloader over the
  same chips (``BenchBoxChips``: the model's train transforms, then ``PackDetInputs``; YOLOX's
  mosaic and mixup through ``MultiImageMixDataset`` as its mmdet config does);
- the core: the app's config (``compose_app_config("detection", [model=..., ...])``), its data module
  and task built as ``apps.core.training.train`` builds them and ``build_trainer``'s Trainer (no logger,
  validation or checkpoint; otherwise as the app configures it, ``trainer.deterministic=warn`` included,
  where the Runner keeps its nondeterministic default), in fp32 (``trainer.precision=32-true``) and
  again in the core's default precision (``auto``: bf16-mixed on a CPU with AVX512-BF16 or AMX).

A step is timed from the start to the end of one training batch (Runner: ``before_train_iter`` of the
first hook to ``after_train_iter`` of the last; core: Lightning's ``on_train_batch_start`` to the end of
the task's ``on_train_batch_end``), after ``--warmup-steps`` untimed ones; the iteration (start to the next start:
data loading, hooks, schedulers and logging included) is reported beside it, and so are the process's
minor page faults per step (memory that glibc handed back to the system and takes again). With glibc's
default settings these faults came and went between trainings of the same network on either side, by up
to 50x, and its step time with them by up to a fifth, which swamped the difference being measured; so
the trainings run with ``STEADY_MALLOC`` (no memory handed back, a 1 GB top pad, and even blocks above
32 MB from the heap: Deformable DETR's attention tensors otherwise cost 0.5-0.8 million page faults a
step, and its Runner steps took 4.7 to 13 s on the same work) unless ``--system-malloc`` is given or those variables are already set. Figures
are medians over the timed steps; ``--rounds`` repeats the Runner's and the core's fp32 trainings that
many times, the first of the pair alternating, to spread slow drifts of the machine over both (on a shared
2-core machine one training's steps ran 10% slower than another's on the same work; ``round_speeds``
shows that spread).
The chips (``--size`` px, objects of the built-in synthetic scenes, one chip per scene, enough for every
step without a second epoch) are made once in a temporary folder. So that a step's work is the same on
both sides (it varies with the proposals and boxes): both start from the same initial weights (the
core's seeded initialisation, saved once per model), read the chips unshuffled and, but for YOLOX's
mosaic, untransformed. Prints one JSON object; the target is
core >= 0.95 x the Runner's speed (``core_vs_runner_speed`` = runner step / core step).

    python scripts/bench_detection_step.py [--models retinanet_x101,detr] [--size 512] [--steps 5]
        [--warmup-steps 2] [--rounds 1] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from mmdet.datasets import MultiImageMixDataset
from mmdet.registry import DATASETS, OPTIM_WRAPPER_CONSTRUCTORS
from mmdet.structures.bbox import HorizontalBoxes
from mmdet.utils import register_all_modules
from mmengine.config import ConfigDict
from mmengine.dataset import BaseDataset
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
from omegaconf import OmegaConf

from apps.core.config import build, compose_app_config
from apps.detection.data import DIHEDRAL, _tuples
from apps.core.training.precision import cpu_bf16_flags, resolve_precision
from apps.core.training.train import build_trainer
from apps.foundation.chips import ChipDataset, chip_boxes
from data_prep.detection import DetectionChipSettings, PrepConfig, SceneSplitSettings, prepare
from data_prep.synthetic_objects import generate_object_scenes

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "conf" / "detection" / "model"
SMALL_MODEL = "fcos_small"
STUDY_MODELS = tuple(sorted(p.stem for p in MODEL_DIR.glob("*.yaml") if p.stem != SMALL_MODEL))
BATCH = 2
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184",
                 "MALLOC_TOP_PAD_": "1073741824", "MALLOC_MMAP_MAX_": "0"}
"""glibc malloc settings (bytes; no mmap'd blocks at all) under which freed memory stays with the
process: steadier step times."""
TARGET = 0.95
SEED = 0


# -- data -------------------------------------------------------------------------------------------------------------

def make_chips(folder: Path, size: int, train_chips: int) -> Path:
    """A chip dataset of ``size`` px chips with boxes under ``folder``: ``train_chips`` + 2 synthetic scenes
    of one chip each (objects of four classes, ~5-15 per chip), the first two for val and test. Returns its root."""
    scenes = generate_object_scenes(folder / "scenes", n_scenes=train_chips + 2, size=size, seed=SEED,
                                    density=(20 * 512 ** 2 // size ** 2, 60 * 512 ** 2 // size ** 2), compress=None)
    pins = {name: "train" for name in scenes.scenes[2:]} | {scenes.scenes[0]: "val", scenes.scenes[1]: "test"}
    config = PrepConfig(out_dir=folder / "chips", format="dota", images=scenes.images, labels=scenes.labels,
                        classes=scenes.classes, chip=DetectionChipSettings(size=size, keep_empty=1.0),
                        split=SceneSplitSettings(fixed=pins), progress=False)
    prepare(config)
    return folder / "chips"


@DATASETS.register_module(force=True)
class BenchBoxChips(BaseDataset):
    """The train split of a chip dataset as mmdet's results dicts (``img`` (H, W, C) uint8 RGB,
    ``gt_bboxes``, ``gt_bboxes_labels``, ``gt_ignore_flags``), then ``pipeline``. Indexes wrap around:
    mmdet's Mosaic and MixUp draw ``random.randint(0, len)``, one past the end (as the core's split does)."""

    def __init__(self, root: str, pipeline: list = ()) -> None:
        self.chips = ChipDataset(root)
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        super().__init__(ann_file="", data_root=str(root), metainfo={"classes": tuple(self.chips.classes)},
                         pipeline=list(pipeline), serialize_data=False)

    def load_data_list(self) -> list[dict]:
        return [{"img_id": i, "scene": r.scene, "index": r.index}
                for i, r in enumerate(self.chips.split_records("train"))]

    def _array(self, scene: str, name: str) -> np.ndarray:
        if (scene, name) not in self._arrays:
            self._arrays[scene, name] = self.chips.open_array(scene, name)
        return self._arrays[scene, name]

    def get_data_info(self, idx: int) -> dict:
        info = super().get_data_info(idx % len(self))
        image = np.ascontiguousarray(self._array(info["scene"], "image")[info["index"]].transpose(1, 2, 0))
        boxes, labels, ignore = chip_boxes(self._array(info["scene"], "boxes"), info["index"])
        return {**info, "img": image, "img_shape": image.shape[:2], "ori_shape": image.shape[:2],
                "gt_bboxes": HorizontalBoxes(boxes.reshape(-1, 4)), "gt_bboxes_labels": labels,
                "gt_ignore_flags": ignore}


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class BenchBackboneLayerDecay(LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-wise lr decay on a detector: the depths come from its backbone (a detector
    has no ``get_layer_depth``), as ``apps.detection.optim.param_groups`` does."""

    def add_params(self, params, module, prefix="", get_layer_depth=None, **kwargs) -> None:
        if get_layer_depth is None and not hasattr(module, "get_layer_depth"):
            get_layer_depth = partial(module.backbone.get_layer_depth, prefix="backbone.")
        super().add_params(params, module, prefix=prefix, get_layer_depth=get_layer_depth, **kwargs)


# -- timing -----------------------------------------------------------------------------------------------------------

class StepTimer:
    """Seconds per step (start to end) and per iteration (start to the next start), after ``warmup`` steps;
    also the process's minor page faults per step (memory the allocator took fresh from the system)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.count = 0
        self.began: float | None = None
        self.faults_at = 0
        self.steps: list[float] = []
        self.iterations: list[float] = []
        self.faults: list[int] = []
        self.threads: set[int] = set()

    def start(self) -> None:
        now = time.perf_counter()
        if self.began is not None and self.count > self.warmup:
            self.iterations.append(now - self.began)
        self.began = now
        self.faults_at = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.threads.add(torch.get_num_threads())

    def end(self) -> None:
        self.count += 1
        if self.count > self.warmup:
            self.steps.append(time.perf_counter() - self.began)
            self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.faults_at)

    def figures(self) -> dict[str, Any]:
        return {"steps_s": self.steps, "iterations_s": self.iterations, "page_faults": self.faults,
                "threads": sorted(self.threads)}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the timed steps of one or more trainings (``StepTimer.figures``)."""
    steps = [s for run in runs for s in run["steps_s"]]
    iterations = [s for run in runs for s in run["iterations_s"]]
    return {"step_s": round(statistics.median(steps), 4),
            "iteration_s": round(statistics.median(iterations), 4) if iterations else None,
            "steps_s": [round(s, 3) for s in steps],
            "page_faults": int(statistics.median(f for run in runs for f in run["page_faults"])),
            "threads": sorted({t for run in runs for t in run["threads"]})}


class IterStart(Hook):
    """Starts a StepTimer's step before every other hook's ``before_train_iter``."""

    priority = "HIGHEST"

    def __init__(self, timer: StepTimer) -> None:
        self.timer = timer

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self.timer.start()


class IterEnd(Hook):
    """Ends a StepTimer's step after every other hook's ``after_train_iter``."""

    priority = "LOWEST"

    def __init__(self, timer: StepTimer) -> None:
        self.timer = timer

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.timer.end()


class LightningStepTimer(pl.Callback):
    """A StepTimer on Lightning's training batches: from the callbacks' ``on_train_batch_start`` to the end
    of the task's own ``on_train_batch_end`` (which Lightning calls after the callbacks': the moving
    average of the weights is updated there, as the Runner's EMAHook does in ``after_train_iter``)."""

    def __init__(self, timer: StepTimer) -> None:
        self.timer = timer

    def on_fit_start(self, trainer, pl_module) -> None:
        task_hook = pl_module.on_train_batch_end

        def timed(*args, **kwargs) -> None:
            task_hook(*args, **kwargs)
            self.timer.end()

        pl_module.on_train_batch_end = timed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.timer.start()


# -- the two trainings ------------------------------------------------------------------------------------------------

def initial_weights(root: Path, model: str) -> Path:
    """Where the detector's initial weights for both sides are kept."""
    return root.parent / f"initial_{model}.pth"


def app_config(model: str, root: Path, precision: str, iterations: int):
    """The detection app's config for ``model`` on the chips, ``iterations`` steps of batch 2 and no
    validation, from ``initial_weights`` once they exist. ``epochs`` stays long so that milestones and
    YOLOX's mode switch lie far ahead, as in a real run. The default random flips are left out: they
    run in the data loader, outside the timed step, and would give the two sides different images
    (YOLOX keeps its mosaic pipeline, whose output sizes its step's work)."""
    weights = initial_weights(root, model)
    cfg = compose_app_config("detection", [
        f"model={model}", f"data.root={root}", f"batch_size={BATCH}", "num_workers=0", f"seed={SEED}",
        f"trainer.precision={precision}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0", "trainer.limit_val_batches=0",
        f"+trainer.max_steps={iterations}", "epochs=300", "~logger", "~callbacks.lr_monitor", "monitor=null",
        *(["init=pretrained", f"init.weights_path={weights}", "init.weights_part="] if weights.is_file() else []),
    ])
    if cfg.model.train_transforms is None:
        cfg.model.train_transforms = []
    return cfg


def save_initial_weights(model: str, root: Path) -> None:
    """The detector as the core initialises it (seeded), saved for both sides to start from."""
    cfg = app_config(model, root, "32-true", 1)
    pl.seed_everything(SEED, verbose=False)
    task = build(cfg.task, **build(cfg.data).task_arguments())
    torch.save({"state_dict": task.detector.state_dict()}, initial_weights(root, model))


def core_run(model: str, root: Path, precision: str, warmup: int, steps: int, run_dir: Path) -> dict[str, Any]:
    """Train ``warmup + steps`` steps through the core; the step figures and the detector's parameters."""
    cfg = app_config(model, root, precision, warmup + steps)
    pl.seed_everything(SEED, verbose=False)
    datamodule = build(cfg.data)
    task = build(cfg.task, **datamodule.task_arguments())
    datamodule.train_dataloader = partial(datamodule._loader, "train", shuffle=False)  # the Runner's order
    timer = StepTimer(warmup)
    trainer, checkpoint, _ = build_trainer(cfg, run_dir, extra_callbacks=[LightningStepTimer(timer)])
    trainer.callbacks.remove(checkpoint)  # no checkpoint written
    trainer.fit(task, datamodule=datamodule)
    assert timer.count == warmup + steps, (timer.count, warmup + steps)
    return {**timer.figures(), "precision": str(trainer.precision), "params": task.num_parameters}


def runner_config(cfg, num_classes: int, iterations: int) -> dict[str, Any]:
    """The Runner's model, optim_wrapper, param_scheduler and custom hooks equivalent to the app's ``cfg``."""
    model = dict(build(cfg.task.network)(num_classes=num_classes))
    # as apps.detection.task.build_detector: images arrive RGB; a config that wants BGR gets them swapped
    preprocessor = dict(model.get("data_preprocessor") or {})
    preprocessor.update(bgr_to_rgb=False, rgb_to_bgr=not preprocessor.get("bgr_to_rgb", False))
    model["data_preprocessor"] = preprocessor
    model = ConfigDict(model)  # mmdet reads its settings as attributes (train_cfg.rpn ...)

    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    optimizer.pop("_partial_", None)
    optimizer = {"type": optimizer.pop("_target_").rsplit(".", 1)[-1], **optimizer}
    wrapper: dict[str, Any] = {"type": "OptimWrapper", "optimizer": optimizer}
    net = cfg.model
    if net.paramwise:
        wrapper["paramwise_cfg"] = OmegaConf.to_container(net.paramwise, resolve=True)
    if net.constructor:
        wrapper["constructor"] = ("BenchBackboneLayerDecay" if net.constructor.startswith("mmpretrain.")
                                  else str(net.constructor))
    if net.clip_grad:
        wrapper["clip_grad"] = OmegaConf.to_container(net.clip_grad, resolve=True)

    schedule, schedulers = net.schedule or {}, []
    if schedule.get("warmup"):
        if schedule.get("warmup_fraction") is not None:
            span = max(round(float(schedule.warmup_fraction) * iterations), 1)
        else:
            span = max(int(schedule.get("warmup_iters") or 0), 1)
        ratio = float(schedule.get("warmup_ratio", 0.001))
        kind = {"linear": {"type": "LinearLR", "start_factor": ratio},
                "constant": {"type": "ConstantLR", "factor": ratio},
                "quadratic": {"type": "QuadraticWarmupLR"}}[schedule.warmup]
        schedulers.append({**kind, "by_epoch": False, "begin": 0, "end": span})

    hooks: list[dict] = []
    if net.ema:
        hooks.append({"type": "EMAHook", "ema_type": "ExpMomentumEMA", "priority": 49,
                      **OmegaConf.to_container(net.ema, resolve=True)})
    for callback in (net.callbacks or {}).values():
        name = str(callback._target_).rsplit(".", 1)[-1]
        if name == "InvalidLossCheck":
            hooks.append({"type": "CheckInvalidLossHook", "interval": int(callback.get("interval", 50))})
        elif name == "SyncNorm":
            hooks.append({"type": "SyncNormHook"})
    return {"model": model, "optim_wrapper": wrapper, "param_scheduler": schedulers or None, "custom_hooks": hooks}


def runner_dataset(cfg, root: Path) -> Any:
    """The Runner's train dataset: the chips, the model's train transforms (the core's default flips when
    it has none), ``PackDetInputs``; through ``MultiImageMixDataset`` when a transform mixes images."""
    transforms = [_tuples(dict(t)) for t in (OmegaConf.to_container(cfg.data.train_transforms, resolve=True)
                                             if cfg.data.train_transforms is not None else DIHEDRAL)]
    pipeline = [*transforms, {"type": "PackDetInputs"}]
    if any(t["type"] in ("Mosaic", "MixUp", "CachedMosaic", "CachedMixUp") for t in transforms):
        return MultiImageMixDataset(dataset=DATASETS.build({"type": "BenchBoxChips", "root": str(root)}),
                                    pipeline=pipeline)
    return DATASETS.build({"type": "BenchBoxChips", "root": str(root), "pipeline": pipeline})


def runner_run(model: str, root: Path, warmup: int, steps: int, work_dir: Path) -> dict[str, Any]:
    """Train ``warmup + steps`` iterations with mmengine's Runner; the step figures and the parameters."""
    register_all_modules(init_default_scope=True)  # mmdet's registries are the default scope
    torch.use_deterministic_algorithms(False)  # the Runner's default; the core's Trainer (deterministic=warn) sets it
    cfg = app_config(model, root, "32-true", warmup + steps)
    parts = runner_config(cfg, len(ChipDataset(root).classes), warmup + steps)
    timer = StepTimer(warmup)
    runner = Runner(
        model=parts["model"], work_dir=str(work_dir), experiment_name=f"bench_{model}",
        train_dataloader={"batch_size": BATCH, "num_workers": 0, "persistent_workers": False,
                          "sampler": {"type": "DefaultSampler", "shuffle": False},
                          "collate_fn": {"type": "pseudo_collate"}, "dataset": runner_dataset(cfg, root)},
        train_cfg={"type": "IterBasedTrainLoop", "max_iters": warmup + steps, "val_interval": 10 ** 9},
        optim_wrapper=parts["optim_wrapper"], param_scheduler=parts["param_scheduler"],
        default_hooks={"timer": {"type": "IterTimerHook"}, "checkpoint": None,
                       "logger": {"type": "LoggerHook", "interval": 10 ** 9},
                       "param_scheduler": {"type": "ParamSchedulerHook"}},
        custom_hooks=[*parts["custom_hooks"], IterStart(timer), IterEnd(timer)],
        randomness={"seed": SEED}, default_scope="mmdet", log_level="WARNING",
        load_from=str(initial_weights(root, model)),
    )
    runner.train()
    assert timer.count == warmup + steps, (timer.count, warmup + steps)
    params = sum(p.numel() for p in runner.model.parameters())
    del runner
    return {**timer.figures(), "params": params}


def train_once(side: str, model: str, root: Path, args, work: Path) -> dict[str, Any]:
    """One training of ``model`` in a fresh process (``side``: ``runner``, ``core`` in fp32, or
    ``core_default`` in the core's default precision); its StepTimer figures and parameters."""
    command = [sys.executable, __file__, "--train", side, "--models", model, "--root", str(root),
               "--work", str(work), "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
               "--threads", str(args.threads)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} run of {model} failed (exit {done.returncode}; its log is above)")
    return json.loads(done.stdout) if side != "init" else {}


def bench_model(model: str, root: Path, args, work: Path) -> dict[str, Any]:
    """The Runner and the core in fp32 for ``args.rounds`` rounds (Runner first in even rounds, core first
    in odd ones), then the core in its default precision; each training in its own process, all from the
    same initial weights. ``round_speeds``: each round's runner/core ratio of median steps."""
    train_once("init", model, root, args, work / f"{model}_init")
    runs: dict[str, list] = {"runner": [], "core": []}
    for r in range(args.rounds):
        for side in ("runner", "core") if r % 2 == 0 else ("core", "runner"):
            runs[side].append(train_once(side, model, root, args, work / f"{model}_{side}{r}"))
    runner_runs, core_runs = runs["runner"], runs["core"]
    default_run = train_once("core_default", model, root, args, work / f"{model}_core_default")
    assert runner_runs[0]["params"] == core_runs[0]["params"], (runner_runs[0]["params"], core_runs[0]["params"])
    runner, core, default = summary(runner_runs), summary(core_runs), summary([default_run])
    return {
        "params": core_runs[0]["params"],
        "runner_step_s": runner["step_s"], "core_step_s": core["step_s"],
        "core_vs_runner_speed": round(runner["step_s"] / core["step_s"], 3),
        "met": runner["step_s"] / core["step_s"] >= TARGET,
        "round_speeds": [round(statistics.median(r["steps_s"]) / statistics.median(c["steps_s"]), 3)
                         for r, c in zip(runner_runs, core_runs)],
        "runner_iteration_s": runner["iteration_s"], "core_iteration_s": core["iteration_s"],
        "core_vs_runner_iteration_speed": (round(runner["iteration_s"] / core["iteration_s"], 3)
                                           if runner["iteration_s"] and core["iteration_s"] else None),
        "core_default_precision": default_run["precision"], "core_default_step_s": default["step_s"],
        "core_default_vs_fp32_speed": round(core["step_s"] / default["step_s"], 3),
        "steps_s": {"runner": runner["steps_s"], "core": core["steps_s"], "core_default": default["steps_s"]},
        "page_faults_per_step": {"runner": runner["page_faults"], "core": core["page_faults"],
                                 "core_default": default["page_faults"]},
        "threads": sorted(set(runner["threads"]) | set(core["threads"]) | set(default["threads"])),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(STUDY_MODELS),
                        help=f"comma-separated choices of conf/detection/model (default: the ten but {SMALL_MODEL})")
    parser.add_argument("--size", type=int, default=512, help="chip size, px")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per training")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=1,
                        help="Runner and core fp32 trainings per model, alternating (medians over all their steps)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for both")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {SMALL_MODEL} on 128 px chips, 2 steps")
    parser.add_argument("--system-malloc", action="store_true", help="keep glibc's malloc settings (see above)")
    parser.add_argument("--train", choices=("init", "runner", "core", "core_default"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.system_malloc and not any(name in os.environ for name in STEADY_MALLOC):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STEADY_MALLOC})
    if args.quick:
        args.models, args.size, args.steps, args.warmup_steps = SMALL_MODEL, 128, 2, 1
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if not (MODEL_DIR / f"{m}.yaml").is_file()]
    if unknown or args.steps < 1 or args.warmup_steps < 0 or args.size < 128 or args.rounds < 1:
        parser.error(f"unknown model(s) {unknown}" if unknown
                     else "need --steps >= 1, --warmup-steps >= 0, --size >= 128, --rounds >= 1")

    # Only the JSON goes to stdout: mmengine's and Lightning's log lines go to stderr.
    stdout = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    import warnings

    warnings.filterwarnings("ignore", module=r"(mmengine|mmdet|pytorch_lightning|lightning_fabric)")
    if args.train:  # one training, in a process of its own: its figures as JSON
        torch.set_num_threads(args.threads)
        if args.train == "init":
            save_initial_weights(models[0], args.root)
            return
        if args.train == "runner":
            figures = runner_run(models[0], args.root, args.warmup_steps, args.steps, args.work)
        else:
            precision = "32-true" if args.train == "core" else resolve_precision("auto", "cpu")
            figures = core_run(models[0], args.root, precision, args.warmup_steps, args.steps, args.work)
        stdout.write(json.dumps(figures) + "\n")
        return
    started = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_detection_step_") as tmp:
        root = make_chips(Path(tmp), args.size, BATCH * (args.warmup_steps + args.steps))
        for model in models:
            begin = time.perf_counter()
            try:
                results[model] = bench_model(model, root, args, Path(tmp))
            except Exception as exc:  # one model failing does not lose the others' figures
                traceback.print_exc()
                results[model] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            results[model]["wall_s"] = round(time.perf_counter() - begin, 1)
            print(f"{model}: {json.dumps(results[model])}", file=sys.stderr, flush=True)
    timed = [r for r in results.values() if "error" not in r]
    stdout.write(json.dumps({
        "benchmark": "detection_step", "batch_size": BATCH, "size": args.size, "steps": args.steps,
        "warmup_steps": args.warmup_steps, "rounds": args.rounds,
        "malloc": {name: os.environ[name] for name in STEADY_MALLOC if name in os.environ} or "glibc defaults",
        "device": "cpu", "cpu": cpu_name(),
        "cpu_count": os.cpu_count(), "torch_threads": args.threads, "cpu_bf16_flags": cpu_bf16_flags(),
        "torch": torch.__version__,
        "runner_precision": "fp32 (OptimWrapper)", "core_precision": "32-true",
        "target": f"core_vs_runner_speed >= {TARGET}", "models": results,
        "all_met": bool(timed) and len(timed) == len(results) and all(r["met"] for r in timed),
        "total_s": round(time.perf_counter() - started, 1),
    }, indent=1) + "\n")
    stdout.flush()


if __name__ == "__main__":
    main()
