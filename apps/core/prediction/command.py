"""The one prediction command of every app: its arguments, checks and run flow; the app gives hooks.

    python -m apps.<app>.predict CHECKPOINT_OR_RUN_DIR INPUT... --out OUT [--chip-size N] [--overlap F]
        [--batch-size N] [--device auto|cpu|cuda] [the app's own options]

The window size, overlap and bands are those of the checkpoint's training chips (``ChipPreparation``,
recorded by the prep in ``dataset.json`` and carried by the checkpoint); ``--chip-size`` and
``--overlap`` override them, and a warning says so. Bad input prints ``error: ...`` and exits 2
before anything is written.
"""

from __future__ import annotations

import argparse
import json
import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from apps.core.prediction.checkpoint import DEVICES, load_task, pick_device, recorded_preparation
from apps.foundation.chips import ChipPreparation
from apps.foundation.errors import InputError, exit_with_error
from apps.foundation.rundir import resolve_checkpoint

log = logging.getLogger(__name__)

Prepare = Callable[[Any, argparse.Namespace, Path], AbstractContextManager[Any]]
"""(task, parsed arguments, work folder) -> a context yielding the scene's inputs as the app's ``predict`` takes them."""


@dataclass(frozen=True)
class Option:
    """One app-specific command-line option: ``argparse.add_argument(flag, **settings)`` and its valid range."""

    flag: str
    settings: dict
    valid: Callable[[Any], bool] = lambda value: True
    rule: str = ""

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def in_unit_interval(value: float) -> bool:
    return 0 <= value <= 1


@dataclass(frozen=True)
class PredictionApp:
    """What an app adds to the prediction command.

    ``prepare`` turns the command's inputs into what ``predict(task, inputs, args, geometry, device,
    facts)`` takes; ``predict`` writes the outputs and returns a summary (JSON-able); ``summary_line``
    describes it in one line. ``check_task(task, geometry)`` raises InputError when the checkpoint cannot
    serve (another app's task, a window size the network cannot take); ``task_facts(task)`` go into the
    outputs' tags and the summary. ``default_geometry`` serves checkpoints whose dataset recorded no chip
    size or overlap.
    """

    prog: str
    description: str
    inputs: Sequence[tuple[str, str]]
    outputs: str
    prepare: Prepare
    predict: Callable[..., dict]
    summary_line: Callable[[argparse.Namespace, dict], str]
    describe_inputs: Callable[[argparse.Namespace], str]
    options: Sequence[Option] = ()
    batch_size: int = 8
    default_geometry: ChipPreparation = ChipPreparation(chip_size=256, overlap=0.25)
    min_chip_size: int = 1
    check_task: Callable[[Any, ChipPreparation], None] = lambda task, geometry: None
    task_facts: Callable[[Any], dict] = lambda task: {}


def parse_args(app: PredictionApp, argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``app``'s prediction: CHECKPOINT_OR_RUN_DIR, the app's inputs, the shared options and its own."""
    parser = argparse.ArgumentParser(prog=app.prog, description=app.description)
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT_OR_RUN_DIR",
                        help="a .ckpt file, or a run directory (its best checkpoint, else checkpoints/last.ckpt)")
    for name, text in app.inputs:
        parser.add_argument(name, type=Path, metavar=name.upper(), help=text)
    parser.add_argument("--out", type=Path, required=True, help=f"output prefix: writes {app.outputs}")
    parser.add_argument("--chip-size", type=int, default=None,
                        help="window size, px (default: the checkpoint's training chips)")
    parser.add_argument("--overlap", type=float, default=None,
                        help="window overlap, fraction of a window (default: the training chips')")
    parser.add_argument("--batch-size", type=int, default=app.batch_size,
                        help=f"windows per forward pass (default {app.batch_size})")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda if available, else cpu")
    for option in app.options:
        parser.add_argument(option.flag, **option.settings)
    return parser.parse_args(argv)


def check_arguments(app: PredictionApp, args: argparse.Namespace) -> None:
    """InputError naming the option when an option is out of range."""
    if args.chip_size is not None and args.chip_size < app.min_chip_size:
        raise InputError(f"--chip-size {args.chip_size}: must be at least {app.min_chip_size} px")
    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise InputError(f"--overlap {args.overlap}: must be in [0, 1)")
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be at least 1")
    for option in app.options:
        value = getattr(args, option.dest)
        if not option.valid(value):
            raise InputError(f"{option.flag} {value}: {option.rule}")


def window_geometry(task: Any, args: argparse.Namespace, default: ChipPreparation) -> ChipPreparation:
    """The training chips' preparation as the checkpoint recorded it, with ``--chip-size`` and
    ``--overlap`` in place of its values where given (a warning names each replaced value), and
    ``default``'s where an older dataset recorded none."""
    recorded = recorded_preparation(task)
    changes = {}
    for name, value in (("chip_size", args.chip_size), ("overlap", args.overlap)):
        flag = f"--{name.replace('_', '-')}"
        if value is None and getattr(recorded, name) is None:
            value = getattr(default, name)
            log.info("the checkpoint's training dataset recorded no %s: %s (give %s to choose)", name, value, flag)
        if value is not None and value != getattr(recorded, name):
            if getattr(recorded, name) is not None:
                log.warning("%s %s replaces the training chips' %s", flag, value, getattr(recorded, name))
            changes[name] = value
    return replace(recorded, **changes)


def run_prediction(app: PredictionApp, argv: Sequence[str] | None = None) -> int:
    """Parse and check the command line, load the checkpoint, prepare the inputs with the app's
    ``prepare``, predict with its ``predict``; prints the summary line and a JSON line."""
    args = parse_args(app, argv)
    scene = app.describe_inputs(args)
    try:
        check_arguments(app, args)
        checkpoint = resolve_checkpoint(args.checkpoint)
        device = pick_device(args.device)
        task = load_task(checkpoint, device)
        geometry = window_geometry(task, args, app.default_geometry)
        app.check_task(task, geometry)
        facts = {"checkpoint": str(checkpoint), "scene": scene, "task_class": type(task).__name__,
                 **app.task_facts(task)}
        work_dir = Path(args.out).parent
        with app.prepare(task, args, work_dir) as inputs:
            summary = app.predict(task, inputs, args, geometry, device, facts)
    except InputError as exc:
        exit_with_error(exc)
    summary.update(facts)
    print(app.summary_line(args, summary))
    print(json.dumps(summary))
    return 0
