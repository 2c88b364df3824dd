"""Atomic writes: a file or directory appears under its final name complete, or not at all.

Every temporary name has the one form ``.<stem>.tmp-<pid><suffix>`` beside the final path, so
readers, uploads and clean-ups recognise it by TEMPORARY_NAME_PATTERN, and a file keeps its
suffix (GDAL and matplotlib pick their format from it).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMPORARY_NAME_PATTERN = ".*.tmp-*"
"""fnmatch pattern of every temporary name made here."""


def temporary_path(path: str | os.PathLike) -> Path:
    """The temporary name of this process for ``path``: ``.<stem>.tmp-<pid><suffix>`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write a file or fill a directory at; on success it
    replaces ``path`` (an older directory there is removed first), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    _remove(tmp)  # left by an earlier process of the same pid, killed midway
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically: readers see the old file, or all of the new one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def mount_point(path: str | os.PathLike, mountinfo: str | os.PathLike = "/proc/self/mountinfo") -> str:
    """The mount point that holds ``path`` (the longest mount point above its real path), from this
    process's mount table (bind mounts included, which ``os.path.ismount`` cannot tell); "/" where
    the table cannot be read."""
    target = os.path.realpath(path)
    best = "/"
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")  # the table writes spaces as \040
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best = point
    return best
