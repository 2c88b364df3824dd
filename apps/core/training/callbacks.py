"""Lightning callbacks of the training core."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl

from apps.foundation.files import atomic_path
from apps.foundation.rundir import TEST_FIGURE


class RunClock(pl.Callback):
    """Training wall time that survives a resume: the time spent before the last checkpoint is
    saved in it and added back when a preempted run continues.
    """

    def __init__(self) -> None:
        self._carried_s = 0.0
        self._started = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        """Seconds of wall time across all attempts up to now."""
        return self._carried_s + time.perf_counter() - self._started

    def state_dict(self) -> dict[str, float]:
        return {"elapsed_s": self.elapsed_s}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self._carried_s = float(state_dict["elapsed_s"])
        self._started = time.perf_counter()


class TestExamplesFigure(pl.Callback):
    """Save a figure of the first test chips to ``<run_dir>/test_examples.png``.

    The task's ``test_step`` returns ``{"examples": {panel: tensor}}`` where each panel is either
    an image (B, 3, H, W) with values in [0, 1] or a class map (B, H, W); one row per chip,
    one column per panel (for example image, ground truth, prediction).
    """

    def __init__(self, num_examples: int = 6, filename: str = TEST_FIGURE) -> None:
        self.num_examples = num_examples
        self.filename = filename
        self._panels: dict[str, list[np.ndarray]] = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._panels = {}

    def on_test_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        if not isinstance(outputs, dict) or "examples" not in outputs:
            return
        have = len(next(iter(self._panels.values()), []))
        take = self.num_examples - have
        if take <= 0:
            return
        for name, tensor in outputs["examples"].items():
            rows = tensor[:take].detach().float().cpu().numpy()
            self._panels.setdefault(name, []).extend(rows)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._panels or not trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self._panels)
        n = len(self._panels[names[0]])
        fig, axes = plt.subplots(n, len(names), figsize=(2.2 * len(names), 2.2 * n), squeeze=False)
        for row in range(n):
            for col, name in enumerate(names):
                ax = axes[row][col]
                panel = self._panels[name][row]
                if panel.ndim == 3:
                    ax.imshow(np.clip(panel.transpose(1, 2, 0), 0, 1))
                else:
                    ax.imshow(np.ma.masked_greater(panel, 250), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(name)
        fig.tight_layout()
        path = Path(trainer.default_root_dir) / self.filename
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80)
        plt.close(fig)


class SharedBatchSize(pl.Callback):
    """Every rank of a distributed run trains with global rank zero's batch size: the one that
    ``batch_size=auto`` found on one device before the distributed start. Broadcast once the process
    group exists and before any data loader is made; in a single process it changes nothing."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        datamodule.batch_size = int(trainer.strategy.broadcast(int(datamodule.batch_size), src=0))


class ImageryCounter(pl.Callback):
    """The images a run feeds its network (training, validation and test; change pairs count two) and
    their bytes as the network receives them, on this rank; :meth:`totals` sums every rank's. The counts
    are saved in checkpoints, so a resumed run goes on counting."""

    IMAGE_KEYS = ("image", "before", "after")

    def __init__(self) -> None:
        self.images = 0
        self.bytes = 0

    def _count(self, trainer: pl.Trainer, batch: Any) -> None:
        if trainer.sanity_checking or not isinstance(batch, dict):
            return
        for key in self.IMAGE_KEYS:
            value = batch.get(key)
            tensors = value if isinstance(value, (list, tuple)) else [] if value is None else list(value)
            self.images += len(tensors)
            self.bytes += sum(t.numel() * t.element_size() for t in tensors)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._count(trainer, batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count(trainer, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count(trainer, batch)

    def state_dict(self) -> dict[str, int]:
        return {"images": self.images, "bytes": self.bytes}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.images, self.bytes = int(state_dict["images"]), int(state_dict["bytes"])

    def totals(self, trainer: pl.Trainer) -> tuple[int, int]:
        """(images, bytes) over every rank; every rank must call it (a collective)."""
        import torch

        counts = torch.tensor([self.images, self.bytes], dtype=torch.float64, device=trainer.strategy.root_device)
        summed = trainer.strategy.reduce(counts, reduce_op="sum")
        return int(summed[0]), int(summed[1])
