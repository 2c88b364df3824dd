"""python -m apps.weights: the catalogue's checkpoints from a local HTTP server (generated files), resumed,
checksum-checked, and each bad case one line with nothing half-written."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from helpers.core import run_module
from geoscale_standins.stac import StacStandin

from apps.foundation.catalogue import read_catalogue
from apps.foundation.errors import CONFIG_ERROR_EXIT_CODE

SIZES = {"detector_coco-0a1b2c3d.pth": 300_000, "encoder_in1k-4e5f6a7b.pth": 120_000}


@pytest.fixture
def served(tmp_path):
    """A server of two generated checkpoint files and a catalogue naming them (full SHA-256 digests)."""
    files = {}
    for index, (name, size) in enumerate(SIZES.items()):
        path = tmp_path / "served" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(hashlib.shake_256(str(index).encode()).digest(size))
        files[name] = path
    with StacStandin() as stac:
        hrefs = stac.serve_files(files)
        entries = {name.split("_")[0]: {"url": hrefs[name], "file": name, "trained_on": "coco",
                                       "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
                   for name, path in files.items()}
        catalogue = tmp_path / "catalogue.yaml"
        catalogue.write_text(yaml.safe_dump(entries))
        yield stac, catalogue, files


def fetch(catalogue, weights_dir, *overrides):
    return run_module("apps.weights", "fetch", f"catalogue={catalogue}", f"weights_dir={weights_dir}",
                      "download.backoff_s=0.01", "progress=false", *overrides)


def one_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


@pytest.mark.slow
def test_fetch_downloads_and_verifies_every_checkpoint_and_skips_them_next_time(served, tmp_path):
    stac, catalogue, files = served
    weights = tmp_path / "weights"
    proc = fetch(catalogue, weights)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in weights.iterdir()) == sorted(files)
    for name, path in files.items():
        assert (weights / name).read_bytes() == path.read_bytes()
    sent = stac.bytes_sent()
    assert sent == sum(SIZES.values())
    assert fetch(catalogue, weights).returncode == 0 and stac.bytes_sent() == sent  # nothing fetched again
    listing = run_module("apps.weights", "list", f"catalogue={catalogue}", f"weights_dir={weights}")
    assert listing.returncode == 0 and listing.stdout.count("present") == 2, listing.stdout


def test_a_dropped_connection_resumes_from_the_bytes_received(served, tmp_path):
    stac, catalogue, files = served
    stac.drop_after("detector_coco-0a1b2c3d.pth", 100_000)
    proc = fetch(catalogue, tmp_path / "weights", "names=[detector]")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "weights" / "detector_coco-0a1b2c3d.pth").read_bytes() == files["detector_coco-0a1b2c3d.pth"].read_bytes()
    ranges = [r.headers.get("range") for r in stac.requests if r.path.startswith("/assets/")]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert stac.bytes_sent() < 1.2 * SIZES["detector_coco-0a1b2c3d.pth"]


@pytest.mark.slow
def test_a_rerun_resumes_the_partial_file_an_interrupted_one_left(served, tmp_path):
    stac, catalogue, files = served
    weights = tmp_path / "weights"
    weights.mkdir()
    source = files["encoder_in1k-4e5f6a7b.pth"].read_bytes()
    (weights / "encoder_in1k-4e5f6a7b.pth.part").write_bytes(source[:50_000])
    listing = run_module("apps.weights", "list", f"catalogue={catalogue}", f"weights_dir={weights}")
    assert "partial (50000 bytes)" in listing.stdout
    assert fetch(catalogue, weights, "names=[encoder]").returncode == 0
    assert (weights / "encoder_in1k-4e5f6a7b.pth").read_bytes() == source
    assert stac.bytes_sent() == len(source) - 50_000


def test_a_wrong_checksum_is_refused_and_the_download_removed(served, tmp_path):
    stac, catalogue, files = served
    entries = yaml.safe_load(catalogue.read_text())
    entries["encoder"]["sha256"] = "0" * 64
    catalogue.write_text(yaml.safe_dump(entries))
    proc = fetch(catalogue, tmp_path / "weights", "names=[encoder]")
    assert proc.returncode == CONFIG_ERROR_EXIT_CODE
    assert "weights encoder" in one_line(proc) and "does not match the catalogue's 0000" in one_line(proc)
    assert list((tmp_path / "weights").iterdir()) == []


@pytest.mark.parametrize("action, overrides, needle", [
    ("fetch", ["names=[detectr]"], "names: detectr not in the weights catalogue"),
    ("action=pull", [], "action=pull: expected one of fetch, list"),
])
def test_bad_requests_are_one_line(served, tmp_path, action, overrides, needle):
    _, catalogue, _ = served
    proc = run_module("apps.weights", action, f"catalogue={catalogue}", f"weights_dir={tmp_path / 'weights'}",
                      *overrides)
    assert proc.returncode == CONFIG_ERROR_EXIT_CODE and needle in one_line(proc)
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").iterdir())


@pytest.mark.slow
def test_an_unreachable_server_is_one_line_and_exit_1(served, tmp_path):
    stac, catalogue, _ = served
    stac.stop()
    proc = fetch(catalogue, tmp_path / "weights", "names=[detector]", "download.retries=1")
    assert proc.returncode == 1 and "weights detector" in one_line(proc)


def test_the_catalogue_names_an_official_checkpoint_for_every_pretrained_start():
    catalogue = read_catalogue()
    for name, checkpoint in catalogue.items():
        assert checkpoint.url.startswith("https://") and checkpoint.url.endswith("/" + checkpoint.file), name
        assert checkpoint.sha256 in checkpoint.file, name  # the official names carry their digest's start
        assert checkpoint.trained_on in {"coco", "imagenet-1k"}, name
    assert {"resnet50.imagenet", "retinanet_x101", "swin_t_faster_rcnn", "faster_rcnn_convnext"} <= set(catalogue)


def test_a_catalogue_with_an_unquoted_or_short_digest_is_refused(tmp_path):
    from apps.foundation.errors import InputError

    bad = tmp_path / "catalogue.yaml"
    bad.write_text("x: {url: https://h/x.pth, file: x.pth, sha256: 12345678, trained_on: coco}\n")
    with pytest.raises(InputError, match="x.sha256 must be a quoted string"):
        read_catalogue(bad)


@pytest.mark.slow
def test_on_the_cluster_fetch_is_a_job_that_writes_the_weights_volume(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_module("apps.weights", "fetch", "-m", "cluster=nautilus", "hydra.launcher.dry_run=true",
                      f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (manifest,) = (sweep / "manifests").iterdir()
    job = yaml.safe_load(manifest.read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "apps.weights"] and "action=fetch" in container["command"]
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert mounts[env["GEOSCALE_WEIGHTS_DIR"]] is False
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
