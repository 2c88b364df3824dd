"""Resumable HTTP downloads: a file streamed to a partial name, resumed with Range requests, then checked.

Written here rather than taken from a library because resuming into a caller-chosen partial file, with a
size check against Content-Length and the caller's retries, is what neither requests nor urllib3 does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

RETRY_STATUS = (429, 500, 502, 503, 504)
"""HTTP statuses worth retrying (with backoff; 429 honouring Retry-After)."""


class Dropped(Exception):
    """A connection lost while a response body streamed in: the download resumes from the bytes received."""


class HTTPFailure(Exception):
    """A server's answer of status 400 or more; ``status`` holds the code."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"HTTP {status} {reason}")
        self.status = status


class ShortBody(Exception):
    """A response body that ended before Content-Length said it would."""


def stream_resumably(session: Any, url: str, partial: Path, retrying: Any, timeout_s: float,
                     chunk_bytes: int = 2**16) -> Path:
    """Download ``url`` into ``partial`` with ``session`` (a requests Session), appending to the bytes
    already there by a Range request (a server that answers 200 instead sends the whole file again).

    ``retrying`` (a tenacity ``Retrying`` over :class:`Dropped`) decides how often a dropped connection
    resumes. Raises HTTPFailure, ShortBody, or requests' own exceptions for the caller to word.
    """
    import requests

    def attempt() -> None:
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with session.get(url, headers=headers, stream=True, timeout=timeout_s) as response:
            if response.status_code == 416 and have:  # the partial file is already whole
                return
            if response.status_code >= 400:
                raise HTTPFailure(response.status_code, response.reason)
            if response.status_code != 206:
                have = 0
            declared = response.headers.get("Content-Length")
            with partial.open("ab" if have else "wb") as fh:
                try:
                    for chunk in response.iter_content(chunk_bytes):
                        fh.write(chunk)
                except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError) as exc:
                    raise Dropped(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        if declared is not None and partial.stat().st_size != have + int(declared):
            raise ShortBody(f"{partial.stat().st_size - have} bytes received, Content-Length says {declared}")

    partial.parent.mkdir(parents=True, exist_ok=True)
    for step in retrying:
        with step:
            attempt()
    return partial


def sha256_of(path: Path, chunk_bytes: int = 2**20) -> str:
    """The hex SHA-256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
