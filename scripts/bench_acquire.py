"""Benchmark acquiring one area: a windowed read of COG assets against downloading the assets whole.

    python scripts/bench_acquire.py [--size 2048] [--area-px 256] [--blocksize 512] [--latency-ms 20]
                                    [--bandwidth-mbit 200] [--repeats 3] [--quick]

Writes (not timed) one synthetic burned-area scene of ``size`` x ``size`` px as COGs with ``blocksize`` px tiles
(``geoscale_standins.stac.synthetic_s2_catalog``) and serves it from the local STAC stand-in, whose asset answers wait
``latency-ms`` and stream at most ``bandwidth-mbit`` per connection (a distant bucket; 0: loopback speed). Then,
for the bands the burned-area prep reads (B02, B03, B04, TCI) and a square area of ``area-px`` px in the middle of
the scene, with the code ``data_prep.acquire`` runs (``data_prep.fetch``: ``cut`` and ``Fetcher.download``):

- windowed: cut each band's area from its COG over HTTP (GDAL /vsicurl/ range requests);
- full: download each asset whole (HTTP GET, ``file:size`` checked), then cut the area from the local file.

Each repeat runs on a fresh stand-in (new URLs, so no GDAL cache carries over). Prints one JSON object: per way,
the asset bytes the server sent, the requests and the seconds (best of ``--repeats``), their ratios, the assets'
total size, and whether both ways wrote the same pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from data_prep.fetch import Fetcher, SceneJob, cut
from data_prep.stac import CatalogSettings, DownloadSettings
from geoscale_standins.stac import BAND_ASSET_KEYS, StacStandin, synthetic_s2_catalog

COLLECTION = "sentinel-2-l2a"
BANDS = ("B02", "B03", "B04", "TCI")


def area_bounds(item: dict, area_px: int) -> tuple[float, float, float, float]:
    """A square of ``area_px`` 10 m pixels in the middle of the item's footprint, in its CRS (metres)."""
    left, bottom, right, top = item["properties"]["proj:bbox"]
    half = area_px * 10 / 2
    x, y = (left + right) / 2, (bottom + top) / 2
    return x - half, y - half, x + half, y + half


def asset_figures(stac: StacStandin, since: int, seconds: float) -> dict:
    """Bytes, requests and seconds of the asset requests from ``stac.requests[since:]``."""
    requests = [r for r in stac.requests[since:] if r.path.startswith("/assets/")]
    return {"bytes": sum(r.bytes_sent for r in requests), "requests": len(requests), "seconds": seconds}


def run_once(catalog, area_px: int, work: Path, latency_s: float, bandwidth: float | None) -> dict:
    """Both ways once on a fresh stand-in: way -> figures, plus the band files each wrote."""
    with StacStandin(collections=(COLLECTION,), asset_latency_s=latency_s,
                     asset_bandwidth_bytes_per_s=bandwidth) as stac:
        (item,) = catalog.serve(stac)
        crs, bounds = f"EPSG:{item['properties']['proj:epsg']}", area_bounds(item, area_px)
        assets = {band: item["assets"][BAND_ASSET_KEYS[band]] for band in BANDS}
        settings = CatalogSettings(url=stac.url, collection=COLLECTION, assets={b: BAND_ASSET_KEYS[b] for b in BANDS})
        fetcher = Fetcher(settings, DownloadSettings(concurrency=1), progress=False)
        outputs = {"windowed": work / "windowed", "full": work / "full"}
        job = SceneJob(item, work, {b: BAND_ASSET_KEYS[b] for b in BANDS}, bounds, crs)

        start = time.perf_counter()
        with rasterio.Env(**fetcher.gdal_options):
            for band, asset in assets.items():
                cut(f"/vsicurl/{asset['href']}", job, outputs["windowed"] / f"{band}.tif", {})
        windowed = asset_figures(stac, 0, time.perf_counter() - start)

        since, start = len(stac.requests), time.perf_counter()
        with rasterio.Env(**fetcher.gdal_options):
            for band, asset in assets.items():
                local = fetcher.download(asset["href"], asset["file:size"], work / "download" / f"{band}.tif",
                                         f"asset {band}")
                cut(str(local), job, outputs["full"] / f"{band}.tif", {})
        full = asset_figures(stac, since, time.perf_counter() - start)
    return {"windowed": windowed, "full": full, "outputs": outputs}


def same_pixels(first: Path, second: Path) -> bool:
    for band in BANDS:
        with rasterio.open(first / f"{band}.tif") as a, rasterio.open(second / f"{band}.tif") as b:
            if a.transform != b.transform or not np.array_equal(a.read(), b.read()):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="scene side, px (10 m)")
    parser.add_argument("--area-px", type=int, default=256, help="side of the area read, px")
    parser.add_argument("--blocksize", type=int, default=512, help="COG tile side, px (>= 128)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="wait before each asset answer")
    parser.add_argument("--bandwidth-mbit", type=float, default=200.0, help="per connection; 0: unlimited")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None, help="where to write the scene and outputs")
    parser.add_argument("--quick", action="store_true", help="a 512 px scene, 128 px area and tiles, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.size, args.area_px, args.blocksize, args.repeats = 512, 128, 128, 1

    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        start = time.perf_counter()
        catalog = synthetic_s2_catalog(Path(tmp) / "catalog", app="burned_area", n_products=1, size=args.size,
                                       seed=args.seed, blocksize=args.blocksize)
        generate_s = time.perf_counter() - start
        asset_keys = {BAND_ASSET_KEYS[band] for band in BANDS}
        asset_bytes = sum(path.stat().st_size for key, path in catalog.products[0].assets.items() if key in asset_keys)
        bandwidth = args.bandwidth_mbit * 1e6 / 8 or None
        runs = [run_once(catalog, args.area_px, Path(tmp) / f"run{i}", args.latency_ms / 1000, bandwidth)
                for i in range(args.repeats)]
        identical = same_pixels(runs[0]["outputs"]["windowed"], runs[0]["outputs"]["full"])

    best = {way: min((run[way] for run in runs), key=lambda figures: figures["seconds"])
            for way in ("windowed", "full")}
    report = {
        "scene_px": args.size, "area_px": args.area_px, "cog_tile_px": args.blocksize, "bands": list(BANDS),
        "latency_ms": args.latency_ms, "bandwidth_mbit_per_connection": args.bandwidth_mbit or None,
        "repeats": args.repeats, "asset_bytes": asset_bytes,
        "windowed": {"bytes": best["windowed"]["bytes"], "requests": best["windowed"]["requests"],
                     "seconds": round(best["windowed"]["seconds"], 3)},
        "full_download": {"bytes": best["full"]["bytes"], "requests": best["full"]["requests"],
                          "seconds": round(best["full"]["seconds"], 3)},
        "bytes_windowed_over_full": round(best["windowed"]["bytes"] / best["full"]["bytes"], 4),
        "seconds_windowed_over_full": round(best["windowed"]["seconds"] / best["full"]["seconds"], 3),
        "same_pixels": identical,
        "generate_s_untimed": round(generate_s, 2),
        "cpu_count": os.cpu_count(), "gdal": rasterio.__gdal_version__,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
