"""Copy finished run directories to object storage (S3 and S3-compatible) or a local path, and fetch
files of one back."""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Sequence

from apps.foundation.errors import InputError, one_line
from apps.foundation.files import TEMPORARY_NAME_PATTERN
from apps.foundation.rundir import METRICS_FILE

def upload_run_dir(
    run_dir: str | os.PathLike,
    destination: str,
    storage_options: dict | None = None,
    relative_to: str | os.PathLike | None = None,
) -> str:
    """Copy every file of ``run_dir`` to ``<destination>/<name>`` through fsspec.

    ``destination`` is an fsspec URL (``s3://bucket/prefix``, ``file:///srv/runs``) or a
    plain local path. ``name`` is the run directory's path relative to ``relative_to``
    (default: the run directory's parent, so ``name`` is its own name); pass a sweep's
    parent directory to keep the sweep's layout (``<sweep>/<job>``) under the destination.
    All files are copied, checkpoints included, except temporary files of atomic writes
    (``.*.tmp-*``). The run's ``metrics.json`` is copied last, so a partial upload reads as
    an incomplete run. Existing objects are overwritten; stale ones are left in place.

    ``storage_options`` go to the fsspec filesystem; for s3fs e.g.
    ``{"client_kwargs": {"endpoint_url": "http://minio:9000"},
    "config_kwargs": {"connect_timeout": 5, "retries": {"max_attempts": 2}}}``.
    Credentials come from the usual places (``AWS_ACCESS_KEY_ID``, profiles, ...).

    Returns the URL of the uploaded run directory. Raises ``InputError``, one line naming
    the destination and the problem (unreachable endpoint, missing credentials or bucket,
    unknown protocol, ``run_dir`` missing or not below ``relative_to``). The upload happens
    after the run has finished, so the caller decides whether a failed upload fails it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist or is not a directory")
    name = _name_under_destination(run_dir, relative_to)
    url = f"{destination.rstrip('/')}/{name}"

    files = _files_to_upload(run_dir)
    marker = run_dir / METRICS_FILE  # last, so that a partial upload reads as an incomplete run
    batches = [[path for path in files if path != marker], [marker] if marker in files else []]
    try:
        from fsspec.implementations.local import LocalFileSystem

        filesystem, root = _open_filesystem(url, storage_options)
        remote_path = {
            path: f"{root.rstrip('/')}/{path.relative_to(run_dir).as_posix()}" for path in files
        }
        if isinstance(filesystem, LocalFileSystem):
            # Object stores have no directories (and makedirs there may create a bucket).
            for parent in sorted({os.path.dirname(path) for path in remote_path.values()}):
                filesystem.makedirs(parent, exist_ok=True)
        for batch in batches:
            if batch:
                filesystem.put([str(path) for path in batch], [remote_path[path] for path in batch])
    except Exception as error:  # noqa: BLE001 - every fsspec backend raises its own types
        raise InputError(f"cannot upload {run_dir} to {url}: {type(error).__name__}: {one_line(error)}") from error
    return url


def _name_under_destination(run_dir: Path, relative_to: str | os.PathLike | None) -> str:
    """The run directory's path relative to ``relative_to``, in POSIX form."""
    if relative_to is None:
        return run_dir.resolve().name
    here, base = run_dir.resolve(), Path(relative_to).resolve()
    if base not in here.parents:
        raise InputError(f"run directory {run_dir} is not below {relative_to}")
    return here.relative_to(base).as_posix()


def _files_to_upload(run_dir: Path) -> list[Path]:
    """Every file under ``run_dir``, recursively, except temporary files of atomic writes."""
    return [
        Path(parent) / file_name
        for parent, _, file_names in os.walk(run_dir)
        for file_name in file_names
        if not fnmatch.fnmatch(file_name, TEMPORARY_NAME_PATTERN)
    ]


def _open_filesystem(url: str, storage_options: dict | None):
    """The fsspec filesystem and path for ``url``, built afresh: a cached instance would keep the
    endpoint and credentials of the environment it was first made in."""
    from fsspec.core import url_to_fs

    return url_to_fs(url, skip_instance_cache=True, **(storage_options or {}))


def is_url(location: str) -> bool:
    """Whether ``location`` is an fsspec URL (``s3://...``) rather than a local path."""
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", location)) and not location.startswith("file://")


def fetch_run_files(url: str, names: Sequence[str], into: str | os.PathLike, storage_options: dict | None = None,
                    optional: Sequence[str] = ()) -> Path:
    """Copy the files ``names`` (paths relative to the run directory at fsspec ``url``) into ``into``,
    keeping their relative paths; a file already there is not fetched again. ``optional`` names may
    be missing. Each file appears complete or not at all. Credentials come from the usual places
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``; ``AWS_ENDPOINT_URL`` for an
    S3-compatible store).

    Raises InputError, one line naming the URL: no such file there, missing credentials, an
    unreachable store.
    """
    from apps.foundation.files import atomic_path

    into = Path(into)
    url = url.rstrip("/")
    try:
        filesystem, root = _open_filesystem(url, storage_options)
        for name in names:
            target = into / name
            if target.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with atomic_path(target) as tmp:
                    filesystem.get(f"{root}/{name}", str(tmp))
            except FileNotFoundError:
                if name in optional:
                    continue
                raise InputError(f"{url}: no {name} there (not a finished geoscale run directory?)") from None
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - every fsspec backend raises its own types
        if _caused_by(error, "NoCredentialsError"):
            raise InputError(f"{url}: no credentials for the object store (set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)") from None
        raise InputError(f"cannot read {url}: {type(error).__name__}: {one_line(error)}") from None
    return into


def _caused_by(error: BaseException | None, class_name: str) -> bool:
    """Whether ``error`` or an error behind it is of a class named ``class_name`` (any library's)."""
    while error is not None:
        if type(error).__name__ == class_name:
            return True
        error = error.__cause__ or error.__context__
    return False
