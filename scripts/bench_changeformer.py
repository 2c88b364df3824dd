"""ChangeFormer V6 on the CPU: parameters, training-step and inference time in the default precision
(``trainer.precision=auto``) against fp32 eager execution of the same network, in this one process.

A training step is forward, the deep-supervised loss of all five outputs, backward and an AdamW step;
inference is one forward pass without gradients. Each figure is the median of ``--repeats`` timed
calls after ``--warmup`` untimed ones. bf16-mixed is timed even where ``auto`` would not pick it, so the
choice can be checked on any CPU. Prints JSON; the target is default/fp32 >= 3x on both.

    python scripts/bench_changeformer.py [--batch 2] [--size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from apps.core.precision import cpu_bf16_flags, resolve_precision
from apps.deforestation.changeformer import build_changeformer_v6

SUPERVISION_WEIGHTS = (0.5, 0.5, 0.5, 0.8, 1.0)


def autocast(precision: str):
    """The autocast context of a Lightning precision name on the CPU."""
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def median_seconds(step, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(precision: str, batch: int, size: int, warmup: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    net = build_changeformer_v6()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    before, after = torch.rand(2, batch, 3, size, size)
    mask = (torch.rand(batch, 1, size, size) > 0.8).float()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision):
            outputs = net(before, after)
            loss = sum(w * F.cross_entropy(o.float(), F.interpolate(mask, o.shape[-2:])[:, 0].long())
                       for w, o in zip(SUPERVISION_WEIGHTS, outputs))
        loss.backward()
        optimizer.step()

    def inference() -> None:
        with torch.no_grad(), autocast(precision):
            net(before, after)

    net.train()
    train_s = median_seconds(train_step, warmup, repeats)
    net.eval()
    infer_s = median_seconds(inference, warmup, repeats)
    return {"train_step_s": round(train_s, 3), "inference_s": round(infer_s, 3),
            "pairs_per_s_train": round(batch / train_s, 3), "pairs_per_s_inference": round(batch / infer_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    default = resolve_precision("auto", "cpu")
    results = {p: measure(p, args.batch, args.size, args.warmup, args.repeats) for p in ("32-true", "bf16-mixed")}
    fp32 = results["32-true"]
    print(json.dumps({
        "network": "ChangeFormerV6", "parameters": sum(p.numel() for p in build_changeformer_v6().parameters()),
        "batch": args.batch, "size": args.size, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cpu_bf16_flags": cpu_bf16_flags(),
        "default_precision": default, "results": results,
        "default_vs_fp32": {
            "train_step": round(fp32["train_step_s"] / results[default]["train_step_s"], 2),
            "inference": round(fp32["inference_s"] / results[default]["inference_s"], 2),
        },
        "bf16_vs_fp32": {
            "train_step": round(fp32["train_step_s"] / results["bf16-mixed"]["train_step_s"], 2),
            "inference": round(fp32["inference_s"] / results["bf16-mixed"]["inference_s"], 2),
        },
        "target": ">= 3x default vs fp32, train step and inference",
    }, indent=1))


if __name__ == "__main__":
    main()
