"""python -m apps.reproduce RUN_DIR [--evaluate] [--out DIR]

Re-run a saved run from its own config. With --evaluate, test the saved best checkpoint again on
the test split and print the new metrics beside the saved ones; without it, train again from the
saved config into a new run directory and compare the two runs' metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from apps.foundation.errors import CONFIG_ERROR_EXIT_CODE, InputError


def load_run(run_dir: Path):
    """(config, metrics record) of a completed run directory; InputError if it is not one."""
    from omegaconf import OmegaConf

    from apps.foundation.rundir import CONFIG_FILE, read_completed

    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise InputError(f"run directory {run_dir}: no {CONFIG_FILE} (not a geoscale run directory)")
    record = read_completed(run_dir)
    if record is None:
        raise InputError(f"run directory {run_dir}: no completed metrics.json (the run did not finish)")
    return OmegaConf.load(config_path), record


def evaluate(cfg, record: dict, run_dir: Path) -> dict[str, float]:
    """Test metrics of the run's saved best checkpoint, recomputed with its saved config."""
    import pytorch_lightning as pl
    from hydra.utils import get_class

    from apps.core.config import build
    from apps.core.precision import AUTO, resolve_precision

    checkpoint = run_dir / record["facts"]["best_checkpoint"]
    if not checkpoint.is_file():
        raise InputError(f"run directory {run_dir}: best checkpoint {checkpoint.name} is missing")
    # The checkpoint replaces every weight: no pretrained file is needed.
    for name, value in get_class(cfg.task._target_).CHECKPOINT_OVERRIDES.items():
        cfg.task[name] = value
    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = build(cfg.data)
    task = build(cfg.task, **datamodule.task_arguments())
    trainer_cfg = cfg.trainer
    # The precision the run trained and tested in, whatever this machine would pick now.
    precision = record["facts"].get("precision") or resolve_precision(trainer_cfg.get("precision", AUTO),
                                                                       trainer_cfg.accelerator)
    trainer = pl.Trainer(accelerator=trainer_cfg.accelerator, devices=1, precision=precision,
                         deterministic=trainer_cfg.deterministic, logger=False, enable_progress_bar=False,
                         default_root_dir=str(run_dir / "reevaluation"), enable_checkpointing=False)
    tested = trainer.test(task, datamodule=datamodule, ckpt_path=str(checkpoint), verbose=False)[0]
    return {k: float(v) for k, v in tested.items()}


def retrain(cfg, out_dir: Path, source: Path) -> dict[str, float]:
    """Train the saved config again into ``out_dir``; returns the new run's metrics."""
    from omegaconf import OmegaConf

    from apps.core.train import train
    from apps.foundation.files import atomic_write_text
    from apps.foundation.rundir import CONFIG_FILE, HYDRA_DIR, OVERRIDES_FILE, read_completed

    (out_dir / HYDRA_DIR).mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / CONFIG_FILE)
    atomic_write_text(out_dir / OVERRIDES_FILE, f"# reproduces {source}\n[]\n")
    train(cfg, out_dir)
    return read_completed(out_dir)["metrics"]


def comparison_table(saved: dict[str, float], new: dict[str, float]) -> str:
    """A Markdown table: metric | saved | new | new - saved."""
    lines = ["| metric | saved | new | new - saved |", "|---|---:|---:|---:|"]
    for name in sorted(set(saved) | set(new)):
        old, now = saved.get(name), new.get(name)
        diff = f"{now - old:+.4f}" if old is not None and now is not None else ""
        fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {name} | {fmt(old)} | {fmt(now)} | {diff} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apps.reproduce", description=__doc__.split("\n\n")[1])
    parser.add_argument("run_dir", type=Path, help="a completed run directory")
    parser.add_argument("--evaluate", action="store_true", help="re-test the saved best checkpoint only")
    parser.add_argument("--out", type=Path, help="where a re-training writes its run (default: beside RUN_DIR)")
    args = parser.parse_args(argv)
    try:
        from apps.foundation.cli import register_resolvers

        register_resolvers()
        cfg, record = load_run(args.run_dir)
        if args.evaluate:
            new = evaluate(cfg, record, args.run_dir)
            saved = {k: v for k, v in record["metrics"].items() if k.startswith("test/")}
            print(f"re-evaluated {args.run_dir / record['facts']['best_checkpoint']}")
        else:
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            out = args.out or args.run_dir.parent / f"{args.run_dir.name}-reproduced-{stamp}"
            new = retrain(cfg, out, args.run_dir)
            saved = record["metrics"]
            print(f"re-trained into {out}")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    print(comparison_table(saved, new))
    print(json.dumps({"saved": saved, "new": new}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
