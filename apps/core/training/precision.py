"""``trainer.precision=auto``: the fastest precision the hardware runs well.

bf16-mixed on a GPU with bf16 support and on a CPU with bf16 instructions (AMX-BF16 or AVX512-BF16,
where oneDNN's bf16 kernels make autocast 2-3.6x faster than fp32; scripts/bench_changeformer.py),
16-mixed on older GPUs, 32-true otherwise.
"""

from __future__ import annotations

from pathlib import Path

AUTO = "auto"


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The bf16 instruction sets (BF16_CPU_FLAGS) that the CPU flags list (Linux); none where unreadable."""
    try:
        with cpuinfo.open() as fh:
            flags = next((set(line.split()) for line in fh if line.startswith("flags")), set())
    except OSError:
        return []
    return [flag for flag in BF16_CPU_FLAGS if flag in flags]


def resolve_precision(precision: str | int, accelerator: str = "auto") -> str:
    """``precision`` itself unless it is ``auto``; then the rule above for the device that
    ``accelerator`` (Lightning's name: auto, cpu, gpu, cuda) trains on."""
    if str(precision) != AUTO:
        return str(precision)
    import torch

    uses_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if uses_gpu:
        # Emulated bf16 (pre-Ampere GPUs) is slow: those get fp16.
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    return "bf16-mixed" if cpu_bf16_flags() else "32-true"
