"""Chips per second from the burned-area DataModule (augmented train loader) against the chips per
second a U-Net/ResNet-50 training step consumes, same batch size and chip size, in one process.

Prints JSON; the target is loader >= 5x the step.

    python scripts/bench_data_loading.py [--batch-size 8] [--chip-size 256] [--num-workers 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from apps.core.config import build, compose_app_config
from data_prep.synthetic_chips import make_chip_dataset


def loader_chips_per_s(cfg, batches: int, warmup: int = 2) -> float:
    """Chips per second drawn from the train loader, workers included."""
    datamodule = build(cfg.data)
    datamodule.setup("fit")
    seen, started = 0, 0.0
    while True:  # as many passes over the train split as the measurement needs
        for batch in datamodule.train_dataloader():
            if warmup == 0 and not started:
                started = time.perf_counter()
            if warmup > 0:
                warmup -= 1
                continue
            seen += len(batch["mask"])
            if seen >= batches * cfg.batch_size:
                return seen / (time.perf_counter() - started)


def step_chips_per_s(cfg, steps: int, size: int, warmup: int = 1) -> float:
    """Chips per second through forward, loss, backward and optimizer step of the app's task."""
    task = build(cfg.task)
    optimizer = task.configure_optimizers()
    batch = {"image": torch.rand(cfg.batch_size, 3, size, size),
             "mask": torch.randint(0, 2, (cfg.batch_size, size, size))}
    task.train()
    for i in range(warmup + steps):
        if i == warmup:
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        task.criterion(task.forward_batch(batch), batch["mask"]).backward()
        optimizer.step()
    return steps * cfg.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--loader-batches", type=int, default=100)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_chip_dataset(Path(tmp) / "chips", chips_per_scene=128, size=args.chip_size)
        cfg = compose_app_config("burned_area", [
            f"data.root={root}", f"batch_size={args.batch_size}", f"num_workers={args.num_workers}",
            f"model.encoder={args.encoder}",
        ])
        loader = loader_chips_per_s(cfg, args.loader_batches)
        step = step_chips_per_s(cfg, args.steps, args.chip_size)
    print(json.dumps({
        "benchmark": "data_loading",
        "model": f"{cfg.model.arch}/{args.encoder}", "chip_size": args.chip_size, "batch_size": args.batch_size,
        "num_workers": args.num_workers, "augment": bool(cfg.data.augment), "device": "cpu",
        "loader_chips_per_s": round(loader, 1), "step_chips_per_s": round(step, 2),
        "loader_over_step": round(loader / step, 1), "target": 5.0, "met": loader / step >= 5.0,
    }, indent=2))


if __name__ == "__main__":
    main()
