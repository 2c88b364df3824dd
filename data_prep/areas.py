"""Acquisition areas: polygons grouped into boxes, one acquisition job each.

Polygons are drawn in a metric CRS (``AreaSettings.crs``, else each polygon's UTM zone). Polygons within
``max_gap_m`` of each other share an area; its box is their bounds widened by ``margin_m`` and snapped outward to
the 20 m lattice windows are read on. Groups whose boxes overlap are merged, so areas never overlap (no chip is
cut twice), and a group wider or taller than ``max_size_m`` is cut into equal cells no larger. Areas are named
``area_000``, ... by CRS, then north to south, then west to east: the same polygons always give the same areas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import geopandas as gpd
import numpy as np
import shapely
from rasterio.warp import transform_bounds

from apps.foundation.errors import InputError
from apps.foundation.files import atomic_write_text
from data_prep.fetch import SNAP_M

AREAS_FILE = "areas.geojson"


@dataclass(frozen=True)
class AreaSettings:
    """How polygons are grouped into areas (m, in ``crs`` or each polygon's UTM zone when ``crs`` is null)."""

    max_gap_m: float = 2000.0
    max_size_m: float = 20000.0
    margin_m: float = 500.0
    crs: str | None = None

    def __post_init__(self):
        if self.max_gap_m < 0 or self.margin_m < 0 or self.max_size_m < 10 * SNAP_M:
            raise InputError(f"areas: max_gap_m and margin_m must be >= 0 and max_size_m >= {10 * SNAP_M:g}, got "
                             f"{self.max_gap_m}, {self.margin_m} and {self.max_size_m}")

    @property
    def size_limit(self) -> float:
        """``max_size_m`` on the 20 m lattice."""
        return math.floor(self.max_size_m / SNAP_M) * SNAP_M


@dataclass(frozen=True)
class Area:
    """One area: name, metric CRS and box (left, bottom, right, top in m), number of polygons drawn in it."""

    name: str
    crs: str
    bounds: tuple[float, float, float, float]
    polygons: int

    @property
    def box(self) -> shapely.Polygon:
        return shapely.box(*self.bounds)

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        return tuple(transform_bounds(self.crs, "EPSG:4326", *self.bounds, densify_pts=21))


def utm_crs(lon: float, lat: float) -> str:
    """The WGS 84 UTM zone of a point (standard 6-degree zones)."""
    return f"EPSG:{(32600 if lat >= 0 else 32700) + int((lon + 180) // 6) % 60 + 1}"


def _snap_out(bounds) -> tuple[float, float, float, float]:
    left, bottom, right, top = bounds
    return (math.floor(left / SNAP_M) * SNAP_M, math.floor(bottom / SNAP_M) * SNAP_M,
            math.ceil(right / SNAP_M) * SNAP_M, math.ceil(top / SNAP_M) * SNAP_M)


def _widen(bounds, margin: float, limit: float | None = None) -> tuple[float, float, float, float]:
    """``bounds`` (snapped) widened by ``margin`` on each side, less where that would make a side exceed ``limit``
    (a side already over ``limit`` gets the whole margin: it is split into cells)."""
    left, bottom, right, top = bounds

    def pad(extent: float) -> float:
        if limit is None or extent > limit:
            return margin
        return min(margin, math.floor((limit - extent) / 2 / SNAP_M) * SNAP_M)

    dx, dy = pad(right - left), pad(top - bottom)
    return _snap_out((left - dx, bottom - dy, right + dx, top + dy))


def _components(shapes) -> list[int]:
    """For each shape, the index of the connected part of their union that holds it (the groups of shapes that
    touch, directly or through others: a union is how shapely finds them, without a graph library)."""
    union = shapely.union_all(shapes)
    tree = shapely.STRtree(list(getattr(union, "geoms", [union])))
    found, parts = tree.query(shapely.point_on_surface(shapes), predicate="intersects")
    labels = [0] * len(shapes)
    for i, part in zip(found.tolist(), parts.tolist()):
        labels[i] = part
    return labels


def _group_areas(geoms: gpd.GeoSeries, settings: AreaSettings) -> list[tuple[tuple[float, float, float, float], int]]:
    """(box, polygon count) of the areas of ``geoms`` (a GeoSeries in a metric CRS)."""
    shapes = np.asarray(geoms.values)
    labels = np.asarray(_components(shapely.buffer(shapes, settings.max_gap_m / 2)))
    while True:  # merge groups whose boxes overlap, until none do
        groups = sorted(set(labels.tolist()))
        boxes = [_widen(_snap_out(shapely.total_bounds(shapes[labels == g])), settings.margin_m, settings.size_limit)
                 for g in groups]
        merged = np.asarray(_components(shapely.box(*np.asarray(boxes).T)))
        if len(set(merged.tolist())) == len(groups):
            break
        labels = merged[np.searchsorted(groups, labels)]
    return [cell for g, group_box in zip(groups, boxes) for cell in _cells(shapes[labels == g], group_box, settings)]


def _cells(members, group_box, settings: AreaSettings) -> list[tuple[tuple[float, float, float, float], int]]:
    """A group's areas: its box if no side exceeds ``size_limit``, else equal cells of the box (on the 20 m lattice),
    each shrunk to its part of the polygons widened by the margin."""
    left, bottom, right, top = group_box
    limit = settings.size_limit
    if right - left <= limit and top - bottom <= limit:
        return [(group_box, len(members))]
    nx, ny = math.ceil((right - left) / limit), math.ceil((top - bottom) / limit)
    sx = math.ceil((right - left) / nx / SNAP_M) * SNAP_M
    sy = math.ceil((top - bottom) / ny / SNAP_M) * SNAP_M
    cells = []
    for i in range(nx):
        for j in range(ny):
            cell = (left + i * sx, max(bottom, top - (j + 1) * sy), min(right, left + (i + 1) * sx), top - j * sy)
            inside = shapely.intersection(members, shapely.box(*cell))
            inside = inside[shapely.area(inside) > 0]
            if len(inside):
                near = _widen(_snap_out(shapely.total_bounds(inside)), settings.margin_m)
                cells.append(((max(cell[0], near[0]), max(cell[1], near[1]), min(cell[2], near[2]),
                               min(cell[3], near[3])), len(inside)))
    return cells


def plan_areas(geoms: gpd.GeoSeries, settings: AreaSettings) -> list[Area]:
    """The areas of polygons ``geoms`` (a GeoSeries with a CRS), named in order (see the module)."""
    lonlat = geoms.to_crs("EPSG:4326").bounds
    crs = ([settings.crs] * len(geoms) if settings.crs
           else [utm_crs((r.minx + r.maxx) / 2, (r.miny + r.maxy) / 2) for r in lonlat.itertuples()])
    found = []
    for zone in sorted(set(crs)):
        members = geoms[[c == zone for c in crs]].to_crs(zone)
        found += [(zone, bounds, count) for bounds, count in _group_areas(members, settings)]
    found.sort(key=lambda a: (a[0], -a[1][3], a[1][0]))
    return [Area(f"area_{i:03d}", zone, tuple(float(v) for v in bounds), count)
            for i, (zone, bounds, count) in enumerate(found)]


def areas_geojson(areas: Sequence[Area]) -> str:
    """The areas as GeoJSON text: EPSG:4326 boxes with name, crs, bounds in that CRS and polygon count."""
    rows = [{"name": a.name, "crs": a.crs, "left": a.bounds[0], "bottom": a.bounds[1], "right": a.bounds[2],
             "top": a.bounds[3], "polygons": a.polygons,
             "geometry": gpd.GeoSeries([shapely.segmentize(a.box, (a.bounds[2] - a.bounds[0]) / 10)], crs=a.crs)
             .to_crs("EPSG:4326").iloc[0]} for a in areas]
    return gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326").to_json(drop_id=True, indent=1)


def write_areas(out_dir: Path, areas: Sequence[Area]) -> Path:
    """Write ``areas.geojson`` unless it already holds these areas."""
    path = Path(out_dir) / AREAS_FILE
    text = areas_geojson(areas)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return path
