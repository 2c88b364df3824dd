"""Print a sweep's table: ``python -m apps.report SWEEP_DIR [--metric test/iou] [--plot] ...``; or the study's
Tables III, V and I over the sweeps and prep fan-outs of a whole study: ``python -m apps.report --study DIR ...
[--out FOLDER]``.

A table goes to stdout (or ``--out``); the figure's path, and errors, go to stderr. With ``--study
--out FOLDER``, each table is written as Markdown and CSV (``table_iii.md``, ``table_iii.csv``, ...)
with the figure ``study.png``.
"""

from __future__ import annotations

import argparse
import sys

from apps.core.runs import report
from apps.foundation.errors import CONFIG_ERROR_EXIT_CODE, InputError
from apps.foundation.files import atomic_write_text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m apps.report",
        description="One row per run of a sweep directory: swept hyperparameters, metrics, "
        "parameters, wall time and peak memory, best first and unfinished runs last.",
    )
    parser.add_argument("sweep_dir", nargs="+",
                        help="sweep directory (Hydra multirun dir) holding run directories; with --study, any "
                        "number of directories holding sweeps and prep runs")
    parser.add_argument("--study", action="store_true",
                        help="the study's Tables III (detectors x datasets), V (applications) and I (prep stages)")
    parser.add_argument("--metric", help="metric to sort by (default: the runs' objective)")
    parser.add_argument(
        "--metrics",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help="comma-separated metric columns (default: the objective and all test/* metrics)",
    )
    parser.add_argument(
        "--format", choices=("markdown", "csv"),
        help="table format (default: csv when --out ends in .csv, else markdown)",
    )
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--ascending", dest="ascending", action="store_const", const=True,
                           help="smallest value first")
    direction.add_argument("--descending", dest="ascending", action="store_const", const=False,
                           help="largest value first (default follows the objective's mode)")
    parser.add_argument("--plot", action="store_true",
                        help="also save a PNG of the metric against each swept hyperparameter "
                        "into the sweep directory")
    parser.add_argument("--out", help="write the table to this file instead of stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit code (CONFIG_ERROR_EXIT_CODE on bad input)."""
    args = parse_args(argv)
    table_format = args.format or ("csv" if (args.out or "").endswith(".csv") else "markdown")
    if args.study:
        return study_tables(args.sweep_dir, args.out)
    if len(args.sweep_dir) > 1:
        print("error: one SWEEP_DIR at a time (several only with --study)", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    try:
        sweep = report.load_sweep(args.sweep_dir[0], args.metric, args.metrics, args.ascending)
        text = report.to_csv(sweep) if table_format == "csv" else report.to_markdown(sweep)
        plot_path = report.plot_sweep(sweep) if args.plot else None
        if args.out:
            try:
                atomic_write_text(args.out, text)
            except OSError as error:
                raise InputError(f"cannot write {args.out}: {error.strerror}") from None
        else:
            sys.stdout.write(text)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    if plot_path:
        print(plot_path, file=sys.stderr)
    return 0


def study_tables(directories: list[str], out: str | None) -> int:
    """Tables III, V and I (those with rows) to stdout, or as Markdown, CSV and a figure into ``out``."""
    from pathlib import Path

    from apps.core.runs import study_tables as tables

    try:
        study = tables.load_study(directories)
        made = {stem: (caption, build(study)) for stem, (caption, build) in tables.TABLES.items()}
        made = {stem: entry for stem, entry in made.items() if not entry[1].empty}
        if out is None:
            sys.stdout.write("\n".join(tables.to_markdown(caption, table) for caption, table in made.values()))
            return 0
        folder = Path(out)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for stem, (caption, table) in made.items():
                atomic_write_text(folder / f"{stem}.md", tables.to_markdown(caption, table))
                atomic_write_text(folder / f"{stem}.csv", table.to_csv(index=False, lineterminator="\n"))
        except OSError as error:
            raise InputError(f"cannot write {folder}: {error.strerror}") from None
        print(tables.plot_study(study, folder / "study.png"), file=sys.stderr)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
