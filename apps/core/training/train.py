"""The one training entry of every app: config in, run directory and objective value out."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from apps.core.config import build
from apps.core.training.precision import AUTO, resolve_precision
from apps.foundation.errors import InputError, one_line
from apps.core.training.provenance import peak_memory, record_provenance
from apps.foundation.files import atomic_write_text
from apps.foundation.rundir import (
    BEST_CHECKPOINT_NAME, CHECKPOINT_DIR, CONFIG_FILE, ERROR_FILE, LAST_CHECKPOINT, TRAIN, UPLOAD_RECORD, ResultLine,
    RunRecord, read_completed, read_upload_record, write_error, write_metrics, write_upload_record,
)

log = logging.getLogger(__name__)


def trainer_arguments(cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments of ``pl.Trainer`` from ``cfg.trainer``, with ``precision: auto`` resolved."""
    arguments = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    arguments["precision"] = resolve_precision(arguments.get("precision", AUTO), arguments.get("accelerator", "auto"))
    return arguments


def build_trainer(cfg: DictConfig, run_dir: Path, extra_callbacks: list | None = None):
    """A Lightning Trainer from ``cfg.trainer``, logging and checkpointing into ``run_dir``.

    Returns (trainer, checkpoint callback, run clock).
    """
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    from apps.core.training.callbacks import RunClock

    callback_cfg = OmegaConf.to_container(cfg.callbacks, resolve=True)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINT_DIR,
        filename=BEST_CHECKPOINT_NAME,
        auto_insert_metric_name=False,
        save_last=True,
        save_top_k=1,
        **callback_cfg.pop("checkpoint"),
    )
    clock = RunClock()
    callbacks = [checkpoint, clock, *(build(c) for c in callback_cfg.values() if c), *(extra_callbacks or [])]
    logger = build(cfg.logger, save_dir=str(run_dir)) if cfg.get("logger") else False
    # Lightning's own use of a torch API that torch now deprecates; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    trainer = pl.Trainer(**trainer_arguments(cfg), default_root_dir=str(run_dir), callbacks=callbacks, logger=logger)
    # Deterministic mode would also fill every new tensor with NaN (a debugging aid) and slow each
    # step by a fifth on the CPU; results do not depend on it.
    torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer, checkpoint, clock


def build_test_trainer(cfg: DictConfig, precision: str, root_dir: Path):
    """A Lightning Trainer that tests a saved checkpoint on one device of ``cfg.trainer``'s accelerator,
    at ``precision`` (the one the run trained in), with no logger or checkpointing, working in ``root_dir``."""
    import pytorch_lightning as pl

    return pl.Trainer(**{**trainer_arguments(cfg), "devices": 1, "num_nodes": 1, "strategy": "auto",
                         "precision": precision, "logger": False, "enable_progress_bar": False,
                         "enable_checkpointing": False, "default_root_dir": str(root_dir)})


def _device_facts(trainer) -> dict[str, Any]:
    import torch

    device = trainer.strategy.root_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device": name, "device_kind": device.type, "device_count": trainer.num_devices * trainer.num_nodes}


def _on_gpu(trainer) -> bool:
    return trainer.strategy.root_device.type == "cuda"


def starts_as_global_rank_zero() -> bool:
    """Whether this process is, or will become, global rank zero: not a rank that Lightning started
    beside it (``LOCAL_RANK`` > 0) and not on a node other than the first (``NODE_RANK`` > 0)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def resolve_batch_size(cfg: DictConfig, trainer, task, datamodule, run_dir: Path) -> int:
    """The batch size to train with: ``cfg.batch_size``, or for ``auto`` the largest that fits one
    GPU's memory (:func:`find_batch_size`). On a CPU there is no memory limit to find, so ``auto``
    means ``default_batch_size``, and says so.

    A distributed run finds it in global rank zero alone, before the distributed start, on one device;
    the other ranks hold ``default_batch_size`` until :class:`~apps.core.training.callbacks.SharedBatchSize`
    hands them rank zero's. The found size replaces ``auto`` in the run's ``.hydra/config.yaml``.
    """
    if str(cfg.batch_size) != "auto":
        return int(datamodule.batch_size)
    datamodule.batch_size = default = int(cfg.default_batch_size)
    if not _on_gpu(trainer):
        log.warning("batch_size=auto: no GPU memory to fit; training with default_batch_size=%d", default)
        return default
    if not starts_as_global_rank_zero():
        return default
    datamodule.batch_size = found = find_batch_size(cfg, task, datamodule, run_dir)
    log.info("batch_size=auto: %d fits one GPU's memory; every rank trains with it", found)
    saved = run_dir / CONFIG_FILE
    if saved.is_file():
        import yaml

        config = yaml.safe_load(saved.read_text())
        config["batch_size"] = found
        atomic_write_text(saved, yaml.safe_dump(config, sort_keys=False))
    return found


def find_batch_size(cfg: DictConfig, task, datamodule, run_dir: Path) -> int:
    """The largest batch that fits one device's memory: Lightning's finder (doubling from
    ``default_batch_size``, then bisecting) on a one-device trainer of the run's precision, less the
    finder's 5% margin against memory that fragments later in a run. The task's weights are as before."""
    import pytorch_lightning as pl
    from pytorch_lightning.tuner import Tuner

    single = {**trainer_arguments(cfg), "devices": 1, "num_nodes": 1, "strategy": "auto", "sync_batchnorm": False,
              "logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    finder = pl.Trainer(**single, default_root_dir=str(run_dir))
    Tuner(finder).scale_batch_size(task, datamodule=datamodule, mode="binsearch", init_val=int(datamodule.batch_size))
    return int(datamodule.batch_size)


def gpu_hours(trainer, wall_time_s: float) -> float | None:
    """Wall time x GPUs of a GPU run, in hours (the study's cost figure); None for a CPU run."""
    if not _on_gpu(trainer):
        return None
    return round(wall_time_s * trainer.num_devices * trainer.num_nodes / 3600, 4)


def train(cfg: DictConfig, run_dir: str | Path) -> float:
    """Train, test and record one configuration in ``run_dir``; return the value of ``cfg.objective``.

    Seeds everything, builds the datamodule (``cfg.data``), the task (``cfg.task``) and the trainer,
    fits (resuming from ``checkpoints/last.ckpt`` if an earlier attempt left one), tests the best
    checkpoint by ``cfg.monitor``, writes metrics.json and provenance.json, and copies the run
    directory to ``cfg.upload.to`` if set. A run directory that already holds a completed result is
    not trained again: its saved objective is returned, so a re-run sweep skips finished points.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = read_completed(run_dir)
    if done is not None:
        log.info("%s already holds a completed run; not training again", run_dir)
        _upload(cfg, run_dir)
        return float(done.value)

    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = build(cfg.data)
    task = build(cfg.task, **datamodule.task_arguments())
    task.preparation = datamodule.preparation()
    from apps.core.training.callbacks import ImageryCounter, SharedBatchSize

    imagery = ImageryCounter()
    auto_batch = [SharedBatchSize()] if str(cfg.batch_size) == "auto" else []
    trainer, checkpoint, clock = build_trainer(cfg, run_dir, extra_callbacks=[imagery, *auto_batch])
    batch_size = resolve_batch_size(cfg, trainer, task, datamodule, run_dir)
    if trainer.is_global_zero:  # one process of a distributed run writes the run directory's records
        record_provenance(run_dir)
    last = run_dir / LAST_CHECKPOINT
    if last.is_file():
        log.info("resuming from %s", last)
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
        best = checkpoint.best_model_path or str(last)
        tested = trainer.test(task, datamodule=datamodule, ckpt_path=best)[0]
    except MisconfigurationException as exc:
        raise InputError(f"trainer/callbacks config: {exc}") from None

    images, imagery_bytes = imagery.totals(trainer)
    metrics = {k: float(v) for k, v in tested.items()}
    if checkpoint.best_model_score is not None:
        metrics[str(cfg.monitor)] = float(checkpoint.best_model_score)
    if cfg.objective not in metrics:
        raise InputError(f"objective={cfg.objective}: not a metric of this run (has {', '.join(sorted(metrics))})")
    memory, memory_kind = peak_memory()
    record = RunRecord(
        kind=TRAIN, app=str(cfg.app),
        objective={"name": str(cfg.objective), "mode": str(cfg.monitor_mode), "value": metrics[cfg.objective]},
        metrics=metrics,
        facts={
            "parameters": task.num_parameters,
            "wall_time_s": round(clock.elapsed_s, 3),
            "gpu_hours": gpu_hours(trainer, clock.elapsed_s),
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "peak_memory_bytes": memory,
            "peak_memory_kind": memory_kind,
            **_device_facts(trainer),
            "precision": str(trainer.precision),
            "batch_size": batch_size,
            "images_processed": images,
            "imagery_bytes": imagery_bytes,
            "best_checkpoint": str(Path(best).relative_to(run_dir.resolve()) if Path(best).is_absolute() else best),
            "seed": int(cfg.seed),
        },
    )
    if trainer.is_global_zero:
        write_metrics(run_dir, record)
        _upload(cfg, run_dir)
    return record.value


def _upload(cfg: DictConfig, run_dir: Path) -> None:
    """Copy the finished run directory to ``cfg.upload.to`` once; the destination keeps the path
    of the run below ``cfg.output_root`` (so a sweep keeps its layout)."""
    destination = OmegaConf.select(cfg, "upload.to")
    if not destination or (run_dir / UPLOAD_RECORD).is_file():
        return
    from apps.core.runs.storage import upload_run_dir

    root = Path(cfg.output_root).resolve()
    here = run_dir.resolve()
    relative_to = root if here.is_relative_to(root) else here.parent
    options = OmegaConf.to_container(cfg.upload.storage_options, resolve=True)
    url = upload_run_dir(run_dir, destination, options, relative_to=relative_to)
    write_upload_record(run_dir, url)
    log.info("copied %s to %s", run_dir, url)


def hydra_task(cfg: DictConfig) -> float:
    """The Hydra task function of every training app: train into Hydra's output directory.

    Prints the run's ``ResultLine`` as the last line (from global rank zero only). A failed attempt
    leaves its one-line error in ``error.txt`` (a later attempt that completes removes it).
    """
    from hydra.core.hydra_config import HydraConfig

    from lightning_fabric.utilities.rank_zero import rank_zero_only

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    rank_zero = getattr(rank_zero_only, "rank", 0) == 0  # distributed runs: the global rank-zero process only
    try:
        value = train(cfg, run_dir)
    except Exception as exc:
        if rank_zero:
            write_error(run_dir, one_line(exc))
        raise
    if rank_zero:
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        print(ResultLine(str(cfg.objective), value, read_completed(run_dir), read_upload_record(run_dir)).format(),
              flush=True)
    return value
