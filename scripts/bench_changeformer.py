"""ChangeFormer V6: parameters, training-step and inference time in the default precision
(``trainer.precision=auto``) against fp32 eager execution of the authors' network, in this one
process, on the CPU or (``--device cuda``) a GPU, where pairs per second in bf16 is the figure to read.

The network and its loss are the deforestation app's default (``DeforestationTask`` as
``python -m apps.deforestation`` builds it): a training step is forward, the deep-supervised loss of
all five outputs, backward and an AdamW step; inference is one forward pass without gradients. Each
figure is the median of ``--repeats`` timed calls after ``--warmup`` untimed ones.

- ``authors_fp32``, the baseline: the same network run as the authors' code runs it, fp32 eager with
  every convolution on channels-last views of the tokens, in training too (where this network copies
  them to NCHW on CPUs whose channels-last weight gradients are slow).
- ``32-true``: this network in fp32; the default precision where the CPU has no bf16 instructions.
- ``authors_code_fp32``, with ``--authors-code DIR``: the authors' own ``ChangeFormerV6`` from a
  checkout of github.com/wgcban/ChangeFormer, fp32 eager, in the same task and loss.
- ``bf16-mixed``, timed even where ``auto`` would not pick it, so the choice can be checked on any
  device (``--no-bf16`` leaves it out: without bf16 instructions it is emulated and slow).

Prints JSON with the CPU's instruction sets; the target is default vs authors_fp32 >= 3x with bf16
instructions, >= 1.5x on AVX2 alone, for the training step and inference alike.

    python scripts/bench_changeformer.py [--batch 2] [--size 256] [--repeats 3] [--device cpu|cuda] [--no-bf16]
        [--authors-code DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

from apps.core.config import build, compose_app_config
from apps.core.training.precision import cpu_bf16_flags, resolve_precision
from apps.deforestation import changeformer

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
BASELINE = "authors_fp32"
AUTHORS_CODE = "authors_code_fp32"


def authors_layout():
    """Inside it, the network keeps the channels-last views in training, as the authors' code does."""
    return mock.patch.object(changeformer, "channels_last_weight_gradients_are_slow", lambda device_type: False)


def autocast(precision: str, device: str):
    """The autocast context of a Lightning precision name on ``device``."""
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def median_seconds(step, warmup: int, repeats: int, device: str) -> float:
    """Median wall time of ``step()`` over ``repeats`` calls after ``warmup`` calls (GPU work waited for)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def authors_network(checkout: Path) -> Callable[[], torch.nn.Module]:
    """A builder of ``ChangeFormerV6(input_nc=3, output_nc=2, decoder_softmax=False, embed_dim=256)``
    from a checkout of the authors' repository (github.com/wgcban/ChangeFormer)."""
    if not (checkout / "models" / "ChangeFormer.py").is_file():
        raise SystemExit(f"error: --authors-code {checkout}: no models/ChangeFormer.py there; "
                         f"give a checkout of github.com/wgcban/ChangeFormer")
    sys.path.insert(0, str(checkout))
    from models.ChangeFormer import ChangeFormerV6

    return lambda: ChangeFormerV6(input_nc=3, output_nc=2, decoder_softmax=False, embed_dim=256)


def measure(precision: str, device: str, batch: int, size: int, warmup: int, repeats: int,
            network: Callable[[], torch.nn.Module] | None = None) -> dict[str, float]:
    """Median training-step and inference times of the deforestation task, its network from ``network``
    where given."""
    torch.manual_seed(0)
    net = build(compose_app_config("deforestation").task)
    if network is not None:
        net.net = network()
    net = net.to(device)
    optimizer = net.configure_optimizers()
    scaler = torch.amp.GradScaler(device, enabled=precision == "16-mixed")
    before, after = torch.rand(2, batch, 3, size, size, device=device)
    pairs = {"before": before, "after": after, "mask": (torch.rand(batch, size, size, device=device) > 0.8).long()}

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            loss = net.training_loss(pairs)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def inference() -> None:
        with torch.no_grad(), autocast(precision, device):
            net(before, after)

    net.train()
    train_s = median_seconds(train_step, warmup, repeats, device)
    net.eval()
    infer_s = median_seconds(inference, warmup, repeats, device)
    return {"train_step_s": round(train_s, 4), "inference_s": round(infer_s, 4),
            "pairs_per_s_train": round(batch / train_s, 3), "pairs_per_s_inference": round(batch / infer_s, 3)}


def measure_run(run: str, device: str, batch: int, size: int, warmup: int, repeats: int) -> dict[str, float]:
    """``measure`` of a run: a precision name, or BASELINE (32-true in the authors' layout)."""
    if run == BASELINE:
        with authors_layout():
            return measure("32-true", device, batch, size, warmup, repeats)
    return measure(run, device, batch, size, warmup, repeats)


def speedup(results: dict, run: str, baseline: str) -> dict[str, float]:
    fp32, other = results[baseline], results[run]
    return {"train_step": round(fp32["train_step_s"] / other["train_step_s"], 2),
            "inference": round(fp32["inference_s"] / other["inference_s"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--authors-code", type=Path, metavar="DIR",
                        help="also time the authors' own ChangeFormerV6 (fp32 eager) from this checkout")
    parser.add_argument("--no-bf16", action="store_true", help="leave bf16-mixed out unless it is the default")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device is available")

    default = resolve_precision("auto", "gpu" if args.device == "cuda" else "cpu")
    runs = dict.fromkeys((BASELINE, "32-true", *(() if args.no_bf16 else ("bf16-mixed",)), default))
    authors = authors_network(args.authors_code) if args.authors_code is not None else None  # checked first
    results = {run: measure_run(run, args.device, args.batch, args.size, args.warmup, args.repeats) for run in runs}
    if authors is not None:
        results[AUTHORS_CODE] = measure("32-true", args.device, args.batch, args.size, args.warmup, args.repeats,
                                        authors)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    report = {
        "network": "ChangeFormerV6",
        "parameters": sum(p.numel() for p in changeformer.build_changeformer_v6().parameters()),
        "batch": args.batch, "size": args.size, "device": device_name, "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_flags": cpu_bf16_flags(),
        "nchw_training": changeformer.channels_last_weight_gradients_are_slow(args.device),
        "default_precision": default, "results": results,
        "default_vs_authors_fp32": speedup(results, default, BASELINE),
        "fp32_vs_authors_fp32": speedup(results, "32-true", BASELINE),
    }
    if AUTHORS_CODE in results:
        report["default_vs_authors_code_fp32"] = speedup(results, default, AUTHORS_CODE)
    if "bf16-mixed" in results:
        report["bf16_vs_fp32"] = speedup(results, "bf16-mixed", "32-true")
    report["target"] = ">= 3x default vs authors_fp32 with bf16 instructions, >= 1.5x without; train step and inference"
    print(json.dumps(report, indent=1))

if __name__ == "__main__":
    main()
