"""python -m apps.reproduce RUN [--evaluate] [--out DIR] [--cache DIR] [KEY=VALUE ...]

Re-run a saved run from its own config. With --evaluate, test the saved best checkpoint again on
the test split and print the new metrics beside the saved ones; without it, train again from the
saved config into a new run directory and compare the two runs' metrics.

RUN is a run directory (local, or on a mounted outputs volume), or the URL of one (s3://bucket/...,
credentials from the usual AWS_* variables): only what is needed is fetched (config, record, and for
--evaluate the best checkpoint) into --cache. A local copy of a cluster sweep point, whose checkpoint
stayed on the cluster, gets it from where the pod uploaded the run. KEY=VALUE settings replace the
saved ones (data.root=<local copy of the dataset>, trainer.accelerator=cpu).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from apps.foundation.errors import CONFIG_ERROR_EXIT_CODE, InputError, one_line
from apps.foundation.rundir import RunRecord


def load_run(run_dir: Path):
    """(config, metrics record) of a completed run directory; InputError if it is not one."""
    from omegaconf import OmegaConf

    from apps.core.config import upgrade_targets
    from apps.foundation.rundir import CONFIG_FILE, read_completed

    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise InputError(f"run directory {run_dir}: no {CONFIG_FILE} (not a geoscale run directory)")
    record = read_completed(run_dir)
    if record is None:
        raise InputError(f"run directory {run_dir}: no completed metrics.json (the run did not finish)")
    return upgrade_targets(OmegaConf.load(config_path)), record


def check_same_chips(checkpoint: Path, datamodule, root: str) -> None:
    """InputError when the dataset at ``root`` was cut otherwise (chip size, overlap, bands) than the one the
    checkpoint trained on, as the two preparation records say (a field either did not record is not compared)."""
    import torch

    from apps.foundation.chips import ChipPreparation

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("preparation", {})
    trained = ChipPreparation.from_attrs(saved.get("attrs", {}))
    here = ChipPreparation.from_attrs(datamodule.preparation()["attrs"])
    differences = [f"{name} {getattr(here, name)} where the run trained on {getattr(trained, name)}"
                   for name in ("chip_size", "overlap", "bands")
                   if None not in (getattr(here, name), getattr(trained, name)) and getattr(here, name) != getattr(trained, name)]
    if differences:
        raise InputError(f"data.root {root}: chips made otherwise than the run's ({'; '.join(differences)}): "
                         f"prepare the data with the run's settings")


def evaluate(cfg, record: RunRecord, run_dir: Path) -> dict[str, float]:
    """Test metrics of the run's saved best checkpoint, recomputed with its saved config."""
    import pytorch_lightning as pl
    from hydra.utils import get_class

    from apps.core.config import build
    from apps.core.training.train import build_test_trainer, trainer_arguments
    from apps.foundation.rundir import REEVALUATION_DIR

    checkpoint = run_dir / record.facts["best_checkpoint"]
    if not checkpoint.is_file():
        raise InputError(f"run directory {run_dir}: best checkpoint {checkpoint.name} is missing (a cluster run "
                         f"keeps it on the outputs volume or at upload.to: pass that directory or its URL)")
    # The checkpoint replaces every weight: no pretrained file is needed.
    for name, value in get_class(cfg.task._target_).CHECKPOINT_OVERRIDES.items():
        cfg.task[name] = value
    datamodule = build(cfg.data)
    check_same_chips(checkpoint, datamodule, cfg.data.root)
    pl.seed_everything(int(cfg.seed), workers=True)
    task = build(cfg.task, **datamodule.task_arguments())
    # The precision the run trained and tested in, whatever this machine would pick now.
    precision = record.facts.get("precision") or trainer_arguments(cfg)["precision"]
    trainer = build_test_trainer(cfg, precision, run_dir / REEVALUATION_DIR)
    tested = trainer.test(task, datamodule=datamodule, ckpt_path=str(checkpoint), verbose=False)[0]
    return {k: float(v) for k, v in tested.items()}


def retrain(cfg, out_dir: Path, source: Path) -> dict[str, float]:
    """Train the saved config again into ``out_dir``; returns the new run's metrics."""
    from omegaconf import OmegaConf

    from apps.core.training.train import train
    from apps.foundation.files import atomic_write_text
    from apps.foundation.rundir import CONFIG_FILE, HYDRA_DIR, OVERRIDES_FILE, read_completed

    (out_dir / HYDRA_DIR).mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / CONFIG_FILE)
    atomic_write_text(out_dir / OVERRIDES_FILE, f"# reproduces {source}\n[]\n")
    train(cfg, out_dir)
    return read_completed(out_dir).metrics


def comparison_table(saved: dict[str, float], new: dict[str, float]) -> str:
    """A Markdown table: metric | saved | new | new - saved."""
    lines = ["| metric | saved | new | new - saved |", "|---|---:|---:|---:|"]
    for name in sorted(set(saved) | set(new)):
        old, now = saved.get(name), new.get(name)
        diff = f"{now - old:+.4f}" if old is not None and now is not None else ""
        fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {name} | {fmt(old)} | {fmt(now)} | {diff} |")
    return "\n".join(lines)


def stage_run(source: str, cache: Path, evaluate: bool) -> Path:
    """The local run directory of ``source``: itself, or for a URL its fetched files under ``cache``.
    With ``evaluate``, its best checkpoint too, from where the run was uploaded when it is not here."""
    from apps.core.runs.storage import fetch_run_files, is_url
    from apps.foundation.rundir import CONFIG_FILE, METRICS_FILE, OVERRIDES_FILE, read_completed, read_upload_record

    if is_url(source):
        remote, run_dir = source, cache / source.split("://", 1)[1].strip("/")
        fetch_run_files(remote, [CONFIG_FILE, METRICS_FILE, OVERRIDES_FILE], run_dir, optional=[OVERRIDES_FILE])
    else:
        remote, run_dir = None, Path(source)
        if not run_dir.is_dir():
            raise InputError(f"run directory {run_dir}: not found")
    record = read_completed(run_dir)
    if evaluate and record is not None:
        best = record.facts["best_checkpoint"]
        remote = remote or read_upload_record(run_dir)
        if not (run_dir / best).is_file() and remote:
            fetch_run_files(remote, [best], run_dir)
    return run_dir


def apply_settings(cfg, settings: list[str]) -> None:
    """``KEY=VALUE`` settings into the saved config; InputError for a malformed one or an unknown key."""
    import yaml
    from omegaconf import OmegaConf

    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
            raise InputError(f"{setting}: not KEY=VALUE of a key the saved config has")
        OmegaConf.update(cfg, key, yaml.safe_load(value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apps.reproduce", description=__doc__.split("\n\n")[1])
    parser.add_argument("run", help="a completed run directory, or its URL (s3://bucket/prefix/...)")
    parser.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="settings that replace the saved ones")
    parser.add_argument("--evaluate", action="store_true", help="re-test the saved best checkpoint only")
    parser.add_argument("--out", type=Path, help="where a re-training writes its run (default: beside RUN)")
    parser.add_argument("--cache", type=Path, default=Path("outputs/reproduce"),
                        help="where the files of a RUN URL are fetched (default: outputs/reproduce)")
    args = parser.parse_intermixed_args(argv)
    try:
        from apps.foundation.cli import register_resolvers

        register_resolvers()
        run_dir = stage_run(args.run, args.cache, args.evaluate)
        cfg, record = load_run(run_dir)
        apply_settings(cfg, args.settings)
        if args.evaluate:
            new = evaluate(cfg, record, run_dir)
            saved = {k: v for k, v in record.metrics.items() if k.startswith("test/")}
            print(f"re-evaluated {run_dir / record.facts['best_checkpoint']}")
        else:
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            out = args.out or run_dir.parent / f"{run_dir.name}-reproduced-{stamp}"
            new = retrain(cfg, out, run_dir)
            saved = record.metrics
            print(f"re-trained into {out}")
    except InputError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    print(comparison_table(saved, new))
    print(json.dumps({"saved": saved, "new": new}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
