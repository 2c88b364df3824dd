"""mmcv's compiled ops under bf16 mixed precision.

mmcv's CPU and CUDA kernels of NMS, RoIAlign and multi-scale deformable attention take float32 (and
float16 on CUDA), not bfloat16, so a detector that uses them fails under ``bf16-mixed``
("expected scalar type Float but found BFloat16"). ``run_mmcv_ops_in_float32`` makes each of those
ops cast its bfloat16 inputs to float32, run with autocast off, and give its output back in the
input's dtype; other dtypes pass through untouched. It replaces the names the ops' own modules call
(mmcv has no hook for this), once per process.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

_done = False


def _in_float32(apply: Callable[..., Any]) -> Callable[..., Any]:
    """``apply`` run on float32 copies of its bfloat16 tensor arguments, the tensor result cast back."""

    @functools.wraps(apply)
    def run(*args: Any) -> Any:
        low = [a for a in args if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16]
        if not low:
            return apply(*args)
        with torch.autocast(low[0].device.type, enabled=False):
            result = apply(*(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args))
        return result.to(torch.bfloat16) if isinstance(result, torch.Tensor) and result.is_floating_point() else result

    return run


class _Float32Apply:
    """Stands in for an autograd Function whose ``apply`` its module calls by name."""

    def __init__(self, function: type) -> None:
        self.function = function
        self.apply = _in_float32(function.apply)


def run_mmcv_ops_in_float32() -> None:
    """Make mmcv's NMS, RoIAlign and multi-scale deformable attention accept bfloat16 (module doc)."""
    global _done
    if _done:
        return
    import importlib

    # by module path: mmcv.ops re-exports functions of the same names as these modules
    nms, roi_align, deform_attn = (importlib.import_module(f"mmcv.ops.{name}")
                                   for name in ("nms", "roi_align", "multi_scale_deform_attn"))

    nms.NMSop = _Float32Apply(nms.NMSop)  # nms() and batched_nms() call NMSop.apply; indices come back as they are
    roi_align.roi_align = _in_float32(roi_align.roi_align)  # RoIAlign.forward calls this module name
    deform_attn.MultiScaleDeformableAttnFunction = _Float32Apply(deform_attn.MultiScaleDeformableAttnFunction)
    _done = True
