"""ChangeFormer V6: parameters, training-step and inference time in the default precision
(``trainer.precision=auto``) against fp32 eager execution of the same network, in this one process,
on the CPU or (``--device cuda``) a GPU, where pairs per second in bf16 is the figure to read.

The network and its loss are the deforestation app's default (``DeforestationTask`` as
``python -m apps.deforestation`` builds it): a training step is forward, the deep-supervised loss of
all five outputs, backward and an AdamW step; inference is one forward pass without gradients. Each figure is the median of ``--repeats`` timed
calls after ``--warmup`` untimed ones. bf16-mixed is timed even where ``auto`` would not pick it, so
the choice can be checked on any device. Prints JSON; the target is default/fp32 >= 3x on both.

    python scripts/bench_changeformer.py [--batch 2] [--size 256] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time

import torch

from apps.core.config import build, compose_app_config
from apps.core.training.precision import cpu_bf16_flags, resolve_precision
from apps.deforestation.changeformer import build_changeformer_v6

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


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


def measure(precision: str, device: str, batch: int, size: int, warmup: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    net = build(compose_app_config("deforestation").task).to(device)
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


def speedup(results: dict, precision: str) -> dict[str, float]:
    fp32, other = results["32-true"], results[precision]
    return {"train_step": round(fp32["train_step_s"] / other["train_step_s"], 2),
            "inference": round(fp32["inference_s"] / other["inference_s"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device is available")

    default = resolve_precision("auto", "gpu" if args.device == "cuda" else "cpu")
    precisions = dict.fromkeys(("32-true", "bf16-mixed", default))
    results = {p: measure(p, args.device, args.batch, args.size, args.warmup, args.repeats) for p in precisions}
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(json.dumps({
        "network": "ChangeFormerV6", "parameters": sum(p.numel() for p in build_changeformer_v6().parameters()),
        "batch": args.batch, "size": args.size, "device": device_name, "threads": torch.get_num_threads(),
        "cpu_bf16_flags": cpu_bf16_flags(), "default_precision": default, "results": results,
        "default_vs_fp32": speedup(results, default), "bf16_vs_fp32": speedup(results, "bf16-mixed"),
        "target": ">= 3x default vs fp32, train step and inference",
    }, indent=1))


if __name__ == "__main__":
    main()
