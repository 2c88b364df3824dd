"""The detectors of ``model=``: model configs taken from the config files that ship with mmdet 3.3.

``mmdet_model`` is the ``network`` of conf/detection/model/*.yaml: it reads an mmdet config file,
keeps its ``model`` and adapts it to a dataset (``num_classes``) and to this project (no pretrained
weights downloaded at build time: the task loads a local ``weights`` file instead).
The ``_target_`` sits at ``model.network``, not ``model``: the group's other keys (lr, schedule, paramwise, ...) are the task's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import mmdet
from mmdet.models.dense_heads import SSDHead
from mmdet.registry import MODELS

from apps.core.tasks.base import plain
from apps.foundation.errors import InputError

#: The init_cfg types that load a checkpoint (from a URL or the model zoo) when the model initialises.
_PRETRAINED = ("Pretrained", "PretrainedInit")


@MODELS.register_module()
class SSDHeadThatPredicts(SSDHead):
    """mmdet 3.3's SSDHead, whose ``predict`` reads a ``loss_cls`` that SSDHead never sets
    (AttributeError; mmdet issues 11063 and 11780). ``mmdet_model`` uses it in place of SSDHead."""

    loss_cls = None


#: mmdet modules replaced by a fixed version (type name -> type name).
_FIXED = {"SSDHead": "SSDHeadThatPredicts"}


def configs_root() -> Path:
    """Where the mmdet wheel keeps its config files (``mmdet/.mim/configs``)."""
    return Path(mmdet.__file__).parent / ".mim" / "configs"


def _read_model(config: str) -> dict:
    """The ``model`` of mmdet config file ``config`` (relative to ``configs_root()``) as a plain dict;
    its ``custom_imports`` (mmpretrain backbones) are imported, so their modules are registered."""
    from mmengine.config import Config

    path = configs_root() / config
    if not path.is_file():
        raise InputError(f"model.network.config: no mmdet config {config!r} under {configs_root()}")
    model = Config.fromfile(str(path)).get("model")
    if not model:
        raise InputError(f"model.network.config: mmdet config {config!r} defines no model")
    return model.to_dict()


def _nested(changes: Mapping[str, Any]) -> dict:
    """``changes`` with dotted keys (``"backbone.depth": 18``) expanded into nested dicts."""
    nested: dict = {}
    for key, value in changes.items():
        *parents, last = str(key).split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = _nested(value) if isinstance(value, Mapping) else value
    return nested


def merge(base: dict, changes: Mapping[str, Any]) -> dict:
    """``base`` updated by ``changes`` recursively (dicts merge, anything else replaces); a dict of
    changes with ``_delete_: true`` replaces the base's dict instead, as in mmengine configs."""
    merged = dict(base)
    for key, value in _nested(changes).items():
        if isinstance(value, dict) and value.pop("_delete_", False):
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_num_classes(node: Any, num_classes: int) -> int:
    """Set ``num_classes`` wherever a dict under ``node`` has one (every head); returns how many."""
    count = 0
    if isinstance(node, dict):
        if "num_classes" in node:
            node["num_classes"] = num_classes
            count += 1
        count += sum(_set_num_classes(v, num_classes) for v in node.values())
    elif isinstance(node, (list, tuple)):
        count += sum(_set_num_classes(v, num_classes) for v in node)
    return count


def _drop_pretrained(node: Any) -> None:
    """Remove every ``init_cfg`` that loads a checkpoint, and old-style ``pretrained`` paths."""
    if isinstance(node, dict):
        init = node.get("init_cfg")
        if isinstance(init, dict) and init.get("type") in _PRETRAINED:
            del node["init_cfg"]
        elif isinstance(init, (list, tuple)):
            kept = [c for c in init if not (isinstance(c, dict) and c.get("type") in _PRETRAINED)]
            if kept:
                node["init_cfg"] = kept
            else:
                del node["init_cfg"]
        if isinstance(node.get("pretrained"), str):
            del node["pretrained"]
        for value in node.values():
            _drop_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _drop_pretrained(value)


def _fix_types(node: Any) -> None:
    """Replace the ``type`` of every mmdet module that ``_FIXED`` fixes."""
    if isinstance(node, dict):
        if node.get("type") in _FIXED:
            node["type"] = _FIXED[node["type"]]
        for value in node.values():
            _fix_types(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _fix_types(value)


def _types(node: Any) -> set[str]:
    """Every ``type`` named in a config tree."""
    if isinstance(node, dict):
        found = {node["type"]} if isinstance(node.get("type"), str) else set()
        return found.union(*(_types(v) for v in node.values()))
    if isinstance(node, (list, tuple)):
        return set().union(*(_types(v) for v in node))
    return set()


def mmdet_model(num_classes: int, config: str, changes: Mapping[str, Any] | None = None,
                backbone_from: str | None = None, neck_in_channels: list[int] | None = None) -> dict:
    """The mmdet model config (a dict with ``type``, ``data_preprocessor``, ``backbone``, ...) of
    ``config`` (a file under mmdet's ``.mim/configs``, e.g. ``retinanet/retinanet_x101-64x4d_fpn_1x_coco.py``).

    - ``backbone_from``: another config whose backbone replaces this one's; the neck then takes
      that config's neck ``in_channels`` unless ``neck_in_channels`` gives them.
    - ``changes``: merged into the model (nested or dotted keys, ``_delete_: true`` replaces a dict).
    - Every head's ``num_classes`` is set to ``num_classes``.
    - Every ``Pretrained`` init_cfg is removed: nothing is downloaded, the task's ``weights`` file
      brings pretrained weights. Frozen stages and ``norm_eval`` stay as configured unless
      ``changes`` set them (a backbone trained from random weights wants ``frozen_stages: -1,
      norm_eval: false``).
    - Modules with an mmdet bug are replaced by fixed ones (``_FIXED``).
    """
    model = _read_model(config)
    if backbone_from:
        other = _read_model(backbone_from)
        model["backbone"] = other["backbone"]
        if neck_in_channels is None and isinstance(other.get("neck"), dict):
            neck_in_channels = other["neck"].get("in_channels")
    if neck_in_channels is not None:
        if not isinstance(model.get("neck"), dict):
            raise InputError(f"model.network.neck_in_channels: mmdet config {config!r} has no neck")
        model["neck"] = {**model["neck"], "in_channels": list(plain(neck_in_channels))}
    model = merge(model, plain(changes) or {})
    if _set_num_classes(model, int(num_classes)) == 0:
        raise InputError(f"model.network.config: mmdet config {config!r} has no head with num_classes")
    _drop_pretrained(model)
    _fix_types(model)
    types = _types(model)
    if any(t.startswith("mmpretrain.") for t in types):
        import mmpretrain.models  # noqa: F401  (registers the mmpretrain backbones)
    if "SimpleFeaturePyramid" in types:
        import apps.detection.vit_pyramid  # noqa: F401  (registers the pyramid)
    return model
