"""Fetching chosen STAC items into scene folders: the bands cut to an area's window, resumably.

Every band of a chosen item is written as a GeoTIFF of the area's window, snapped outward to a 20 m lattice
anchored at the raster's origin, so 10 m bands and the 20 m SCL of one item cover the same ground; pixels outside
the raster, and outside the part of the area the item was chosen for (its claim), are 0 (no data). A COG is read
through GDAL's HTTP range requests (only the window); any other file is downloaded whole first (streamed, resumed
with a Range request after a dropped connection, its size checked against Content-Length and ``file:size``) and
then cut. Requests retry with urllib3's Retry (429 honouring Retry-After, 5xx, resets); windowed reads with GDAL's
own HTTP retries plus tenacity around each read, and downloads with tenacity around each resumed transfer.

A scene folder is filled under a hidden temporary name (``.<folder>.tmp-acquire``, kept across runs so a re-run
resumes it) and renamed when complete; each band file carries a stamp (item, asset, window, claim) so a re-run
skips what is done. A bearer token is read from the environment variable the catalogue names and sent in the
headers of asset requests only (a ~/.netrc entry works too: requests and GDAL read it); signed URLs are redacted
from messages and logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import rasterio
import requests
import shapely
from rasterio.errors import RasterioError
from rasterio.features import geometry_mask
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from tqdm import tqdm

from apps.foundation.download import Dropped, HTTPFailure, ShortBody, stream_resumably
from apps.foundation.errors import InputError
from apps.foundation.files import atomic_path, atomic_write_text
from data_prep.geotiff import first_line, read_stamp, stamp_tags
from data_prep.stac import (
    RETRY_STATUS, CatalogSettings, DownloadSettings, RemoteError, http_problem, public_href, redact,
)

log = logging.getLogger(__name__)

SNAP_M = 20.0
"""Windows are snapped to this lattice (m): the coarsest band fetched (SCL), so every band of an item aligns."""
PARTIAL_SUFFIX = ".tmp-acquire"
"""A scene folder being filled is ``.<name>.tmp-acquire`` (the foundation's temporary-name pattern, without the pid
so that a re-run finds and resumes it)."""
DOWNLOAD_DIR = "_download"
"""Whole files downloaded before being cut, inside the partial scene folder (removed when the folder completes)."""
SUFFIXES = {"image/jp2": ".jp2", "image/tiff": ".tif"}
COG_MARK = "cloud-optimized"
TILE_PX = 256


class _RedactQueries(logging.Filter):
    """Redacts the URLs in GDAL's messages that rasterio logs (``redact``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


@dataclass(frozen=True)
class SceneJob:
    """One chosen item to fetch into ``folder``: its bands (band -> asset key) cut to ``bounds`` (left, bottom,
    right, top in ``crs``), 0 (no data) outside ``claim`` (a geometry in ``crs``; None: no such limit)."""

    item: dict
    folder: Path
    assets: Mapping[str, str]
    bounds: tuple[float, float, float, float]
    crs: str
    claim: BaseGeometry | None = None

    @property
    def work(self) -> Path:
        """Where the folder is filled until complete."""
        return partial_folder(self.folder)

    @property
    def item_file(self) -> str:
        return f"{safe_name(self.item['id'])}.json"


def partial_folder(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}{PARTIAL_SUFFIX}")


def safe_name(text: str) -> str:
    """``text`` usable as a file or folder name."""
    return re.sub(r"[^\w.-]", "_", str(text))


def snapped_window(src: rasterio.DatasetReader, crs: str, bounds: Sequence[float]) -> Window:
    """The window of ``src`` covering ``bounds`` (in ``crs``) snapped outward to the SNAP_M lattice anchored at the
    raster's origin; it may reach beyond the raster."""
    left, bottom, right, top = (bounds if rasterio.crs.CRS.from_user_input(crs) == src.crs
                                else transform_bounds(crs, src.crs, *bounds, densify_pts=21))
    t = src.transform
    x0 = t.c + math.floor((left - t.c) / SNAP_M + 1e-9) * SNAP_M
    x1 = t.c + math.ceil((right - t.c) / SNAP_M - 1e-9) * SNAP_M
    y1 = t.f - math.floor((t.f - top) / SNAP_M + 1e-9) * SNAP_M
    y0 = t.f - math.ceil((t.f - bottom) / SNAP_M - 1e-9) * SNAP_M
    return Window(round((x0 - t.c) / t.a), round((y1 - t.f) / t.e), round((x1 - x0) / t.a), round((y0 - y1) / t.e))


def cut(source: str, job: SceneJob, path: Path, tags: Mapping[str, str]) -> None:
    """Write the snapped window of ``job.bounds`` of raster ``source`` (a path or /vsicurl/ URL), 0 beyond the
    raster and outside ``job.claim``, as a tiled GeoTIFF at ``path``, atomically, with ``tags``. A URL is not cached
    by GDAL across opens, so a retry asks the server again instead of GDAL's memory of the failure."""
    with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=source), rasterio.open(source) as src:
        window = snapped_window(src, job.crs, job.bounds)
        data = src.read(window=window, boundless=True, fill_value=0)
        transform = src.window_transform(window)
        if job.claim is not None:
            claim = transform_geom(job.crs, src.crs, mapping(job.claim))
            data[:, geometry_mask([claim], data.shape[1:], transform)] = 0
        profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
                   "dtype": data.dtype, "crs": src.crs, "transform": transform, "nodata": 0,
                   "tiled": True, "blockxsize": TILE_PX, "blockysize": TILE_PX, "compress": "deflate"}
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)


class SizeMismatch(RemoteError):
    """A download whose size differs from what the server or the catalogue declared."""


class Fetcher:
    """Fetches chosen items into scene folders (see the module), ``settings.concurrency`` bands at a time."""

    def __init__(self, catalog: CatalogSettings, settings: DownloadSettings, progress: bool = True):
        self.catalog, self.settings, self.progress = catalog, settings, progress
        gdal_log = logging.getLogger("rasterio._env")
        if not any(isinstance(f, _RedactQueries) for f in gdal_log.filters):
            gdal_log.addFilter(_RedactQueries())
        token = None
        if catalog.token_env:
            token = os.environ.get(catalog.token_env)
            if not token:
                raise InputError(f"catalog.token_env: environment variable {catalog.token_env} is not set "
                                 "(it must hold the access token for the catalogue's assets)")
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(max_retries=settings.http_retry(), pool_maxsize=settings.concurrency)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.gdal_options = {
            "GDAL_HTTP_MAX_RETRY": settings.retries, "GDAL_HTTP_RETRY_DELAY": settings.backoff_s,
            "GDAL_HTTP_RETRY_CODES": ",".join(map(str, RETRY_STATUS)),
            "GDAL_HTTP_TIMEOUT": math.ceil(settings.timeout_s),
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        }
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
            self.gdal_options["GDAL_HTTP_HEADERS"] = f"Authorization: Bearer {token}"

    def href(self, asset: Mapping) -> str:
        """The URL to read an asset from: its href or alternate href, signed if the catalogue says so."""
        href = asset["href"]
        if self.catalog.alternate:
            try:
                href = asset["alternate"][self.catalog.alternate]["href"]
            except (KeyError, TypeError):
                raise RemoteError(f"asset {public_href(href)}: no alternate href {self.catalog.alternate!r}") from None
        if self.catalog.sign == "planetary_computer":
            import planetary_computer

            href = planetary_computer.sign_url(href)
        return href

    def _retrying(self, what: str, exceptions: tuple[type[BaseException], ...]) -> Retrying:
        """tenacity retries of ``exceptions``: ``retries`` more attempts with exponential backoff, each logged."""

        def before_sleep(state) -> None:
            log.warning("%s: attempt %d failed (%s); retrying", what, state.attempt_number,
                        redact(first_line(state.outcome.exception())))

        return Retrying(stop=stop_after_attempt(self.settings.retries + 1), reraise=True, before_sleep=before_sleep,
                        wait=wait_exponential(multiplier=self.settings.backoff_s, max=60),
                        retry=retry_if_exception_type(exceptions))

    def download(self, href: str, expected: int | None, path: Path, what: str) -> Path:
        """Download ``href`` whole to ``path`` unless a file of the ``expected`` size (bytes) is there; a connection
        dropped mid-body resumes with a Range request from the bytes received. RemoteError when the server fails
        after the retries; SizeMismatch when the result differs from Content-Length or ``expected``."""
        if path.is_file() and expected in (None, path.stat().st_size):
            return path
        with atomic_path(path) as tmp:
            try:
                stream_resumably(self.session, href, tmp, self._retrying(what, (Dropped,)), self.settings.timeout_s,
                                 self.settings.chunk_bytes)
            except ShortBody as exc:
                raise SizeMismatch(f"{what}: {exc}") from None
            except HTTPFailure as exc:
                raise RemoteError(f"{what}: {exc}") from None
            except (requests.RequestException, Dropped) as exc:
                raise RemoteError(f"{what}: {redact(http_problem(exc.__cause__ or exc))}") from None
            if expected is not None and tmp.stat().st_size != expected:
                raise SizeMismatch(f"{what}: {tmp.stat().st_size} bytes downloaded, the catalogue's file:size says "
                                   f"{expected}")
        return path

    def fetch_band(self, job: SceneJob, band: str) -> None:
        """Write one band of ``job`` into its partial folder unless it is there with the same stamp."""
        key = job.assets[band]
        asset = job.item["assets"][key]
        out = job.work / f"{band}.tif"
        stamp = band_stamp(job, band)
        if read_stamp(out) == stamp:
            return
        href = self.href(asset)
        what = f"asset {band} ({key}) of item {job.item['id']} ({public_href(href)})"
        if COG_MARK in str(asset.get("type", "")):
            source = f"/vsicurl/{href}"
        else:
            suffix = SUFFIXES.get(str(asset.get("type", "")).split(";")[0].strip(), Path(public_href(href)).suffix)
            size = asset.get("file:size")
            source = str(self.download(href, None if size is None else int(size),
                                       job.work / DOWNLOAD_DIR / f"{band}{suffix}", what))
        try:
            with rasterio.Env(**self.gdal_options):
                for attempt in self._retrying(what, (RasterioError,)):
                    with attempt:
                        cut(source, job, out, stamp_tags(stamp))
        except RasterioError as exc:
            raise RemoteError(f"{what}: unreadable after {self.settings.retries + 1} attempts "
                              f"({redact(first_line(exc))})") from None

    def fetch(self, jobs: Sequence[SceneJob]) -> None:
        """Fill the scene folders of ``jobs``; folders already complete with the same stamps are skipped. A band that
        fails does not stop the others; the first failure is raised once they are done."""
        todo = [job for job in jobs if not scene_complete(job)]
        for job in todo:
            _reopen(job)
        tasks = [(job, band) for job in todo for band in job.assets]
        with ThreadPoolExecutor(self.settings.concurrency) as pool, \
                tqdm(total=len(tasks), desc="bands", unit="band", disable=None if self.progress else True) as bar:
            futures = [pool.submit(self.fetch_band, job, band) for job, band in tasks]
            failed: list[RemoteError] = []
            try:
                for future in as_completed(futures):
                    try:
                        future.result()
                    except RemoteError as exc:  # the other bands go on: a re-run has only the failed ones left
                        failed.append(exc)
                    bar.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
        if failed:
            raise failed[0]
        for job in todo:
            atomic_write_text(job.work / job.item_file, json.dumps(job.item, indent=1))
            shutil.rmtree(job.work / DOWNLOAD_DIR, ignore_errors=True)
            os.replace(job.work, job.folder)
            log.info("scene folder %s complete", job.folder)


def _reopen(job: SceneJob) -> None:
    """Make ``job.work`` the folder to fill: an outdated final folder moves back there (its bands that are still
    current are kept), and files of another item or band set are removed."""
    if job.folder.exists() and not job.work.exists():
        os.replace(job.folder, job.work)
    elif job.folder.exists():
        shutil.rmtree(job.folder)
    job.work.mkdir(parents=True, exist_ok=True)
    keep = {job.item_file, DOWNLOAD_DIR, *(f"{band}.tif" for band in job.assets)}
    for path in job.work.iterdir():
        if path.name not in keep and not path.name.startswith("."):
            path.unlink()


def band_stamp(job: SceneJob, band: str) -> dict:
    """What a band file was made from: item, asset, window and claim."""
    claim = None if job.claim is None else shapely.to_wkt(job.claim, rounding_precision=2)
    return json.loads(json.dumps({"item": job.item["id"], "band": band, "asset": job.assets[band], "crs": job.crs,
                                  "bounds": list(job.bounds), "claim": claim}))


def scene_complete(job: SceneJob) -> bool:
    """True when ``job.folder`` holds the item JSON and every band with its current stamp."""
    return (job.folder / job.item_file).is_file() and all(
        read_stamp(job.folder / f"{band}.tif") == band_stamp(job, band) for band in job.assets)
