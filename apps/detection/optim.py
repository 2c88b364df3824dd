"""An mmdet model's optimizer settings outside mmengine's Runner: parameter groups and lr schedules.

Parameter groups come from mmengine's ``paramwise_cfg`` rules (or a named optimizer constructor,
such as layer-wise lr decay), while the optimizer itself stays the shared ``conf/optimizer`` choice,
so ``optimizer=`` and ``lr=`` keep working. Schedules compose as mmengine's param schedulers do:
the learning rate is the base lr times an iteration-wise warmup factor times an epoch-wise factor.
"""

from __future__ import annotations

import inspect
import logging
import math
from contextlib import contextmanager
from functools import partial
from typing import Any, Iterator, Mapping

import torch
from torch.optim.lr_scheduler import LRScheduler

from apps.core.config import build
from apps.foundation.errors import InputError

#: Keys of a parameter group that name parameters rather than set options (dropped when merging).
_NAME_KEYS = ("params", "param_name", "param_names")


@contextmanager
def _quiet_mmengine() -> Iterator[None]:
    """Silence mmengine's logger (mmdet's layer-decay constructor logs one line per parameter)."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _constructor_class(name: str) -> type:
    """An optimizer wrapper constructor by registry name: mmdet's (``LearningRateDecayOptimizerConstructor``)
    or, with the ``mmpretrain.`` scope, mmpretrain's (``mmpretrain.LearningRateDecayOptimWrapperConstructor``)."""
    from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    if name.startswith("mmpretrain."):
        import mmpretrain.engine  # noqa: F401  (registers mmpretrain's constructors)
    found = OPTIM_WRAPPER_CONSTRUCTORS.get(name)
    if found is None:
        raise InputError(f"model.constructor: no optimizer constructor {name!r} in mmdet or mmpretrain")
    return found


def _merged(groups: list[dict]) -> list[dict]:
    """Parameter groups with identical options merged into one (mmengine makes one per parameter)."""
    merged: dict[str, dict] = {}
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        options = {k: v for k, v in group.items() if k not in _NAME_KEYS}
        merged.setdefault(repr(sorted(options.items())), {**options, "params": []})["params"].extend(params)
    return [group for group in merged.values() if group["params"]]


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float | None,
                 paramwise: Mapping[str, Any] | None = None, constructor: str | None = None) -> list[dict]:
    """The trainable parameters of ``model`` in groups with their own ``lr`` / ``weight_decay``, as
    mmengine's ``DefaultOptimWrapperConstructor`` (or the named ``constructor``) makes them from
    ``paramwise`` (mmengine's ``paramwise_cfg``: ``custom_keys`` with ``lr_mult``/``decay_mult``,
    ``norm_decay_mult``, ``bias_decay_mult``, ``bias_lr_mult``, layer-decay settings ...) around the
    base ``lr`` and ``weight_decay``."""
    if not paramwise and not constructor:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    from mmengine.optim import DefaultOptimWrapperConstructor

    maker = _constructor_class(constructor) if constructor else DefaultOptimWrapperConstructor
    wrapper = {"type": "OptimWrapper", "optimizer": {"type": "SGD", "lr": lr, "weight_decay": weight_decay}}
    try:
        builder = maker(wrapper, dict(paramwise or {}))
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"model.paramwise: {str(exc).splitlines()[0]}") from None
    groups: list[dict] = []
    depth_of = getattr(getattr(model, "backbone", None), "get_layer_depth", None)
    with _quiet_mmengine():
        if ("get_layer_depth" in inspect.signature(builder.add_params).parameters
                and not hasattr(model, "get_layer_depth") and depth_of is not None):
            # mmpretrain's layer decay asks the model for depths; a detector's backbone knows them.
            builder.add_params(groups, model, get_layer_depth=partial(depth_of, prefix="backbone."))
        else:
            builder.add_params(groups, model)
    return _merged(groups)


def build_optimizer(model: torch.nn.Module, optimizer_cfg: Mapping[str, Any], paramwise: Mapping[str, Any] | None = None,
                    constructor: str | None = None) -> torch.optim.Optimizer:
    """The optimizer of ``optimizer_cfg`` (a partial ``_target_`` config with ``lr`` and
    ``weight_decay``, conf/optimizer/*.yaml) over ``model``'s parameter groups (``param_groups``)."""
    optimizer_cfg = dict(optimizer_cfg)
    groups = param_groups(model, float(optimizer_cfg["lr"]), optimizer_cfg.get("weight_decay"), paramwise, constructor)
    return build(optimizer_cfg)(groups)


class _FactorLR(LRScheduler):
    """A schedule factor kept in each parameter group under ``KEY``; the lr is the group's initial
    lr times every factor there, so a warmup and an epoch schedule stepped at different intervals
    multiply as mmengine's param schedulers do. Subclasses give ``factor(t)`` at step ``t``."""

    KEY = ""

    def factor(self, t: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        value = self.factor(self.last_epoch)
        lrs = []
        for group in self.optimizer.param_groups:
            group[self.KEY] = value
            lrs.append(group["initial_lr"] * math.prod(group.get(k, 1.0) for k in _FACTOR_KEYS))
        return lrs


class WarmupLR(_FactorLR):
    """Per-iteration warmup over ``iters`` optimizer steps: ``linear`` from ``ratio`` to 1 (mmengine's
    LinearLR), ``constant`` at ``ratio`` (ConstantLR) or ``quadratic``, ((t+1)/iters)^2 (mmdet's
    QuadraticWarmupLR); 1 from step ``iters`` on."""

    KEY = "warmup_factor"

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, iters: int, ratio: float) -> None:
        self.kind, self.iters, self.ratio = kind, max(int(iters), 1), float(ratio)
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        if t >= self.iters:
            return 1.0
        if self.kind == "linear":
            return self.ratio + (1.0 - self.ratio) * t / self.iters
        if self.kind == "constant":
            return self.ratio
        return ((t + 1) / self.iters) ** 2


class EpochLR(_FactorLR):
    """Per-epoch factor: ``step`` multiplies by ``gamma`` at each epoch of ``milestones``; ``cosine``
    anneals from 1 at epoch ``begin`` to ``eta_min_ratio`` at epoch ``end`` and holds it after."""

    KEY = "epoch_factor"

    def __init__(self, optimizer: torch.optim.Optimizer, policy: str, milestones: list[int] = (), gamma: float = 0.1,
                 begin: int = 0, end: int = 1, eta_min_ratio: float = 0.0) -> None:
        self.policy, self.milestones, self.gamma = policy, sorted(milestones), float(gamma)
        self.begin, self.end, self.eta_min_ratio = int(begin), max(int(end), int(begin) + 1), float(eta_min_ratio)
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        if self.policy == "step":
            return self.gamma ** sum(t >= m for m in self.milestones)
        if t < self.begin:
            return 1.0
        progress = (min(t, self.end) - self.begin) / (self.end - self.begin)
        return self.eta_min_ratio + (1.0 - self.eta_min_ratio) * (1.0 + math.cos(math.pi * progress)) / 2.0


_FACTOR_KEYS = (WarmupLR.KEY, EpochLR.KEY)

_SCHEDULE_KEYS = {"warmup", "warmup_iters", "warmup_fraction", "warmup_ratio", "policy", "milestones", "gamma",
                  "begin", "end", "eta_min_ratio"}


def build_schedule(optimizer: torch.optim.Optimizer, schedule: Mapping[str, Any] | None, epochs: int,
                   steps: int | None = None) -> list[dict]:
    """Lightning ``lr_scheduler`` dicts for an mmdet model's schedule over a run of ``epochs``.

    ``schedule`` keys: ``warmup`` (linear | constant | quadratic | null) over ``warmup_iters``
    optimizer steps, or over ``warmup_fraction`` of the run's ``steps`` (YOLOX's 5 of 300 epochs),
    starting at ``warmup_ratio`` of the lr; ``policy`` (step | cosine | null; step when
    ``milestones`` are given) with ``milestones`` and ``gamma``, or ``begin``, ``end`` and
    ``eta_min_ratio`` for cosine. Milestones, begin and end are fractions of ``epochs`` (mmdet's 8
    and 11 of 12 epochs: 0.667, 0.917) rounded to whole epochs. The warmup is stepped every
    optimizer step, the epoch schedule at each epoch's end, as mmengine does; their factors multiply.
    """
    schedule = dict(schedule or {})
    unknown = set(schedule) - _SCHEDULE_KEYS
    if unknown:
        raise InputError(f"model.schedule: unknown key(s) {sorted(unknown)} (known: {sorted(_SCHEDULE_KEYS)})")
    epochs = max(int(epochs), 1)
    schedulers = []
    kind = schedule.get("warmup")
    if kind:
        if kind not in ("linear", "constant", "quadratic"):
            raise InputError(f"model.schedule.warmup: {kind!r} is not linear, constant or quadratic")
        if schedule.get("warmup_fraction") is not None:
            if not steps:
                raise InputError("model.schedule.warmup_fraction: the run's number of steps is unknown")
            iters = round(float(schedule["warmup_fraction"]) * steps)
        else:
            iters = int(schedule.get("warmup_iters") or 0)
        warmup = WarmupLR(optimizer, kind, iters, float(schedule.get("warmup_ratio", 0.001)))
        schedulers.append({"scheduler": warmup, "interval": "step", "frequency": 1, "name": "warmup"})
    policy = schedule.get("policy") or ("step" if schedule.get("milestones") else None)
    if policy == "step":
        milestones = [round(float(f) * epochs) for f in schedule.get("milestones") or ()]
        epoch_lr = EpochLR(optimizer, "step", milestones=milestones, gamma=float(schedule.get("gamma", 0.1)))
    elif policy == "cosine":
        epoch_lr = EpochLR(optimizer, "cosine", begin=round(float(schedule.get("begin", 0.0)) * epochs),
                           end=round(float(schedule.get("end", 1.0)) * epochs),
                           eta_min_ratio=float(schedule.get("eta_min_ratio", 0.0)))
    elif policy:
        raise InputError(f"model.schedule.policy: {policy!r} is not step or cosine")
    if policy:
        schedulers.append({"scheduler": epoch_lr, "interval": "epoch", "frequency": 1, "name": "epoch"})
    return schedulers
