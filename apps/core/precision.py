"""``trainer.precision=auto``: the fastest precision the hardware runs well.

bf16-mixed on a GPU with bf16 support and on a CPU with AMX-BF16 (where oneDNN's AMX kernels make
bf16 autocast 2-3.6x faster than fp32), 16-mixed on older GPUs, 32-true otherwise.
"""

from __future__ import annotations

from pathlib import Path

AUTO = "auto"


def cpu_has_amx_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU flags list ``amx_bf16`` (Linux); False where that cannot be read."""
    try:
        with cpuinfo.open() as fh:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in fh)
    except OSError:
        return False


def resolve_precision(precision: str | int, accelerator: str = "auto") -> str:
    """``precision`` itself unless it is ``auto``; then the rule above for the device that
    ``accelerator`` (Lightning's name: auto, cpu, gpu, cuda) trains on."""
    if str(precision) != AUTO:
        return str(precision)
    import torch

    uses_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if uses_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_amx_bf16() else "32-true"
