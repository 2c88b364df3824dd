"""python -m apps.weights fetch|list [overrides]: the pretrained checkpoints of the weights catalogue.

``fetch`` downloads each named checkpoint into ``weights_dir`` unless a file with the catalogue's
SHA-256 is there: streamed to ``<file>.part`` (a re-run resumes it with a Range request), checked
against the catalogue's digest (a mismatch is refused, the file removed), then renamed. ``list``
prints the catalogue with the state of each file.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from apps.foundation.errors import InputError, RemoteRunFailed

log = logging.getLogger(__name__)

ACTIONS = ("fetch", "list")


class ServerFailed(RemoteRunFailed):
    """A checkpoint's server still failing after the retries: one line and exit code 1, as a failed run
    elsewhere (a re-run may work)."""


def chosen(catalogue: dict[str, Any], names: list[str] | None) -> list[Any]:
    """The catalogue entries of ``names`` (None: every one); InputError naming an unknown name."""
    if names is None:
        return list(catalogue.values())
    unknown = [name for name in names if name not in catalogue]
    if unknown:
        raise InputError(f"names: {', '.join(unknown)} not in the weights catalogue (has {', '.join(catalogue)})")
    return [catalogue[name] for name in names]


def file_state(checkpoint: Any, weights_dir: Path) -> str:
    """``present``, ``partial (<bytes>)`` or ``missing`` (the digest is checked by fetch, not here)."""
    path, partial = weights_dir / checkpoint.file, weights_dir / f"{checkpoint.file}.part"
    if path.is_file():
        return "present"
    return f"partial ({partial.stat().st_size} bytes)" if partial.is_file() else "missing"


def fetch_one(session: Any, checkpoint: Any, weights_dir: Path, settings: dict[str, Any]) -> Path:
    """``checkpoint`` in ``weights_dir``, downloaded (or resumed) and checked unless already there."""
    import requests
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    from apps.foundation.download import Dropped, HTTPFailure, ShortBody, sha256_of, stream_resumably
    from data_prep.stac import http_problem

    path = weights_dir / checkpoint.file
    if path.is_file() and checkpoint.matches(sha256_of(path)):
        log.info("%s: %s already there", checkpoint.name, path)
        return path
    partial = weights_dir / f"{checkpoint.file}.part"
    what = f"weights {checkpoint.name} ({checkpoint.url})"
    retrying = Retrying(stop=stop_after_attempt(settings["retries"] + 1), reraise=True,
                        wait=wait_exponential(multiplier=settings["backoff_s"], max=60),
                        retry=retry_if_exception_type((Dropped, ShortBody)))
    try:
        stream_resumably(session, checkpoint.url, partial, retrying, settings["timeout_s"])
    except HTTPFailure as exc:
        raise ServerFailed(f"{what}: {exc}") from None
    except (requests.RequestException, Dropped, ShortBody) as exc:
        raise ServerFailed(f"{what}: failed after {settings['retries'] + 1} attempts, "
                           f"{http_problem(exc.__cause__ or exc)}") from None
    digest = sha256_of(partial)
    if not checkpoint.matches(digest):
        partial.unlink()
        raise InputError(f"{what}: SHA-256 {digest} does not match the catalogue's {checkpoint.sha256}; "
                         f"the download was removed")
    partial.replace(path)
    log.info("%s: %s (%d bytes, SHA-256 %s...)", checkpoint.name, path, path.stat().st_size, digest[:12])
    return path


def session_with_retries(settings: dict[str, Any]) -> Any:
    """A requests Session retrying 429 (honouring Retry-After), 5xx and resets with backoff."""
    import requests
    from urllib3.util.retry import Retry

    from apps.foundation.download import RETRY_STATUS

    retry = Retry(total=settings["retries"], backoff_factor=settings["backoff_s"], status_forcelist=RETRY_STATUS,
                  allowed_methods=None, respect_retry_after_header=True, raise_on_status=False)
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def run(cfg: Any) -> list[Path] | None:
    """The action of ``cfg`` (see conf/weights.yaml): fetched paths for ``fetch``, None for ``list``."""
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from apps.foundation.catalogue import CATALOGUE_FILE, read_catalogue

    if cfg.action not in ACTIONS:
        raise InputError(f"action={cfg.action}: expected one of {', '.join(ACTIONS)}")
    catalogue = read_catalogue(cfg.catalogue or CATALOGUE_FILE)
    names = None if cfg.names is None else [str(n) for n in OmegaConf.to_container(cfg.names)]
    checkpoints = chosen(catalogue, names)
    weights_dir = Path(str(cfg.weights_dir)).expanduser()
    if cfg.action == "list":
        for checkpoint in checkpoints:
            print(f"{checkpoint.name:24} {checkpoint.trained_on:12} {file_state(checkpoint, weights_dir):24} "
                  f"{checkpoint.file}")
        return None
    weights_dir.mkdir(parents=True, exist_ok=True)
    settings = OmegaConf.to_container(cfg.download, resolve=True)
    session = session_with_retries(settings)
    return [fetch_one(session, checkpoint, weights_dir, settings)
            for checkpoint in tqdm(checkpoints, desc="weights", unit="file", disable=None if cfg.progress else True)]


def main() -> None:
    """Command-line entry: the first argument, ``fetch`` or ``list``, becomes ``action=``."""
    from apps.foundation.cli import run_hydra_app

    if len(sys.argv) > 1 and sys.argv[1] in ACTIONS:  # after any -m flag: Hydra's parser wants overrides last
        sys.argv.append(f"action={sys.argv.pop(1)}")
    run_hydra_app(run, "weights")


if __name__ == "__main__":
    main()
