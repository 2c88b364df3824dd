"""Training steps per second through the geoscale core against a hand-written PyTorch loop.

Same network (smp U-Net), data (one chip dataset, augmented train loader), batch size, optimizer,
loss and precision (``--precision``, default ``auto`` as the core resolves it; the plain loop runs
bf16-mixed as torch.autocast); both timed in steady state (after warm-up steps) in this one process,
alternating, best of ``--repeats``. Prints JSON; the target is core/plain >= 0.95.

    python scripts/bench_core_overhead.py [--steps 30] [--encoder resnet18] [--chip-size 128] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from apps.core.config import build, compose_app_config
from apps.core.tasks.data import ChipSplit
from apps.core.training.precision import resolve_precision
from apps.core.training.train import build_trainer
from apps.foundation.chips import ChipDataset
from data_prep.synthetic_chips import make_chip_dataset


class SteadyStateTimer(pl.Callback):
    """Seconds from the start of training batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.started = self.ended = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.steps += 1
            self.ended = time.perf_counter()


def plain_loop(cfg, steps: int, warmup: int, precision: str) -> dict[str, float]:
    """The same training written by hand: DataLoader, forward and loss (under autocast for bf16-mixed),
    backward, step."""
    import segmentation_models_pytorch as smp
    from torch.utils.data import DataLoader

    from apps.core.tasks.segmentation import IMAGENET_MEAN, IMAGENET_STD

    pl.seed_everything(0)
    begin = time.perf_counter()
    model = smp.create_model(cfg.model.arch, encoder_name=cfg.model.encoder, encoder_weights=None, classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    split = ChipSplit(ChipDataset(cfg.data.root), "train", {"image": "normalized"}, augment=True)
    loader = DataLoader(split, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                        persistent_workers=cfg.num_workers > 0)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1), torch.tensor(IMAGENET_STD).view(1, -1, 1, 1)
    model.train()
    started = 0.0
    for i, batch in enumerate(loader):
        if i == warmup:
            started = time.perf_counter()
        if i == warmup + steps:
            break
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = criterion(model((batch["image"] - mean) / std), batch["mask"])
        loss.backward()
        optimizer.step()
    ended = time.perf_counter()
    return {"steps_per_s": steps / (ended - started), "total_s": ended - begin}


def core_loop(cfg, steps: int, warmup: int, run_dir: Path) -> dict[str, float]:
    """Training through the core: build_trainer + the app's task and datamodule."""
    pl.seed_everything(0)
    begin = time.perf_counter()
    timer = SteadyStateTimer(warmup)
    trainer, _, _ = build_trainer(cfg, run_dir, extra_callbacks=[timer])
    trainer.fit(build(cfg.task), datamodule=build(cfg.data))
    assert timer.steps == steps, (timer.steps, steps)
    return {"steps_per_s": steps / (timer.ended - timer.started), "total_s": time.perf_counter() - begin}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chip-size", type=int, default=128)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=("auto", "32-true", "bf16-mixed"))
    args = parser.parse_args()
    precision = resolve_precision(args.precision, "cpu")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        chips_needed = (args.steps + args.warmup) * args.batch_size
        root = make_chip_dataset(tmp / "chips", chips_per_scene=chips_needed // 2 + 1, size=args.chip_size)
        cfg = compose_app_config("burned_area", [
            f"data.root={root}", f"model.encoder={args.encoder}", f"batch_size={args.batch_size}", "epochs=1",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
            "trainer.num_sanity_val_steps=0", "trainer.limit_val_batches=0",
            f"trainer.limit_train_batches={args.steps + args.warmup}",
            "monitor=null", f"trainer.precision={precision}",
        ])
        plain, core = [], []
        for r in range(args.repeats):
            plain.append(plain_loop(cfg, args.steps, args.warmup, precision))
            core.append(core_loop(cfg, args.steps, args.warmup, tmp / f"run{r}"))
    best_plain = max(p["steps_per_s"] for p in plain)
    best_core = max(c["steps_per_s"] for c in core)
    print(json.dumps({
        "benchmark": "core_overhead",
        "model": f"{cfg.model.arch}/{args.encoder}", "chip_size": args.chip_size, "batch_size": args.batch_size,
        "steps": args.steps, "device": "cpu", "precision": precision, "torch_threads": torch.get_num_threads(),
        "plain_steps_per_s": round(best_plain, 3), "core_steps_per_s": round(best_core, 3),
        "core_over_plain": round(best_core / best_plain, 3), "target": 0.95,
        "met": best_core / best_plain >= 0.95,
        "plain_total_s": [round(p["total_s"], 2) for p in plain], "core_total_s": [round(c["total_s"], 2) for c in core],
    }, indent=2))


if __name__ == "__main__":
    main()
