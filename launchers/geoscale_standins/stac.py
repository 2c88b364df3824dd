"""A local STAC API stand-in (a real HTTP server on 127.0.0.1) and builders of Sentinel-2 L2A COGs and STAC
items, for the tests and benchmarks of ``data_prep.acquire``.

    with StacStandin(collections=("sentinel-2-l2a",), page_size=2) as stac:
        catalog = synthetic_s2_catalog(tmp_path, app="burned_area")
        catalog.serve(stac)
        client = pystac_client.Client.open(stac.url)

It speaks enough of STAC API 1.0 for pystac-client 0.8/0.9 and GDAL's /vsicurl/ (every route answers GET and
HEAD; /search also POST):

    /                                  landing page: conformsTo core, collections, ogcapi-features, item-search,
                                       item-search#query; links self, root, conformance, data, search (GET, POST)
    /conformance, /collections, /collections/{c}
    /collections/{c}/items             the items of one collection, paged like /search
    /collections/{c}/items/{id}
    /search                            collections, ids, bbox, intersects, datetime, query, limit, token;
                                       sorted by datetime, then id; next links as the spec says
    /assets/{item_id}/{filename}       the asset files, with single byte ranges (206, 416)
    /api/sas/v1/token/{collection}     Planetary Computer SAS tokens (also .../{account}/{container})

Errors are JSON ``{"code": ..., "description": ...}`` as stac-fastapi writes them. An unknown collection:
``/collections/{c}`` and its items answer 404 (pystac-client's ``get_collection`` returns None), while a search
naming it answers 200 with no feature, as stac-server (Earth Search, since 0.4.0) and stac-fastapi-pgstac
(Planetary Computer) do; a client learns that a collection does not exist only from ``/collections/{c}``.

What clients meet here as on real servers (tests/test_stac_standin.py shows each):
- urllib3 honours Retry-After only with ``Retry(respect_retry_after_header=True)`` and retries a POST search
  only with ``allowed_methods=None``; GDAL ignores Retry-After (it waits GDAL_HTTP_RETRY_DELAY).
- GDAL does not retry a transfer cut short, and /vsicurl/ remembers a failed URL for the process: opening it
  again fails without a request unless ``CPL_VSIL_CURL_NON_CACHED`` covers it. Without
  ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` GDAL also lists the asset's folder (a 404 here).
- pystac migrates the items it parses: projection 1.1 ``proj:epsg`` arrives as 2.0 ``proj:code``.
- ``planetary_computer.sign`` signs only ``*.blob.core.windows.net`` hrefs, so it leaves these alone; its
  ``sas.get_token`` reaches the SAS route through ``PC_SDK_SAS_URL``, read once per process (``Settings.get``).
"""

from __future__ import annotations

import base64
import copy
import json
import math
import operator
import re
import secrets
import socket
import struct
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence
from urllib.parse import quote, unquote, urlencode, urlsplit

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import shapes
from rasterio.io import MemoryFile
from rasterio.warp import transform_geom
from shapely import segmentize
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from .serving import ServedStandIn, StandInHandler

STAC_VERSION = "1.0.0"
CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]
GEOJSON = "application/geo+json"
ROUTES = [(name, re.compile(f"^{pattern}$")) for name, pattern in (
    ("landing", r"/"),
    ("conformance", r"/conformance"),
    ("collections", r"/collections"),
    ("collection", r"/collections/(?P<collection>[^/]+)"),
    ("items", r"/collections/(?P<collection>[^/]+)/items"),
    ("item", r"/collections/(?P<collection>[^/]+)/items/(?P<item>[^/]+)"),
    ("search", r"/search"),
    ("asset", r"/assets/(?P<item>[^/]+)/(?P<filename>[^/]+)"),
    ("sas", r"/api/sas/v1/token/(?P<target>[^/]+(?:/[^/]+)?)"),
)]
ROUTE_NAMES = tuple(name for name, _ in ROUTES)
MAX_LIMIT = 10_000
"""Largest ``limit`` a search accepts (stac-server's bound); larger or below 1 answers 400."""
QUERY_OPERATORS = {"eq": operator.eq, "neq": operator.ne, "lt": operator.lt, "lte": operator.le, "gt": operator.gt,
                   "gte": operator.ge, "in": lambda value, options: value in options}
ERROR_CODES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFoundError", 405: "MethodNotAllowed",
               409: "Conflict", 416: "RangeNotSatisfiable", 429: "TooManyRequests", 500: "InternalServerError",
               502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout"}
STREAM_CHUNK_BYTES = 64 * 1024


class StacError(Exception):
    """An error answered as ``status`` with a JSON body (or ``body`` as given) and extra ``headers``."""

    def __init__(self, status: int, description: str, headers: Mapping[str, str] | None = None,
                 body: bytes | None = None, content_type: str = "application/json"):
        super().__init__(description)
        self.status, self.headers, self.content_type = status, dict(headers or {}), content_type
        self.body = body if body is not None else json.dumps(
            {"code": ERROR_CODES.get(status, "Error"), "description": description}).encode()


def azure_error(status: int, code: str, message: str) -> StacError:
    """An Azure Blob Storage error: XML ``<Error><Code>`` body, as a Planetary Computer asset answers."""
    body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return StacError(status, message, body=body.encode(), content_type="application/xml")


@dataclass
class RequestRecord:
    """One request as the stand-in answered it: path with its query, header names lower-cased, the status,
    body bytes sent, and when it arrived (``time.monotonic()`` seconds). Recorded in the order requests arrive, and
    filled in before the client can see the answer: once a client call returns, its requests are all here."""

    method: str
    path: str
    headers: dict[str, str]
    status: int | None
    bytes_sent: int
    received_at: float


@dataclass
class Fault:
    status: int
    times: int
    retry_after: int | None


@dataclass
class AssetFile:
    """A served asset: the local file, its media type, and whether requests need a SAS token."""

    path: Path
    media_type: str
    signed: bool


@dataclass
class SasToken:
    token: str
    signature: str
    expiry: datetime


def utc_text(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, as STAC APIs write times."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_instant(text: str) -> datetime:
    """An RFC 3339 time (naive ones taken as UTC); StacError 400 if it is not one."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise StacError(400, f"datetime {text!r} is not an RFC 3339 date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_interval(text: str) -> tuple[datetime | None, datetime | None]:
    """``a/b`` (either end open as ``..`` or empty) or one instant ``a`` (= ``a/a``): (start, end)."""
    parts = text.split("/")
    if len(parts) == 1:
        moment = parse_instant(parts[0])
        return moment, moment
    if len(parts) != 2:
        raise StacError(400, f"datetime {text!r}: expected an instant or an interval start/end")
    start, end = (None if part.strip() in ("", "..") else parse_instant(part) for part in parts)
    if start is None and end is None:
        raise StacError(400, f"datetime {text!r}: an interval needs at least one closed end")
    if start is not None and end is not None and start > end:
        raise StacError(400, f"datetime {text!r}: the end is before the start")
    return start, end


def item_interval(item: dict) -> tuple[datetime, datetime]:
    properties = item["properties"]
    if properties.get("datetime"):
        moment = parse_instant(properties["datetime"])
        return moment, moment
    return parse_instant(properties["start_datetime"]), parse_instant(properties["end_datetime"])


def bbox_geometry(bbox: Sequence[float]) -> BaseGeometry:
    """A 2D (4 numbers) or 3D (6 numbers) bbox as a geometry; one crossing the antimeridian (west > east) as two."""
    if len(bbox) not in (4, 6):
        raise StacError(400, f"bbox {list(bbox)}: expected 4 or 6 numbers")
    west, south, east, north = (bbox[0], bbox[1], bbox[3], bbox[4]) if len(bbox) == 6 else bbox
    if south > north:
        raise StacError(400, f"bbox {list(bbox)}: south is above north")
    if west > east:
        return box(west, south, 180, north).union(box(-180, south, east, north))
    return box(west, south, east, north)


@dataclass(frozen=True)
class Search:
    """Item-search parameters, parsed and checked (StacError 400 for a bad one)."""

    collections: frozenset[str] | None = None
    ids: frozenset[str] | None = None
    area: BaseGeometry | None = None
    interval: tuple[datetime | None, datetime | None] | None = None
    query: dict = field(default_factory=dict)
    limit: int | None = None
    offset: int = 0

    @classmethod
    def from_json(cls, body: Mapping) -> "Search":
        """From a POST body (or GET parameters already decoded to the same types)."""
        if "bbox" in body and "intersects" in body:
            raise StacError(400, "bbox and intersects: give only one")
        area = None
        try:
            if body.get("bbox") is not None:
                area = bbox_geometry([float(v) for v in body["bbox"]])
            elif body.get("intersects") is not None:
                area = shape(body["intersects"])
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise StacError(400, f"bbox/intersects: not a bbox or GeoJSON geometry ({exc})") from None
        query = body.get("query") or {}
        if not isinstance(query, dict) or not all(isinstance(ops, dict) and set(ops) <= set(QUERY_OPERATORS)
                                                   for ops in query.values()):
            raise StacError(400, f"query {query!r}: expected {{property: {{op: value}}}} with op one of "
                                 f"{', '.join(QUERY_OPERATORS)}")
        limit = body.get("limit")
        if limit is not None and (not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT):
            raise StacError(400, f"limit {limit!r}: expected an integer from 1 to {MAX_LIMIT}")
        token = body.get("token")
        if token is not None and not re.fullmatch(r"next:\d+", str(token)):
            raise StacError(400, f"token {token!r}: not a token this server issued")

        def names(key: str) -> frozenset[str] | None:
            return None if body.get(key) is None else frozenset(body[key])

        return cls(collections=names("collections"), ids=names("ids"), area=area,
                   interval=None if body.get("datetime") is None else parse_interval(str(body["datetime"])),
                   query=query, limit=limit, offset=int(str(token).split(":")[1]) if token else 0)

    @classmethod
    def from_get(cls, parameters: Mapping[str, str]) -> "Search":
        """From GET query parameters: comma-separated lists and bbox, JSON intersects and query."""
        body: dict = {}
        try:
            for key in ("collections", "ids"):
                if key in parameters:
                    body[key] = [v for v in parameters[key].split(",") if v]
            if "bbox" in parameters:
                body["bbox"] = [float(v) for v in parameters["bbox"].split(",")]
            for key in ("intersects", "query"):
                if key in parameters:
                    body[key] = json.loads(parameters[key])
            if "limit" in parameters:
                body["limit"] = int(parameters["limit"])
        except ValueError as exc:
            raise StacError(400, f"search parameters: {exc}") from None
        body.update({key: parameters[key] for key in ("datetime", "token") if key in parameters})
        return cls.from_json(body)

    def matches(self, item: dict) -> bool:
        if self.collections is not None and item.get("collection") not in self.collections:
            return False
        if self.ids is not None and item["id"] not in self.ids:
            return False
        if self.area is not None and not self.area.intersects(shape(item["geometry"])):
            return False
        if self.interval is not None:
            (start, end), (item_start, item_end) = self.interval, item_interval(item)
            if (start is not None and item_end < start) or (end is not None and item_start > end):
                return False
        for name, ops in self.query.items():
            if name not in item["properties"]:
                return False
            try:
                if not all(QUERY_OPERATORS[op](item["properties"][name], value) for op, value in ops.items()):
                    return False
            except TypeError:  # a number compared with a string: no match, as a typed index answers
                return False
        return True


class StacHandler(StandInHandler):
    """HTTP front of a ``StacStandin``: routing, faults, JSON answers, asset bytes with ranges."""

    standin: StacStandin
    methods = ("GET", "HEAD", "POST")
    keep_blank_query_values = True

    def internal_error(self, error: Exception) -> dict:
        return {"code": "InternalServerError", "description": repr(error)}

    def send_response(self, code: int, message: str | None = None) -> None:
        self._record.status = code
        super().send_response(code, message)

    def write_body(self, data: bytes) -> None:
        self._record.bytes_sent += len(data)
        self.wfile.write(data)

    def answer(self, method: str) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        self._record = RequestRecord(method, self.path, headers, None, 0, time.monotonic())
        self.standin._log_request(self._record)
        path, query = self.request_target()
        body = self.read_body()
        try:
            route, groups = self._route(path)
            if method == "POST" and route != "search":
                raise StacError(405, f"POST is not supported on {path}")
            if fault := self.standin._take_fault(route):
                retry = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                raise StacError(fault.status, f"injected fault on {route}", retry)
            if route == "asset":
                self._send_asset(groups["item"], groups["filename"], query, method == "HEAD")
            else:
                obj, content_type = self._answer(route, groups, method, query, body)
                self.send_json(200, obj, content_type)
        except StacError as error:
            self.send_body(error.status, error.body, error.content_type, error.headers)

    @staticmethod
    def _route(path: str) -> tuple[str, dict[str, str]]:
        for name, pattern in ROUTES:
            if match := pattern.match(path):
                return name, {key: unquote(value) for key, value in match.groupdict().items()}
        raise StacError(404, f"{path} not found")

    def _answer(self, route: str, groups: dict, method: str, query: dict, body: bytes) -> tuple[dict, str]:
        standin = self.standin
        if route == "landing":
            return standin._landing(), "application/json"
        if route == "conformance":
            return {"conformsTo": CONFORMANCE}, "application/json"
        if route == "collections":
            links = [{"rel": "self", "href": f"{standin.url}/collections", "type": "application/json"},
                     {"rel": "root", "href": f"{standin.url}/", "type": "application/json"}]
            return {"collections": [standin._collection(c) for c in standin.collections], "links": links}, \
                "application/json"
        if route == "collection":
            return standin._collection(groups["collection"]), "application/json"
        if route == "item":
            return standin._item(groups["collection"], groups["item"]), GEOJSON
        if route == "items":
            standin._collection(groups["collection"])
            search = Search.from_get({**query, "collections": groups["collection"]})
            return standin._search(search, urlsplit(self.path).path, "GET", query), GEOJSON
        if route == "search":
            if method == "POST":
                try:
                    parameters = json.loads(body or b"{}")
                except ValueError:
                    raise StacError(400, "search: the body is not JSON") from None
                return standin._search(Search.from_json(parameters), "/search", "POST", {}), GEOJSON
            return standin._search(Search.from_get(query), "/search", "GET", query), GEOJSON
        return standin._issue_sas_token(), "application/json"  # route "sas"

    def _send_asset(self, item_id: str, filename: str, query: dict, head: bool) -> None:
        standin = self.standin
        asset, size = standin._asset(item_id, filename)
        if standin.asset_authorization is not None and self.headers.get("Authorization") != standin.asset_authorization:
            scheme = standin.asset_authorization.split(" ", 1)[0]
            raise StacError(401, "missing or wrong credentials", {"WWW-Authenticate": f'{scheme} realm="assets"'})
        if asset.signed:
            standin._check_sas(query)
        start, end, status = 0, size - 1, 200  # end inclusive
        if byte_range := parse_range(self.headers.get("Range"), size):
            start, end = byte_range
            status = 206
        drop = None if head else standin._take_drop(item_id, filename, end - start + 1)
        time.sleep(standin.asset_latency_s)
        self.send_response(status)
        self.send_header("Content-Type", asset.media_type)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        remaining = end - start + 1 if drop is None else drop[0]
        with open(asset.path, "rb") as f:
            f.seek(start)
            while remaining > 0:
                chunk = f.read(min(STREAM_CHUNK_BYTES, remaining))
                if standin.asset_bandwidth_bytes_per_s:  # each chunk goes out once the link could have carried it
                    time.sleep(len(chunk) / standin.asset_bandwidth_bytes_per_s)
                self.write_body(chunk)
                remaining -= len(chunk)
        if drop is not None:
            self.close_connection = True  # the server then closes the socket: FIN after the bytes sent
            if drop[1]:  # SO_LINGER 0: closing sends an RST instead; the descriptor closes with the handler's files
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()


class StacStandin(ServedStandIn):
    """A STAC API server on 127.0.0.1 (a free port) serving the items and asset files added to it.

    collections: the collection ids it holds. page_size: the most items per page of a search (and the page size
    when the client gives no limit), as a server caps ``limit``. sas_token_lifetime_s: how long SAS tokens
    stay valid. asset_authorization: when set, asset requests must carry exactly this ``Authorization`` header
    value (e.g. ``"Bearer <token>"``); others get 401. asset_latency_s and asset_bandwidth_bytes_per_s model the
    link to a distant bucket: each asset answer waits that long before its headers, and its body goes no faster.

    Faults: ``fail`` (an error status on a route), ``drop_after`` (a download cut short: the connection closed or
    reset mid-body), ``truncate`` (a stored file shorter than the item says). ``requests`` records every request;
    ``stop`` (or leaving the ``with``) makes ``url`` unreachable.
    """

    def __init__(self, collections: Sequence[str] = ("sentinel-2-l2a",), page_size: int = 10,
                 sas_token_lifetime_s: float = 3600.0, asset_authorization: str | None = None,
                 asset_latency_s: float = 0.0, asset_bandwidth_bytes_per_s: float | None = None):
        self.collections = tuple(collections)
        self.page_size = page_size
        self.sas_token_lifetime_s = sas_token_lifetime_s
        self.asset_authorization = asset_authorization
        self.asset_latency_s = asset_latency_s
        self.asset_bandwidth_bytes_per_s = asset_bandwidth_bytes_per_s
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._items: dict[str, dict] = {}  # id -> item
        self._files: dict[tuple[str, str], AssetFile] = {}  # (item id, filename) -> file
        self._faults: dict[str, Fault] = {}  # route -> fault
        self._drops: dict[str, list] = {}  # filename or item_id/filename -> [nbytes, times left, reset]
        self._truncated: dict[str, int] = {}  # filename or item_id/filename -> nbytes served
        self._sas_tokens: dict[str, SasToken] = {}  # signature -> token

    handler, thread_name = StacHandler, "stac-standin"

    # -- content -------------------------------------------------------------------------------
    def add_item(self, item: dict, assets: Mapping[str, Path], signed: bool = False) -> dict:
        """Serve ``item`` (a STAC item dict, replacing one with its id) with each asset key of ``assets`` -> local
        file: its href becomes ``{url}/assets/{item_id}/{filename}``. ``signed``: asset requests need a SAS token
        (no token: 409 PublicAccessNotPermitted; an unknown or expired one: 403 AuthenticationFailed, as Azure
        Blob Storage answers). Returns the stored item (a copy)."""
        if not self.serving:
            raise RuntimeError("start the stand-in before adding items: their hrefs name its port")
        item = copy.deepcopy(item)
        item_id, collection = item["id"], item.get("collection")
        if collection not in self.collections:
            raise ValueError(f"item {item_id}: collection {collection!r} is not one of {self.collections}")
        unknown = set(assets) - set(item.get("assets", {}))
        if unknown:
            raise ValueError(f"item {item_id}: no asset {', '.join(sorted(unknown))} in the item")
        names = [Path(p).name for p in assets.values()]
        if len(set(names)) < len(names):
            raise ValueError(f"item {item_id}: two assets share a file name ({names})")
        files = {}
        for key, path in assets.items():
            asset = item["assets"][key]
            asset["href"] = f"{self.url}/assets/{quote(item_id)}/{quote(Path(path).name)}"
            files[(item_id, Path(path).name)] = AssetFile(Path(path), asset.get("type", "application/octet-stream"),
                                                          signed)
        item["links"] = [
            {"rel": "self", "href": f"{self.url}/collections/{collection}/items/{quote(item_id)}", "type": GEOJSON},
            {"rel": "parent", "href": f"{self.url}/collections/{collection}", "type": "application/json"},
            {"rel": "collection", "href": f"{self.url}/collections/{collection}", "type": "application/json"},
            {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
        ]
        with self._lock:
            self._files = {k: v for k, v in self._files.items() if k[0] != item_id} | files
            self._items[item_id] = item
        return copy.deepcopy(item)

    def serve_files(self, files: Mapping[str, Path]) -> dict[str, str]:
        """Serve plain files (name -> local path; pretrained checkpoints, say) with the assets' byte ranges and
        faults, outside any searchable collection item; returns name -> URL."""
        item = {"type": "Feature", "stac_version": "1.0.0", "id": "files", "collection": self.collections[0],
                "geometry": None, "properties": {"datetime": "2021-01-01T00:00:00Z"},
                "assets": {name: {"href": "", "type": "application/octet-stream"} for name in files}}
        return {name: asset["href"] for name, asset in self.add_item(item, files)["assets"].items()}

    # -- faults --------------------------------------------------------------------------------
    def fail(self, route: str, status: int, times: int = 1, retry_after: int | None = None) -> None:
        """The next ``times`` requests to ``route`` (one of ROUTE_NAMES: landing, conformance, collections,
        collection, items, item, search, asset, sas) answer ``status`` with a JSON error body, and
        ``Retry-After: <retry_after>`` when given, in whole seconds: RFC 9110 allows no fraction, and urllib3
        rejects one."""
        if route not in ROUTE_NAMES:
            raise ValueError(f"route {route!r}: expected one of {', '.join(ROUTE_NAMES)}")
        if retry_after is not None and (int(retry_after) != retry_after or retry_after < 0):
            raise ValueError(f"retry_after {retry_after!r}: Retry-After takes whole seconds >= 0")
        with self._lock:
            self._faults[route] = Fault(status, times, None if retry_after is None else int(retry_after))

    def drop_after(self, filename: str, nbytes: int, times: int = 1, reset: bool = False) -> None:
        """The next ``times`` GETs of asset file ``filename`` (any item's, or one item's as ``item_id/filename``)
        whose body is longer than ``nbytes`` send their headers (the full Content-Length) and ``nbytes`` of the body,
        then end the connection. Shorter answers (GDAL's 16 KiB header read, say) go out whole and count not.

        reset False: it closes (FIN); the client reads exactly ``nbytes``, then the body ends short of its
        Content-Length (urllib3 IncompleteRead, curl error 18). reset True: it resets (RST); the client gets a
        connection-reset error, after at most ``nbytes``: Linux drops received bytes not yet read when the RST
        comes, so how many arrive varies."""
        with self._lock:
            self._drops[filename] = [nbytes, times, reset]

    def truncate(self, filename: str, nbytes: int) -> None:
        """From now on, asset file ``filename`` (any item's, or ``item_id/filename``) is stored as its first
        ``nbytes``: every response is a consistent HTTP answer (Content-Length, ranges and HEAD of the short
        file), so only the item's ``file:size`` tells that the asset is incomplete."""
        with self._lock:
            self._truncated[filename] = nbytes

    # -- inspection ----------------------------------------------------------------------------
    def bytes_sent(self, prefix: str = "/assets/") -> int:
        """Body bytes sent in answer to requests whose path starts with ``prefix``."""
        with self._lock:
            return sum(r.bytes_sent for r in self.requests if r.path.startswith(prefix))

    # -- answers (called by the handler) ---------------------------------------------------------
    def _log_request(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def _take_fault(self, route: str) -> Fault | None:
        with self._lock:
            fault = self._faults.get(route)
            if fault is None or fault.times <= 0:
                return None
            fault.times -= 1
            return fault

    def _take_drop(self, item_id: str, filename: str, length: int) -> tuple[int, bool] | None:
        """(bytes to send, reset) when this GET of ``length`` body bytes of the file is to be cut short."""
        with self._lock:
            for key in (f"{item_id}/{filename}", filename):
                drop = self._drops.get(key)
                if drop and drop[1] > 0 and length > drop[0]:
                    drop[1] -= 1
                    return drop[0], drop[2]
        return None

    def _asset(self, item_id: str, filename: str) -> tuple[AssetFile, int]:
        """The asset file and its served size in bytes."""
        with self._lock:
            asset = self._files.get((item_id, filename))
            truncated = self._truncated.get(f"{item_id}/{filename}", self._truncated.get(filename))
        if asset is None:
            raise StacError(404, f"asset {item_id}/{filename} not found")
        size = asset.path.stat().st_size
        return asset, size if truncated is None else min(size, truncated)

    def _check_sas(self, query: Mapping[str, str]) -> None:
        if "sig" not in query:
            raise azure_error(409, "PublicAccessNotPermitted",
                              "Public access is not permitted on this storage account.")
        with self._lock:
            token = self._sas_tokens.get(query["sig"])
        if token is None or token.expiry <= datetime.now(timezone.utc):
            raise azure_error(403, "AuthenticationFailed", "Server failed to authenticate the request. Make sure "
                                                           "the value of Authorization header is formed correctly.")

    def _issue_sas_token(self) -> dict:
        now = datetime.now(timezone.utc)
        expiry = now + timedelta(seconds=self.sas_token_lifetime_s)
        signature = base64.b64encode(secrets.token_bytes(32)).decode()
        token = urlencode({"st": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "se": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "sp": "rl", "sv": "2024-05-04", "sr": "c", "sig": signature})
        with self._lock:
            self._sas_tokens[signature] = SasToken(token, signature, expiry)
        return {"msft:expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"), "token": token}

    def _landing(self) -> dict:
        return {
            "type": "Catalog", "id": "stac-standin", "stac_version": STAC_VERSION, "title": "STAC API stand-in",
            "description": "A local STAC API for tests", "conformsTo": CONFORMANCE,
            "links": [
                {"rel": "self", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "conformance", "href": f"{self.url}/conformance", "type": "application/json"},
                {"rel": "data", "href": f"{self.url}/collections", "type": "application/json"},
                {"rel": "search", "href": f"{self.url}/search", "type": GEOJSON, "method": "GET"},
                {"rel": "search", "href": f"{self.url}/search", "type": GEOJSON, "method": "POST"},
                *({"rel": "child", "href": f"{self.url}/collections/{c}", "type": "application/json"}
                  for c in self.collections),
            ],
        }

    def _collection(self, collection: str) -> dict:
        if collection not in self.collections:
            raise StacError(404, f"Collection {collection} does not exist.")
        with self._lock:
            boxes = [item["bbox"] for item in self._items.values() if item["collection"] == collection]
        bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                max(b[3] for b in boxes)] if boxes else [-180.0, -90.0, 180.0, 90.0]
        href = f"{self.url}/collections/{collection}"
        return {
            "type": "Collection", "id": collection, "stac_version": STAC_VERSION, "license": "proprietary",
            "description": f"{collection} (stand-in)",
            "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [["2015-06-27T10:25:31.456000Z", None]]}},
            "links": [
                {"rel": "self", "href": href, "type": "application/json"},
                {"rel": "parent", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "items", "href": f"{href}/items", "type": GEOJSON},
            ],
        }

    def _item(self, collection: str, item_id: str) -> dict:
        self._collection(collection)
        with self._lock:
            item = self._items.get(item_id)
            if item is None or item["collection"] != collection:
                raise StacError(404, f"Item {item_id} in Collection {collection} does not exist.")
            return copy.deepcopy(item)

    def _search(self, search: Search, path: str, method: str, get_parameters: Mapping[str, str]) -> dict:
        """A page of the items matching ``search`` as a FeatureCollection, with a ``next`` link when more remain."""
        with self._lock:
            items = [item for item in self._items.values() if search.matches(item)]
            items = copy.deepcopy(sorted(items, key=lambda item: (item_interval(item)[0], item["id"])))
        limit = min(search.limit or self.page_size, self.page_size)
        page = items[search.offset:search.offset + limit]
        links = [{"rel": "root", "href": f"{self.url}/", "type": "application/json"}]
        if search.offset + limit < len(items):
            token = f"next:{search.offset + limit}"
            if method == "POST":
                links.append({"rel": "next", "href": f"{self.url}{path}", "type": GEOJSON, "method": "POST",
                              "body": {"token": token}, "merge": True})
            else:
                parameters = urlencode({**{k: v for k, v in get_parameters.items() if k != "token"}, "token": token})
                links.append({"rel": "next", "href": f"{self.url}{path}?{parameters}", "type": GEOJSON})
        return {"type": "FeatureCollection", "features": page, "links": links, "numberMatched": len(items),
                "numberReturned": len(page)}


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single ``bytes=a-b`` / ``a-`` / ``-n`` range of a ``size``-byte body as (first, last byte), inclusive;
    None (send it all) for no header, a malformed one or several ranges, as RFC 9110 lets a server ignore
    them; StacError 416 when it lies beyond the body."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size - 1
        if int(last) == 0 or size == 0:
            raise StacError(416, f"range {header!r} of {size} bytes", {"Content-Range": f"bytes */{size}"})
        return start, end
    start, end = int(first), min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        raise StacError(416, f"range {header!r} of {size} bytes", {"Content-Range": f"bytes */{size}"})
    return start, end


# -- rasters ---------------------------------------------------------------------------------------
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOTIFF_MEDIA_TYPE = "image/tiff; application=geotiff"


def _as_bands(array: np.ndarray) -> np.ndarray:
    return array if array.ndim == 3 else array[None]


def write_cog(path: Path, array: np.ndarray, crs: str, transform: rasterio.Affine, nodata: float | None = None,
              blocksize: int = 256, compress: str = "deflate", overview_resampling: str = "nearest") -> Path:
    """Write ``array`` ((H, W) or (C, H, W)) as a Cloud-Optimized GeoTIFF (GDAL's COG driver): ``blocksize`` px
    tiles (a multiple of 16, at least 128), header and IFDs first, and overviews halving down to one tile (at
    least one level)."""
    data = _as_bands(array)
    count, height, width = data.shape
    overviews = max(1, math.ceil(math.log2(max(width, height) / blocksize)))
    with MemoryFile() as memfile:
        with memfile.open(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype, crs=crs,
                          transform=transform, nodata=nodata) as dataset:
            dataset.write(data)
        with memfile.open() as dataset:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            rasterio.shutil.copy(dataset, path, driver="COG", BLOCKSIZE=blocksize, COMPRESS=compress,
                                 OVERVIEW_COUNT=overviews, OVERVIEW_RESAMPLING=overview_resampling.upper())
    return Path(path)


def write_plain_tiff(path: Path, array: np.ndarray, crs: str, transform: rasterio.Affine,
                     nodata: float | None = None, compress: str | None = None) -> Path:
    """Write ``array`` ((H, W) or (C, H, W)) as a striped GeoTIFF without overviews: not cloud-optimized, a
    client has to download it whole."""
    data = _as_bands(array)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata, tiled=False,
                       **({"compress": compress} if compress else {})) as dataset:
        dataset.write(data)
    return Path(path)


# -- items -----------------------------------------------------------------------------------------
class AssetSpec(NamedTuple):
    """One asset of an item: file name, media type, roles, ``file:size`` (bytes); and, for rasters,
    ``proj:shape`` (rows, cols), ``proj:transform`` (6 affine numbers) and ``raster:bands``."""

    filename: str
    media_type: str
    roles: tuple[str, ...]
    file_size: int
    shape: tuple[int, int] | None = None
    transform: tuple[float, ...] | None = None
    raster_bands: list[dict] | None = None


def describe_asset(path: Path, roles: Sequence[str] = ("data",)) -> AssetSpec:
    """The AssetSpec of a raster file: COG media type when GDAL reports the COG layout, else plain GeoTIFF."""
    path = Path(path)
    with rasterio.open(path) as dataset:
        is_cog = dataset.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        bands = [{"nodata": dataset.nodata, "data_type": dtype, "spatial_resolution": abs(dataset.transform.a)}
                 for dtype in dataset.dtypes]
        return AssetSpec(path.name, COG_MEDIA_TYPE if is_cog else GEOTIFF_MEDIA_TYPE, tuple(roles),
                         path.stat().st_size, (dataset.height, dataset.width), tuple(dataset.transform)[:6], bands)


EO_BANDS = {
    "blue": {"name": "blue", "common_name": "blue", "description": "Blue (band 2)", "center_wavelength": 0.49,
             "full_width_half_max": 0.098},
    "green": {"name": "green", "common_name": "green", "description": "Green (band 3)", "center_wavelength": 0.56,
              "full_width_half_max": 0.045},
    "red": {"name": "red", "common_name": "red", "description": "Red (band 4)", "center_wavelength": 0.665,
            "full_width_half_max": 0.038},
    "nir": {"name": "nir", "common_name": "nir", "description": "NIR 1 (band 8)", "center_wavelength": 0.842,
            "full_width_half_max": 0.145},
    "swir16": {"name": "swir16", "common_name": "swir16", "description": "SWIR 1.6μm (band 11)",
               "center_wavelength": 1.61, "full_width_half_max": 0.143},
}
"""Earth Search v1 asset key -> its ``eo:bands`` entry."""
ASSET_TITLES = {"blue": "Blue (band 2) - 10m", "green": "Green (band 3) - 10m", "red": "Red (band 4) - 10m",
                "nir": "NIR 1 (band 8) - 10m", "swir16": "SWIR 1.6μm (band 11) - 20m",
                "scl": "Scene classification map (SCL)", "visual": "True color image", "thumbnail": "Thumbnail image"}
BAND_ASSET_KEYS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B11": "swir16", "SCL": "scl",
                   "TCI": "visual"}
"""Sentinel-2 band file name -> Earth Search v1 asset key."""
MGRS_LATITUDE_BANDS = "CDEFGHJKLMNPQRSTUVWX"


def sentinel2_item(item_id: str | None, footprint: Sequence[float] | BaseGeometry, epsg: int, when: datetime | str,
                   cloud_cover: float, collection: str = "sentinel-2-l2a", baseline: str = "05.10",
                   assets: Mapping[str, AssetSpec | tuple] | None = None, extra_properties: Mapping | None = None,
                   boa_offset_applied: bool = False, proj_field: str = "epsg", grid_square: str = "EG") -> dict:
    """A Sentinel-2 L2A STAC item in Earth Search v1's style; ``item_id`` None: Earth Search's
    ``S2B_<MGRS tile>_<yyyymmdd>_0_L2A``.

    footprint: the data footprint in the raster CRS ``epsg`` (a UTM zone), as bounds (left, bottom, right, top,
    metres) or a geometry; ``geometry`` and ``bbox`` are it in EPSG:4326, ``proj:bbox`` its bounds. when: the
    sensing time (UTC). cloud_cover: ``eo:cloud_cover`` in percent. assets: key -> AssetSpec (or its leading
    fields as a tuple); hrefs are the bare file names until ``StacStandin.add_item`` serves them.
    proj_field: ``"epsg"`` (projection extension 1.1, ``proj:epsg`` as Earth Search and Planetary Computer
    write it) or ``"code"`` (extension 2.0, ``proj:code`` as Copernicus Data Space writes it).
    boa_offset_applied: ``earthsearch:boa_offset_applied`` (Earth Search subtracted BOA_ADD_OFFSET already).
    """
    geometry = box(*footprint) if not isinstance(footprint, BaseGeometry) else footprint
    lonlat = shape(transform_geom(f"EPSG:{epsg}", "EPSG:4326", mapping(segmentize(geometry, 1000.0))))
    moment = parse_instant(when) if isinstance(when, str) else when
    zone = epsg % 100
    band = MGRS_LATITUDE_BANDS[min(19, max(0, int((lonlat.centroid.y + 80) // 8)))]
    mgrs_tile = f"{zone:02d}{band}{grid_square}"
    item_id = item_id or f"S2B_{mgrs_tile}_{moment:%Y%m%d}_0_L2A"
    projection = ({"proj:epsg": epsg} if proj_field == "epsg" else {"proj:code": f"EPSG:{epsg}"})
    properties = {
        "created": utc_text(moment + timedelta(hours=6)), "updated": utc_text(moment + timedelta(hours=6)),
        "platform": "sentinel-2b" if item_id.startswith("S2B") else "sentinel-2a", "constellation": "sentinel-2",
        "instruments": ["msi"], "eo:cloud_cover": float(cloud_cover), **projection,
        "proj:bbox": [float(v) for v in geometry.bounds], "mgrs:utm_zone": zone, "mgrs:latitude_band": band,
        "mgrs:grid_square": grid_square, "grid:code": f"MGRS-{mgrs_tile}", "s2:mgrs_tile": mgrs_tile,
        "s2:processing_baseline": baseline, "s2:product_type": "S2MSI2A",
        "s2:product_uri": f"S2B_MSIL2A_{moment:%Y%m%dT%H%M%S}_N{baseline.replace('.', '')}_R013_T{mgrs_tile}_"
                          f"{moment + timedelta(hours=2):%Y%m%dT%H%M%S}.SAFE",
        "s2:nodata_pixel_percentage": 0.0, "earthsearch:boa_offset_applied": boa_offset_applied,
        "datetime": utc_text(moment), **(extra_properties or {}),
    }
    item_assets = {}
    for key, spec in (assets or {}).items():
        spec = AssetSpec(*spec)
        asset = {"href": spec.filename, "type": spec.media_type, "title": ASSET_TITLES.get(key, key),
                 "roles": list(spec.roles), "file:size": spec.file_size}
        if key in EO_BANDS:
            asset["eo:bands"] = [EO_BANDS[key]]
        elif key == "visual":
            asset["eo:bands"] = [EO_BANDS["red"], EO_BANDS["green"], EO_BANDS["blue"]]
        if spec.shape is not None:
            asset.update({"proj:shape": list(spec.shape), "proj:transform": list(spec.transform)})
        if spec.raster_bands is not None:
            asset["raster:bands"] = spec.raster_bands
        item_assets[key] = asset
    return {
        "type": "Feature", "stac_version": STAC_VERSION, "id": item_id, "collection": collection,
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json" if proj_field == "epsg"
            else "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/file/v2.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
            "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
        ],
        "geometry": mapping(lonlat), "bbox": [float(v) for v in lonlat.bounds], "properties": properties,
        "links": [], "assets": item_assets,
    }


# -- synthetic catalogues --------------------------------------------------------------------------
SCL_NO_DATA, SCL_VEGETATION = 0, 4
SCL_CLOUD_CLASSES = (8, 9, 10)
"""SCL classes counted in ``eo:cloud_cover``: cloud medium and high probability, thin cirrus."""
BURNED_AREA_SENSING = datetime(2021, 8, 10, 19, 3, 59, tzinfo=timezone.utc)
PAIR_SENSING_TIME = timedelta(hours=13, minutes=56, seconds=21)
GRID_SQUARES = "GHJKLMNPQRSTUVWXYZ"


@dataclass(frozen=True)
class SyntheticProduct:
    """One synthetic L2A product: its item, asset key -> local file, and the product folder that
    ``data_prep.synthetic`` or ``data_prep.synthetic_pairs`` wrote (what acquiring it whole gives back)."""

    item: dict
    assets: dict[str, Path]
    source: Path


@dataclass(frozen=True)
class SyntheticCatalog:
    """Synthetic products and the polygon file of their app (burn polygons, or PRODES-like ones)."""

    polygons: Path
    products: list[SyntheticProduct]

    def serve(self, stac: StacStandin, signed: bool = False) -> list[dict]:
        """Add every product to ``stac``; the served items."""
        return [stac.add_item(p.item, p.assets, signed=signed) for p in self.products]


def _read(path: Path) -> tuple[np.ndarray, str, rasterio.Affine, int]:
    """(bands (C, H, W), CRS string, transform, EPSG code) of a raster file."""
    with rasterio.open(path) as dataset:
        return dataset.read(), dataset.crs.to_string(), dataset.transform, dataset.crs.to_epsg()


def _data_footprint(valid: np.ndarray, transform: rasterio.Affine) -> BaseGeometry:
    """The outline of the ``valid`` pixels ((H, W) bool) in the raster CRS, simplified to a pixel."""
    polygons = [shape(geometry) for geometry, _ in shapes(valid.astype(np.uint8), mask=valid, transform=transform)]
    return unary_union(polygons).simplify(abs(transform.a))


def _write_assets(out_dir: Path, bands: Mapping[str, np.ndarray], scl: np.ndarray, tci: np.ndarray, crs: str,
                  transform: rasterio.Affine, cog: bool, blocksize: int) -> dict[str, Path]:
    """Write B02, B03, B04, B08 (10 m), SCL and B11 (20 m), TCI and a thumbnail; asset key -> file."""
    coarse = transform @ rasterio.Affine.scale(2)
    swir = np.clip(bands["B08"][::2, ::2].astype(np.float32) * 0.6, 0, 10000).astype(np.uint16)
    rasters = {**{band: (data, transform, "average") for band, data in bands.items()}, "SCL": (scl, coarse, "nearest"),
               "B11": (swir, coarse, "average"), "TCI": (tci, transform, "average")}
    files = {}
    for band, (data, band_transform, resampling) in rasters.items():
        path = out_dir / f"{band}.tif"
        if cog:
            write_cog(path, data, crs, band_transform, 0, blocksize, overview_resampling=resampling)
        else:
            write_plain_tiff(path, data, crs, band_transform, 0, compress="deflate")
        files[BAND_ASSET_KEYS[band]] = path
    thumbnail = out_dir / "thumbnail.jpg"
    with MemoryFile() as memfile, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a thumbnail is a plain picture
        with memfile.open(driver="GTiff", width=tci.shape[2] // 4, height=tci.shape[1] // 4, count=3,
                          dtype="uint8") as dataset:
            dataset.write(tci[:, ::4, ::4][:, :tci.shape[1] // 4, :tci.shape[2] // 4])
        with memfile.open() as dataset:
            rasterio.shutil.copy(dataset, thumbnail, driver="JPEG")
    files["thumbnail"] = thumbnail
    return files


def _product(assets: dict[str, Path], footprint: BaseGeometry, epsg: int, when: datetime, baseline: str,
             boa_offset_applied: bool, index: int, source: Path, collection: str, proj_field: str) -> SyntheticProduct:
    with rasterio.open(assets["scl"]) as dataset:
        scl = dataset.read(1)
    valid = scl != SCL_NO_DATA
    cloud_cover = 100.0 * np.isin(scl[valid], SCL_CLOUD_CLASSES).mean() if valid.any() else 0.0
    specs = {key: describe_asset(path, ("data",) if key in ("scl", "visual") else ("data", "reflectance"))
             for key, path in assets.items() if key != "thumbnail"}
    specs["thumbnail"] = AssetSpec(assets["thumbnail"].name, "image/jpeg", ("thumbnail",),
                                   assets["thumbnail"].stat().st_size)
    item = sentinel2_item(None, footprint, epsg, when, round(float(cloud_cover), 4), collection, baseline, specs,
                          boa_offset_applied=boa_offset_applied, proj_field=proj_field,
                          grid_square="E" + GRID_SQUARES[index % len(GRID_SQUARES)])
    return SyntheticProduct(item, assets, source)


def synthetic_s2_catalog(folder: Path, app: str = "burned_area", n_products: int = 1, size: int = 256,
                         seed: int = 0, cog: bool = True, blocksize: int = 128, collection: str = "sentinel-2-l2a",
                         proj_field: str = "epsg") -> SyntheticCatalog:
    """Synthetic Sentinel-2 L2A products as STAC items with asset files, under ``folder``.

    app ``burned_area``: ``n_products`` scenes of ``data_prep.synthetic`` (``size`` px a side), one item each,
    sensed a day apart from 2021-08-10, and their burn polygons (EPSG:4326). Their DNs carry no offset (baseline
    05.10 with ``earthsearch:boa_offset_applied``); SCL is derived: 0 (no data) where B02 is 0, else 4.
    app ``deforestation``: ``n_products`` areas of ``data_prep.synthetic_pairs``, two items each (before 2020,
    baseline 02.14; after 2021, baseline 05.00 with the BOA offset in its DNs, as its MTD says) and the
    PRODES-like polygons (EPSG:4674); TCI is made from reflectance as ``data_prep.synthetic`` makes it.

    Each item has the Earth Search assets blue, green, red, nir (B02-B08.tif, 10 m uint16), scl (SCL.tif, 20 m
    uint8), visual (TCI.tif, 10 m, 3 x uint8), and two the apps do not need: swir16 (B11.tif, 20 m) and thumbnail
    (thumbnail.jpg). Rasters are COGs with ``blocksize`` px tiles (``cog`` False: striped plain GeoTIFFs).
    ``eo:cloud_cover`` is the percentage of SCL data pixels in a cloud class (8, 9, 10).
    """
    from data_prep.synthetic import BANDS, generate_scenes, true_colour
    from data_prep.synthetic_pairs import DATES, generate_pairs

    folder = Path(folder)
    products = []
    if app == "burned_area":
        data = generate_scenes(folder / "synthetic", n_scenes=n_products, size=size, seed=seed, vary_size=False)
        polygons = data.polygons
        for index, scene in enumerate(data.scenes):
            source = data.scenes_dir / scene
            bands = {band: _read(source / f"{band}.tif")[0][0] for band in BANDS}
            tci, crs, transform, epsg = _read(source / "TCI.tif")
            scl = np.where(bands["B02"][::2, ::2] == 0, SCL_NO_DATA, SCL_VEGETATION).astype(np.uint8)
            assets = _write_assets(folder / "assets" / scene, bands, scl, tci, crs, transform, cog, blocksize)
            products.append(_product(assets, _data_footprint(bands["B02"] != 0, transform), epsg,
                                     BURNED_AREA_SENSING + timedelta(days=index), "05.10", True, index, source,
                                     collection, proj_field))
    elif app == "deforestation":
        areas, polygons = generate_pairs(folder / "synthetic", n_areas=n_products, size=size, seed=seed)
        for index, area in enumerate(sorted(p.name for p in areas.iterdir())):
            for name, (sensing, baseline, offset) in DATES.items():
                source = areas / area / name
                _, crs, transform, epsg = _read(source / "B02.tif")
                bands = {band: _read(source / f"{band}.tif")[0][0] for band in BANDS}
                scl = _read(source / "SCL.tif")[0][0]
                dn = np.stack([bands[band] for band in BANDS]).astype(np.float32)
                tci = true_colour(np.where(dn == 0, 0, np.clip(dn + offset, 1, None)))
                assets = _write_assets(folder / "assets" / f"{area}_{name}", bands, scl, tci, crs, transform, cog,
                                       blocksize)
                when = datetime.combine(sensing, datetime.min.time(), timezone.utc) + PAIR_SENSING_TIME
                products.append(_product(assets, _data_footprint(bands["B02"] != 0, transform), epsg, when, baseline,
                                         False, index, source, collection, proj_field))
    else:
        raise ValueError(f"app {app!r}: expected burned_area or deforestation")
    return SyntheticCatalog(polygons, products)
