"""STAC catalogues for scene acquisition: the catalogue settings, the search, and the choice of items for an area.

A catalogue (``CatalogSettings``) is a STAC API searched with pystac-client; its profile names the asset key of
each band and how asset hrefs are reached (an alternate href, URL signing, a bearer token from an environment
variable, see ``data_prep.fetch``). Catalogue requests retry with urllib3's Retry: 429 (honouring Retry-After),
5xx and dropped connections, with exponential backoff. Candidates are evaluated against the area (footprint,
coverage, cloud cover, online state, assets) and chosen by ``choose_cover`` (burned area) or ``choose_pair``
(deforestation), each dropped candidate with its reason.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Iterable, Mapping, Sequence

import geopandas as gpd
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from urllib3.util.retry import Retry

from apps.foundation.download import RETRY_STATUS
from apps.foundation.errors import InputError
from data_prep.geotiff import first_line

COVERED = 1e-3
"""An area counts as covered when at most this fraction of it is left uncovered."""
TIE = 0.01
"""Greedy cover: items whose new coverage is within this fraction of the area of the best tie; the least cloudy wins."""
SEARCH_PAGE = 100
"""Items asked for per search page (servers may send fewer)."""


class RemoteError(Exception):
    """A catalogue or asset server that failed after the retries: one line, exit code 1 (a later re-run may work)."""


@dataclass(frozen=True)
class CatalogSettings:
    """A STAC API and how to read its Sentinel-2 L2A assets.

    ``assets``: band name (B02, ..., SCL, TCI) -> asset key; ``alternate``: read ``asset.alternate[<name>].href``
    instead of ``asset.href`` (e.g. https instead of s3); ``sign``: ``planetary_computer`` signs each href just
    before it is read; ``token_env``: name of the environment variable holding a bearer token for the assets;
    ``online``: property -> values that mean online: an item (or asset) carrying the property with another
    value is offline (e.g. ``order:status`` other than ``succeeded``: in the long-term archive).
    """

    url: str
    collection: str
    assets: Mapping[str, str]
    name: str | None = None
    alternate: str | None = None
    sign: str | None = None
    token_env: str | None = None
    online: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "assets", {str(k): str(v) for k, v in self.assets.items()})
        object.__setattr__(self, "online", {str(k): tuple(str(v) for v in vs) for k, vs in (self.online or {}).items()})
        if self.sign not in (None, "planetary_computer"):
            raise InputError(f"catalog.sign: unknown signer {self.sign!r} (expected planetary_computer or null)")


@dataclass(frozen=True)
class DownloadSettings:
    """``concurrency``: bands fetched at once; ``retries`` per request (and per windowed read or download) with
    exponential backoff starting at ``backoff_s``; ``timeout_s`` per connection and read; ``chunk_bytes`` streamed
    to disk at a time (a dropped connection loses at most the chunk it was filling)."""

    concurrency: int = 4
    retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    chunk_bytes: int = 2**16

    def __post_init__(self):
        for name, ok, rule in (("concurrency", self.concurrency >= 1, ">= 1"), ("retries", self.retries >= 0, ">= 0"),
                               ("backoff_s", self.backoff_s >= 0, ">= 0"), ("timeout_s", self.timeout_s > 0, "> 0"),
                               ("chunk_bytes", self.chunk_bytes >= 1, ">= 1")):
            if not ok:
                raise InputError(f"download.{name}: must be {rule}, got {getattr(self, name)}")

    def http_retry(self) -> Retry:
        """urllib3 retries for every HTTP request (POST /search too): 429 (honouring Retry-After), 5xx, resets."""
        return Retry(total=self.retries, backoff_factor=self.backoff_s, status_forcelist=RETRY_STATUS,
                     allowed_methods=None, respect_retry_after_header=True)


def public_href(href: str) -> str:
    """``href`` without its query string (where signed URLs keep their token): safe to log and record."""
    return href.split("?", 1)[0]


def redact(text: str) -> str:
    """``text`` with the query strings of the URLs in it (where signed URLs keep their token) replaced."""
    return re.sub(r"(/[^\s?'\"]*)\?[^\s'\")]+", r"\1?<query>", text)


def http_problem(exc: Exception) -> str:
    """What went wrong in a pystac-client APIError or a requests exception, in a few words (no URL)."""
    status = getattr(exc, "status_code", None)
    if status:
        return f"HTTP {status} ({first_line(exc)[:200]})"
    text = str(exc)
    many = re.search(r"too many (\d+) error responses", text)
    if many:
        return f"HTTP {many.group(1)} on every retry"
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    return f"unreachable ({errno.group(0) if errno else first_line(exc)[:200]})"


# --- the catalogue ---------------------------------------------------------------------------------------------

def open_catalog(catalog: CatalogSettings, download: DownloadSettings) -> Client:
    """A pystac-client Client of ``catalog.url`` whose collection exists.

    RemoteError when the catalogue cannot be reached (after the retries); InputError when it has no collection
    ``catalog.collection`` (listing some it has).
    """
    stac_io = StacApiIO(max_retries=download.http_retry(), timeout=download.timeout_s)
    try:
        client = Client.open(catalog.url, stac_io=stac_io)
        if client.get_collection(catalog.collection) is None:
            offered = [c.id for c in itertools.islice(client.get_collections(), 20)]
            raise InputError(f"catalog.collection: {catalog.collection!r} is not a collection of {catalog.url} "
                             f"(it has: {', '.join(offered) or 'none'})")
    except APIError as exc:
        raise RemoteError(f"catalog {catalog.url}: {http_problem(exc)}") from None
    return client


def search_items(client: Client, catalog: CatalogSettings, bbox: Sequence[float], start: date, end: date,
                 max_cloud_cover: float) -> list[dict]:
    """The items of ``catalog.collection`` over ``bbox`` (lon/lat) sensed within [start, end] (whole days) with
    ``eo:cloud_cover`` <= ``max_cloud_cover`` (%, the query extension), as JSON dicts; every page is read."""
    search = client.search(collections=[catalog.collection], bbox=list(bbox),
                           datetime=f"{start.isoformat()}/{end.isoformat()}",
                           query={"eo:cloud_cover": {"lte": max_cloud_cover}}, limit=SEARCH_PAGE)
    try:
        return list(search.items_as_dicts())
    except APIError as exc:
        raise RemoteError(f"catalog {catalog.url}: search failed, {http_problem(exc)}") from None


# --- the choice --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """An item found for an area: its footprint within the area (area CRS), the share of the area it covers,
    its cloud cover (%, None if unknown), whether it is online, and the bands it has no asset for."""

    item: dict
    footprint: BaseGeometry
    coverage: float
    cloud: float | None
    online: bool
    missing: tuple[str, ...]

    @property
    def id(self) -> str:
        return str(self.item["id"])

    @property
    def when(self) -> str:
        return str(self.item["properties"].get("datetime") or self.item["properties"].get("start_datetime") or "")

    @property
    def date(self) -> date:
        return date.fromisoformat(self.when[:10])

    def facts(self) -> dict:
        return {"id": self.id, "datetime": self.when, "cloud_cover": self.cloud, "coverage": round(self.coverage, 4),
                "online": self.online}


@dataclass(frozen=True)
class Choice:
    """The items chosen for an area with their roles (``scene`` or ``before``/``after``) and claims (the part of the
    area each is kept for, area CRS; None: all of it), why each other candidate was dropped, and the share of the
    area no chosen item covers."""

    chosen: tuple[Candidate, ...]
    roles: tuple[str, ...]
    claims: tuple[BaseGeometry | None, ...]
    dropped: Mapping[str, str]
    uncovered: float


def is_online(item: dict, rule: Mapping[str, Sequence[str]], asset_keys: Iterable[str]) -> bool:
    """False when the item's properties, or one of its assets ``asset_keys``, carry a property of ``rule`` with a
    value outside the values it lists."""
    assets = item.get("assets") or {}
    fields = [item.get("properties") or {}, *(assets[k] for k in asset_keys if k in assets)]
    return all(f.get(name) is None or str(f[name]) in values for f in fields for name, values in rule.items())


def candidates_for(items: Sequence[dict], area_box: BaseGeometry, crs: str, catalog: CatalogSettings,
                   bands: Sequence[str]) -> list[Candidate]:
    """Evaluate ``items`` for the area ``area_box`` (a box in ``crs``): footprint, coverage, cloud, online, assets."""
    footprints = gpd.GeoSeries([shape(i["geometry"]) for i in items], crs="EPSG:4326").make_valid().to_crs(crs)
    keys = [catalog.assets[b] for b in bands]
    result = []
    for item, footprint in zip(items, footprints):
        inside = footprint.intersection(area_box)
        cloud = item["properties"].get("eo:cloud_cover")
        result.append(Candidate(
            item=item, footprint=inside, coverage=inside.area / area_box.area,
            cloud=None if cloud is None else float(cloud), online=is_online(item, catalog.online, keys),
            missing=tuple(b for b, k in zip(bands, keys) if k not in (item.get("assets") or {})),
        ))
    return result


def _drop_reason(candidate: Candidate, max_cloud_cover: float) -> str | None:
    if candidate.cloud is None:
        return "no eo:cloud_cover"
    if candidate.cloud > max_cloud_cover:
        return f"cloud cover {candidate.cloud:g}% > {max_cloud_cover:g}%"
    if candidate.coverage <= 0:
        return "does not overlap the area"
    if candidate.online and candidate.missing:
        return f"no asset for {', '.join(candidate.missing)}"
    return None


def _usable(candidates: Sequence[Candidate], max_cloud_cover: float) -> tuple[list[Candidate], dict[str, str]]:
    dropped = {c.id: r for c in candidates if (r := _drop_reason(c, max_cloud_cover)) is not None}
    usable = sorted((c for c in candidates if c.id not in dropped), key=lambda c: (c.cloud, c.when, c.id))
    return usable, dropped


def choose_cover(candidates: Sequence[Candidate], area_box: BaseGeometry, max_cloud_cover: float) -> Choice:
    """Burned area: the fewest usable items that cover the area, least cloud first.

    Greedy set cover by footprint area: each step takes the item that covers most of what is still uncovered;
    items within ``TIE`` of the area of the best tie, and the least cloudy of them (then the earliest) wins.
    Stops when at most ``COVERED`` of the area is left or no item adds coverage. Each item after the first claims
    only what the items before it leave uncovered, so that no ground is in two scenes (its chips could land in two
    splits).
    """
    usable, dropped = _usable(candidates, max_cloud_cover)
    uncovered, chosen, claims = area_box, [], []
    while usable and uncovered.area > COVERED * area_box.area:
        gains = [uncovered.intersection(c.footprint).area for c in usable]
        if max(gains) <= 0:
            break
        pick = usable.pop(next(i for i, g in enumerate(gains) if g >= max(gains) - TIE * area_box.area))
        claims.append(uncovered if chosen else None)
        chosen.append(pick)
        uncovered = uncovered.difference(pick.footprint)
    for c in usable:
        dropped[c.id] = "not needed: fewer or less cloudy items cover the area"
    return Choice(tuple(chosen), ("scene",) * len(chosen), tuple(claims), dropped, uncovered.area / area_box.area)


def choose_pair(candidates: Sequence[Candidate], max_cloud_cover: float, min_coverage: float) -> Choice:
    """Deforestation: a before and an after item, each covering at least ``min_coverage`` of the area alone: the
    earliest and the latest acceptable sensing dates (the widest span of the window, nearest the two PRODES
    mappings); on one date the least cloudy. No choice (empty) unless two dates are acceptable."""
    usable, dropped = _usable(candidates, max_cloud_cover)
    for c in usable:
        if c.coverage < min_coverage:
            dropped[c.id] = f"covers {c.coverage:.1%} of the area, less than min_coverage {min_coverage:.1%}"
    usable = [c for c in usable if c.id not in dropped]
    if len({c.date for c in usable}) < 2:
        for c in usable:
            dropped[c.id] = "the only acceptable date: a pair needs two"
        return Choice((), (), (), dropped, 1.0)
    before = min(usable, key=lambda c: (c.date, c.cloud, c.id))
    after = min(usable, key=lambda c: (-c.date.toordinal(), c.cloud, c.id))
    for c in usable:
        if c is not before and c is not after:
            dropped[c.id] = "neither the earliest nor the latest acceptable date"
    uncovered = 1 - min(before.coverage, after.coverage)
    return Choice((before, after), ("before", "after"), (None, None), dropped, uncovered)
