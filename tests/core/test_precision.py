"""trainer.precision=auto: the rule for each kind of device, and an explicit choice left alone."""

from __future__ import annotations

import pytest
import torch

from apps.core.training import precision
from apps.core.training.precision import cpu_bf16_flags, resolve_precision


def fake_cpu(tmp_path, monkeypatch, flags: str) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n")
    monkeypatch.setattr(precision.cpu_bf16_flags, "__defaults__", (cpuinfo,))


@pytest.mark.parametrize("flags, expected", [
    ("avx512f amx_bf16 amx_tile", "bf16-mixed"),
    ("avx512f avx512_bf16", "bf16-mixed"),
    ("avx512f", "32-true"),
])
def test_cpu_rule(tmp_path, monkeypatch, flags, expected):
    fake_cpu(tmp_path, monkeypatch, flags)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == expected


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16-mixed"), (False, "16-mixed")])
def test_gpu_rule(tmp_path, monkeypatch, native_bf16, expected):
    """A GPU decides, whatever the CPU; emulated bf16 (pre-Ampere) counts as none."""
    fake_cpu(tmp_path, monkeypatch, "avx512_bf16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16)
    assert resolve_precision("auto", "gpu") == expected
    assert resolve_precision("auto", "cpu") == "bf16-mixed"  # trainer.accelerator=cpu on a GPU machine


def test_explicit_precision_and_unreadable_cpuinfo(tmp_path):
    assert resolve_precision("16-mixed") == "16-mixed" and resolve_precision(32) == "32"
    assert cpu_bf16_flags(tmp_path / "missing") == []
