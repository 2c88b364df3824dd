"""Loading a trained task from its checkpoint for prediction, and the device to run it on."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, TypeVar

from apps.core.config import current_name, upgrade_targets
from apps.foundation.chips import ChipPreparation
from apps.foundation.errors import InputError
from data_prep.geotiff import first_line

DEVICES = ("auto", "cpu", "cuda")

log = logging.getLogger(__name__)

P = TypeVar("P", bound=ChipPreparation)


def load_task(path: Path, device: str):
    """The task stored in checkpoint ``path``, of the class the checkpoint names, on ``device``.

    The class's ``CHECKPOINT_OVERRIDES`` replace hyperparameters that only training needs (such as a
    pretrained-weights file): the checkpoint's own weights replace them.
    """
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        name = checkpoint.get("task_class")
        if not name:
            raise InputError(f"checkpoint {path}: names no task class (written by an older geoscale or another "
                             "program; python -m apps.reproduce RUN_DIR trains the run again)")
        module, _, class_name = current_name(name).rpartition(".")
        task_class = getattr(importlib.import_module(module), class_name)
        hyper_parameters = upgrade_targets(checkpoint["hyper_parameters"])
        task = task_class(**{**hyper_parameters, **task_class.CHECKPOINT_OVERRIDES})
        task.load_state_dict(checkpoint["state_dict"])
        task.on_load_checkpoint(checkpoint)
    except InputError:
        raise
    except Exception as exc:  # torch, pickle, zip, import and constructor errors all mean: not usable here
        raise InputError(f"checkpoint {path}: cannot be loaded ({type(exc).__name__}: {first_line(exc)})") from None
    return task.to(device)


def recorded_preparation(task: Any, record_type: type[P] = ChipPreparation) -> P:
    """How the task's training chips were made (the prep's record in the checkpoint), as ``record_type``:
    every field None for a checkpoint whose dataset recorded none."""
    return record_type.from_attrs(task.preparation.get("attrs", {}))


def pick_device(name: str) -> str:
    """``name`` ("auto", "cpu" or "cuda") as a torch device string; auto is cuda when available."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    return name
